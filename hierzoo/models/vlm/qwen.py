"""Qwen2.5-VL and Qwen3-VL."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from hierzoo.models.vlm._base import VisionLLMClassifier, cap_image_side

__all__ = ["Qwen2_5_VLClassifier", "Qwen3VLClassifier", "grid_size", "paper_qwen_image"]


def grid_size(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """``(height, width)`` rounded to multiples of ``factor`` within a pixel range: qwen_vl_utils'
    ``smart_resize`` (each side rounded, at least ``factor``; scaled down with floor above
    ``max_pixels``, up with ceil below ``min_pixels``)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"An image of {width}x{height} px is too elongated for Qwen-VL (aspect ratio over 200)."
        )
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def paper_qwen_image(
    image: Image.Image,
    *,
    factor: int,
    min_pixels: int,
    max_pixels: int,
    processor_min_pixels: int,
    processor_max_pixels: int,
    max_side: int = 1680,
) -> Image.Image:
    """The image the paper's Qwen scripts hand the model, at the size the processor would give it.

    In the scripts' order: qwen_vl_utils' ``fetch_image`` (:func:`grid_size` with its defaults,
    ``factor`` 28 and 4 to 16384 patches of 28 px, PIL's default bicubic resize), then the
    scripts' cap (longer side over ``max_side``: LANCZOS to ``int(side * max_side / longer)``,
    which can leave 1679), then the processor's own rounding with the checkpoint's pixel range,
    done here with PIL bicubic as the paper's (PIL-based) processor did, so the processor's
    resize finds nothing left to do."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = grid_size(image.height, image.width, factor, min_pixels, max_pixels)
    image = image.resize((w, h), Image.BICUBIC)
    image = cap_image_side(image, max_side)
    h, w = smart_resize(
        image.height,
        image.width,
        factor=factor,
        min_pixels=processor_min_pixels,
        max_pixels=processor_max_pixels,
    )
    return image if image.size == (w, h) else image.resize((w, h), Image.BICUBIC)


class _QwenVLClassifier(VisionLLMClassifier):
    """Qwen-VL families: 3-D multimodal RoPE (M-RoPE), where image tokens take 2-D grid positions
    and text continues at the largest position + 1, not at the token count.

    Images, under ``image_processing="paper"`` (the default), as the paper's Qwen scripts
    prepared them (:func:`paper_qwen_image`: resized to the patch grid first, then capped at
    1680 px on the longer side); under ``"checkpoint"``, as the processor resizes them."""

    max_image_side = 1680

    def image_transform(self) -> Callable[[Image.Image], Any] | None:
        if self.image_processing != "paper":
            return None
        ip = self.processor.image_processor
        factor = int(ip.patch_size) * int(ip.merge_size)
        size = ip.size
        return functools.partial(
            paper_qwen_image,
            factor=factor,
            min_pixels=4 * factor * factor,
            max_pixels=16384 * factor * factor,
            processor_min_pixels=int(size["shortest_edge"]),
            processor_max_pixels=int(size["longest_edge"]),
            max_side=self.max_image_side,
        )

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
