"""Where a model's files come from, and what identifies their content.

A hub model is identified by the commit its local snapshot was downloaded at; a local directory
by a digest of its files (:func:`hierzoo._io.directory_fingerprint`). A hub model that is neither
cached nor reachable fails here with one message that says how to fetch it, before a backend
spends half a minute retrying.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from hierzoo._io import directory_fingerprint

if TYPE_CHECKING:
    from hierzoo.models._registry import ModelSpec

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ModelUnavailableError(OSError):
    """A hub model that is not in the local cache and cannot be downloaded now."""


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
    ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home) / "hub"


def _repo_dir(repo: str) -> Path:
    return hub_cache_dir() / ("models--" + repo.replace("/", "--"))


def hub_commit(repo: str, revision: str = "main") -> str | None:
    """The commit of ``repo`` at ``revision`` in the local hub cache, or ``None`` if absent."""
    if _COMMIT.match(revision):
        return revision if (_repo_dir(repo) / "snapshots" / revision).is_dir() else None
    ref = _repo_dir(repo) / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.match(commit) else None


def model_fingerprint(spec: ModelSpec, cache_dir: str | Path | None = None) -> str | None:
    """What identifies the numbers a spec's weights give: ``dir:<sha256>`` of a local directory's
    files (file digests remembered under ``cache_dir``), ``hub:<repo>@<commit>`` of a cached hub
    snapshot, or ``None`` when the hub model is not in the cache yet (it is after loading), or
    for a model behind an API (the loaded model says which server it asks:
    :meth:`~hierzoo.models.base.HierClassifier.identity`)."""
    if spec.served:
        return None
    if spec.source is not None:
        return "dir:" + directory_fingerprint(spec.source, cache_dir)
    commit = hub_commit(spec.hub_id, spec.revision)
    return f"hub:{spec.hub_id}@{commit}" if commit else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _reachable(host: str = "huggingface.co", timeout: float = 5.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", f"https://{host}")
    name = re.sub(r"^\w+://", "", endpoint).split("/")[0]
    host, _, port = name.partition(":")
    try:
        socket.create_connection((host, int(port or 443)), timeout=timeout).close()
    except OSError:
        return False
    return True


def unavailable_message(spec: ModelSpec, why: str) -> str:
    repo = spec.hub_id
    shown = spec.name if spec.name == repo else f"{spec.name!r} (hub repository {repo})"
    return (
        f"Model {shown} is not in the local Hugging Face cache ({hub_cache_dir()}) and {why}. "
        f"On a machine with network run `hf download {repo}` (with the same HF_HOME, or copy its "
        f"folder {_repo_dir(repo).name} into this cache), or pass a local model directory."
    )


def ensure_available(spec: ModelSpec) -> None:
    """Fail fast, with how to fetch it, for a hub model that is neither cached nor reachable.

    Raises:
        ModelUnavailableError: offline (``HF_HUB_OFFLINE``) or the hub unreachable, and the
            model not cached.
    """
    if spec.served or spec.source is not None:
        return
    if hub_commit(spec.hub_id, spec.revision) is not None:
        return
    if _offline():
        raise ModelUnavailableError(
            unavailable_message(spec, "downloads are off (HF_HUB_OFFLINE is set)")
        )
    if not _reachable():
        raise ModelUnavailableError(unavailable_message(spec, "the hub cannot be reached"))
