"""Token-budget scheduling: how many images and question rows one forward pass holds."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image

from hierzoo.images import ImageInput, PipelineStats, iterate_images

CPU_TOKEN_BUDGET = 8192
DECODE_BATCH = 32


def default_token_budget(model: Any) -> int:
    """Rows x positions per forward pass: 8192 on the CPU; on a GPU, what fits in 40% of the free
    memory at the KV-cache and activation bytes per token of the model's text decoder."""
    device = model.device
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    free, _ = torch.cuda.mem_get_info(device)
    text = model.config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    item = torch.finfo(model.dtype).bits // 8
    per_token = item * (
        2 * text.num_hidden_layers * kv_heads * head_dim
        + 4 * text.hidden_size
        + 3 * text.intermediate_size
    )
    return int(min(max(0.4 * free / per_token, 1024), 262144))


def row_chunks(
    n_rows: int, row_tokens: int, batch_size: int | None, token_budget: int
) -> Iterator[slice]:
    """Slices of ``n_rows`` rows of ``row_tokens`` positions each: all at once when the caller
    gave a ``batch_size`` (images per pass), else as many as ``token_budget`` holds."""
    step = n_rows if batch_size is not None else max(1, token_budget // max(row_tokens, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def image_groups(
    items: Sequence[ImageInput],
    transform: Callable[[Image.Image], Any] | None,
    batch_size: int | None,
    token_budget: int,
    cost: Callable[[Image.Image], int],
    failed: Callable[[int, str], None],
    stats: PipelineStats,
    num_workers: int | None = None,
) -> Iterator[list[tuple[int, Image.Image]]]:
    """Decoded images in groups of ``batch_size``, else as many as ``token_budget`` holds at
    ``cost(first image)`` tokens each; failures go to ``failed(index, message)``."""
    per_group = batch_size
    pending: list[tuple[int, Image.Image]] = []
    batches = iterate_images(items, transform, batch_size or DECODE_BATCH, num_workers=num_workers)
    for batch in stats.waited(batches):
        stats.batches += 1
        for j, msg in batch.failed.items():
            failed(j, msg)
        pending.extend(zip(batch.indices, batch.data))
        if per_group is None and pending:
            per_group = max(1, token_budget // max(cost(pending[0][1]), 1))
        while per_group is not None and len(pending) >= per_group:
            yield pending[:per_group]
            pending = pending[per_group:]
    if pending:
        yield pending
