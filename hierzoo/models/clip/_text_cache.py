"""The text-embedding cache of CLIP-style models: in memory, and one safetensors file per
(model, templates) on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from hierzoo._io import default_cache_dir

__all__ = ["TextEmbeddingCache", "default_cache_dir"]


class TextEmbeddingCache:
    """Text embeddings keyed by model, templates and name, in memory and in one safetensors file
    per (model, templates) under ``cache_dir/text/``. ``cache_dir=False`` keeps memory only."""

    def __init__(self, model_key: str, cache_dir: str | Path | bool | None = None):
        self.model_key = model_key
        self.root = (
            None
            if cache_dir is False
            else Path(default_cache_dir() if cache_dir in (None, True) else cache_dir) / "text"
        )
        self._mem: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}

    def _file(self, templates: tuple[str, ...]) -> Path | None:
        if self.root is None:
            return None
        digest = hashlib.sha1(json.dumps([self.model_key, list(templates)]).encode()).hexdigest()[
            :20
        ]
        return self.root / f"{digest}.safetensors"

    def table(self, templates: tuple[str, ...]) -> dict[str, torch.Tensor]:
        if templates not in self._mem:
            table: dict[str, torch.Tensor] = {}
            path = self._file(templates)
            if path is not None and path.is_file():
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    keys = json.loads(f.metadata()["keys"])
                    emb = f.get_tensor("embeddings")
                table = dict(zip(keys, emb))
            self._mem[templates] = table
        return self._mem[templates]

    def add(self, templates: tuple[str, ...], keys: list[str], emb: torch.Tensor) -> None:
        table = self.table(templates)
        table.update(zip(keys, emb.float().cpu()))
        path = self._file(templates)
        if path is None:
            return
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        all_keys = list(table)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file(
            {"embeddings": torch.stack([table[k] for k in all_keys]).contiguous()},
            str(tmp),
            metadata={
                "keys": json.dumps(all_keys),
                "model": self.model_key,
                "templates": json.dumps(list(templates)),
            },
        )
        tmp.replace(path)


def _weights_key(path: Path) -> str:
    """Identity of a local checkpoint: its path and its weight files' sizes and times."""
    parts = [str(path.resolve())]
    for f in sorted(path.glob("*")):
        if f.suffix in (".safetensors", ".bin", ".pth", ".pt"):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16] + ":" + path.name
