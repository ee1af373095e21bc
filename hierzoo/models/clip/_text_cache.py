"""The text-embedding cache of CLIP-style models: in memory, and one safetensors file per
(model, templates) on disk, checked before it is used.

A file holds one ``embeddings`` tensor ``(n, D)`` float32 and, in its metadata, the format, the
model key (the model's content fingerprint and precision, see
:func:`hierzoo.models._registry.model_fingerprint`), the templates and the ``n`` keys (names,
``rank\\x1fname`` for rank-aware templates). Reading it checks all of them, the shape, the dtype
and that every number is finite; a file that fails any check, or cannot be read at all (torn,
truncated, not safetensors), is ignored with a warning naming it, and rewritten with what this
model computes. Writes are atomic (:func:`hierzoo._io.atomic_write`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from hierzoo._io import atomic_write, default_cache_dir

__all__ = ["FORMAT", "TextEmbeddingCache", "default_cache_dir"]

FORMAT = "hierzoo-text-embeddings/2"


class TextEmbeddingCache:
    """Text embeddings keyed by model, templates and name, in memory and in one safetensors file
    per (model, templates) under ``cache_dir/text/``. ``cache_dir=False`` keeps memory only.

    Attributes:
        model_key: what the embeddings are of: the model's content fingerprint and precision.
        root: the folder of the files (``None``: memory only).
    """

    def __init__(self, model_key: str, cache_dir: str | Path | bool | None = None):
        self.model_key = model_key
        self.root = (
            None
            if cache_dir is False
            else Path(default_cache_dir() if cache_dir in (None, True) else cache_dir) / "text"
        )
        self._mem: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}

    def file(self, templates: tuple[str, ...]) -> Path | None:
        """The file of one set of templates (``None`` without a disk cache)."""
        if self.root is None:
            return None
        key = json.dumps([self.model_key, list(templates)]).encode()
        return self.root / f"{hashlib.sha1(key).hexdigest()[:20]}.safetensors"

    def table(self, templates: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Key -> ``(D,)`` embedding, read from the file the first time (when it checks out)."""
        if templates not in self._mem:
            path = self.file(templates)
            table: dict[str, torch.Tensor] = {}
            if path is not None and path.is_file():
                table = self._read(path, templates)
            self._mem[templates] = table
        return self._mem[templates]

    def _read(self, path: Path, templates: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The file's table, or ``{}`` with a warning naming the file and what is wrong."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                emb = f.get_tensor("embeddings")
            keys = json.loads(meta.get("keys", "null"))
            held = json.loads(meta.get("templates", "null"))
        except Exception as e:  # torn, truncated, not safetensors: several exception types
            return _ignored(path, f"it cannot be read ({type(e).__name__}: {e})")
        problem = _mismatch(meta, keys, held, emb, self.model_key, templates)
        if problem:
            return _ignored(path, problem)
        return dict(zip(keys, emb))

    def add(self, templates: tuple[str, ...], keys: list[str], emb: torch.Tensor) -> None:
        """Add embeddings (finite, checked by the caller) and rewrite the file atomically."""
        table = self.table(templates)
        table.update(zip(keys, emb.float().cpu()))
        path = self.file(templates)
        if path is None:
            return
        from safetensors.torch import save_file

        all_keys = list(table)
        data = torch.stack([table[k] for k in all_keys]).contiguous()
        meta = {
            "format": FORMAT,
            "model": self.model_key,
            "templates": json.dumps(list(templates)),
            "keys": json.dumps(all_keys),
            "dim": str(data.shape[1]),
        }
        atomic_write(path, lambda tmp: save_file({"embeddings": data}, str(tmp), metadata=meta))


def _mismatch(
    meta: dict[str, str],
    keys: Any,
    templates_held: Any,
    emb: torch.Tensor,
    model_key: str,
    templates: tuple[str, ...],
) -> str | None:
    """What makes a file unusable for this model and these templates, or ``None``."""
    if meta.get("format") != FORMAT:
        return f"it is not a {FORMAT} file (format {meta.get('format')!r})"
    if meta.get("model") != model_key:
        return f"it holds the embeddings of another model ({meta.get('model')!r})"
    if templates_held != list(templates):
        return f"it holds other templates ({templates_held!r})"
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        return "its keys are not a list of names"
    if len(set(keys)) != len(keys):
        return "its keys repeat"
    if emb.dtype != torch.float32 or emb.ndim != 2 or emb.shape[0] != len(keys):
        return (
            f"its embeddings are {str(emb.dtype).replace('torch.', '')} {tuple(emb.shape)}, not "
            f"float32 ({len(keys)}, D)"
        )
    if str(emb.shape[1]) != meta.get("dim"):
        return f"its embeddings are {emb.shape[1]}-dimensional, not {meta.get('dim')}"
    if not torch.isfinite(emb).all():
        return "it holds non-finite numbers (NaN or infinity)"
    return None


def _ignored(path: Path, why: str) -> dict[str, torch.Tensor]:
    warnings.warn(
        f"Ignoring the text-embedding cache file {path}: {why}. The embeddings are computed "
        "again and the file rewritten.",
        RuntimeWarning,
        stacklevel=4,
    )
    return {}
