"""The prefix KV cache: the prompt's head (system turn, image) runs once per image, and every
question continues from a copy of its keys and values.

The head's forward is right-padded (the processor batch of a group of images); each
continuation is left-padded (``last_only``: only the last position's logits are needed) or
right-padded (every position's logits, for a node name's log-likelihood). Its positions
continue each row's head (:meth:`~hierzoo.models.vlm.VisionLLMClassifier.suffix_positions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image


@dataclass
class _Prefix:
    """A prefix forward: its KV cache, attention mask, where each row continues, and (a head's
    forward) each row's real token ids, image tokens expanded."""

    cache: Any
    mask: torch.Tensor
    start: torch.Tensor
    ids: list[list[int]] = field(default_factory=list)


def _cache_of(output: Any) -> Any:
    """The KV cache of a forward's output (``cache`` in recent transformers, else
    ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(max(len(s) for s in seqs), 1)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids, mask


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


class _PrefixCacheMixin:
    """``_prefix`` and ``_continue`` of :class:`~hierzoo.models.vlm.VisionLLMClassifier` (uses
    its ``model``, ``processor``, ``device``, ``template``, ``prompt_positions``,
    ``suffix_positions`` and ``_encode``)."""

    def _prefix(
        self,
        images: list[Image.Image] | None,
        n: int,
        mode: str = "image",
        framing: Any = None,
    ) -> _Prefix:
        head, _ = self.template(mode, framing)
        enc = self._encode([head] * n, images, side="right")
        positions, start = self.prompt_positions(enc)
        out = self.model(**enc, position_ids=positions, use_cache=True, logits_to_keep=1)
        mask = enc["attention_mask"]
        ids = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], mask)]
        return _Prefix(_cache_of(out), mask, start, ids)

    def _continue(
        self,
        prefix: _Prefix,
        rows: Sequence[int],
        ids: Sequence[Sequence[int]],
        last_only: bool = True,
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Run token rows (``ids[i]`` after prefix row ``rows[i]``) from a copy of the prefix cache.

        ``last_only``: left-padded, logits of each row's last token only; else right-padded,
        logits at every position. Returns ``(output, attention mask, mask of ids)``."""
        from transformers import DynamicCache

        pad = self.processor.tokenizer.pad_token_id or 0
        ids_t, mask = _left_pad(ids, pad) if last_only else _right_pad(ids, pad)
        ids_t, mask = ids_t.to(self.device), mask.to(self.device)
        idx = torch.tensor(list(rows), device=self.device)
        cache = DynamicCache(
            ((k.index_select(0, idx), v.index_select(0, idx)) for k, v, *_ in prefix.cache),
            config=self.model.config,
        )
        attention = torch.cat([prefix.mask.index_select(0, idx), mask], dim=1)
        out = self.model(
            input_ids=ids_t,
            attention_mask=attention,
            position_ids=self.suffix_positions(prefix.start.index_select(0, idx), mask),
            **{self._cache_arg: cache},
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
        )
        return out, attention, mask
