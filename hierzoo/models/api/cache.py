"""The response cache: one JSON file per request, written atomically as each response arrives.

Pure standard library. A file holds the request's key, the base URL, the request in its
``--dry-run`` form (images as size and hash) and the server's response; never the API key.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hierzoo._io import default_cache_dir, write_json

FORMAT = "hierzoo-chat-response/1"


class ResponseCacheWarning(UserWarning):
    """A cache entry could not be used; its request is sent again."""


def default_response_cache_dir() -> Path:
    """``$HIERZOO_CACHE/api`` (see :func:`hierzoo._io.default_cache_dir`)."""
    return default_cache_dir() / "api"


class ResponseCache:
    """Responses by request key (:func:`hierzoo.models.api.request.request_key`), under
    ``root/<first two hex digits>/<key>.json``.

    Only complete responses are stored (an error is not: its request is sent again next time).
    A file that cannot be read, is not JSON, or does not hold the response of its key is skipped
    with a :class:`ResponseCacheWarning` naming it, and rewritten when the response comes back.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_response_cache_dir()

    def path(self, key: str) -> Path:
        """Where the response of ``key`` is stored."""
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored response of ``key``, or ``None``."""
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            return self._damaged(path, f"cannot be read ({e.strerror or e})")
        try:
            entry = json.loads(text)
        except ValueError:
            return self._damaged(path, "is not valid JSON")
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            return self._damaged(path, f"is not a {FORMAT} entry")
        if entry.get("key") != key:
            return self._damaged(path, "holds the response of another request")
        response = entry.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
            return self._damaged(path, "holds no chat-completions response")
        return response

    def put(
        self,
        key: str,
        response: Mapping[str, Any],
        *,
        api_base: str,
        request: Mapping[str, Any],
    ) -> Path:
        """Store ``response`` for ``key`` atomically; ``request`` is stored as given (pass its
        :func:`~hierzoo.models.api.request.describe_request` form)."""
        entry = {
            "format": FORMAT,
            "key": key,
            "api_base": api_base,
            "request": dict(request),
            "response": dict(response),
        }
        return write_json(self.path(key), entry, indent=None)

    def _damaged(self, path: Path, why: str) -> None:
        warnings.warn(
            f"Response cache entry {path} {why}; its request is sent again and the entry "
            "rewritten.",
            ResponseCacheWarning,
            stacklevel=3,
        )
        return None

    def __repr__(self) -> str:
        return f"ResponseCache(root={str(self.root)!r})"
