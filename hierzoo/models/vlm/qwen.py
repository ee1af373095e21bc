"""Qwen2.5-VL and Qwen3-VL."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from hierzoo.models.vlm._base import VisionLLMClassifier, cap_image_side

__all__ = ["Qwen2_5_VLClassifier", "Qwen3VLClassifier"]


class _QwenVLClassifier(VisionLLMClassifier):
    """Qwen-VL families: 3-D multimodal RoPE (M-RoPE), where image tokens take 2-D grid positions
    and text continues at the largest position + 1, not at the token count. Images are capped
    at 1680 px on the longer side, as the paper's Qwen script does."""

    max_image_side = 1680

    def image_transform(self) -> Callable[[Image.Image], Any] | None:
        return functools.partial(cap_image_side, max_side=self.max_image_side)

    def prompt_positions(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        mask = inputs["attention_mask"]
        if "image_grid_thw" not in inputs:
            flat, start = super().prompt_positions(inputs)
            return flat[None].expand(3, -1, -1), start
        positions, _ = self.model.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=mask,
        )
        last = positions.masked_fill(mask[None] == 0, -1).amax(dim=(0, 2))
        return positions, last + 1

    def suffix_positions(self, start: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return super().suffix_positions(start, mask)[None].expand(3, -1, -1)

    def vision_site(self) -> tuple[Any, str]:
        return self.model.model.visual, "output"

    def image_views(self, inputs: Any) -> tuple[int, list[int]]:
        # one view, resized to whole patches: its (t, h, w) patch grid times the patch size
        _, h, w = inputs["image_grid_thw"][0].tolist()
        patch = self.processor.image_processor.patch_size
        return 1, [w * patch, h * patch]

    def batch_vision_attention(self, on: bool = True) -> bool:
        from hierzoo.models import _vision_attention

        tower = self.model.model.visual
        if not on:
            _vision_attention.unpatch_vision_attention(tower)
            return False
        _vision_attention.patch_vision_attention(tower)
        return any(_vision_attention.is_patched(m) for m in tower.modules())

    def vision_tokens(self, kept: Any, inputs: Any) -> list[torch.Tensor]:
        # the last vision block's output, before the patch merger; Qwen2.5-VL keeps it in window
        # order, a permutation within each image, which a mean does not see
        sizes = inputs["image_grid_thw"].prod(-1).tolist()
        return list(torch.split(kept.last_hidden_state, sizes))


class Qwen2_5_VLClassifier(_QwenVLClassifier):
    """Qwen2.5-VL (3B, 7B, 32B, 72B Instruct)."""

    family = "qwen2.5-vl"
    model_class = "Qwen2_5_VLForConditionalGeneration"
    model_type = "qwen2_5_vl"


class Qwen3VLClassifier(_QwenVLClassifier):
    """Qwen3-VL (Instruct); deepstack features touch only the image positions, all in the prefix."""

    family = "qwen3-vl"
    model_class = "Qwen3VLForConditionalGeneration"
    model_type = "qwen3_vl"
