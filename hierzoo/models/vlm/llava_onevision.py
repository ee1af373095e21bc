"""LLaVA-OneVision."""

from __future__ import annotations

from typing import Any

import torch

from hierzoo.models.vlm._base import VisionLLMClassifier

__all__ = ["LlavaOnevisionClassifier"]


class LlavaOnevisionClassifier(VisionLLMClassifier):
    """LLaVA-OneVision (the ``-ov-hf`` checkpoints): SigLIP + Qwen2 with 1-D RoPE; anyres images
    of different sizes share a batch through the processor's ``image_sizes``."""

    family = "llava-onevision"
    model_class = "LlavaOnevisionForConditionalGeneration"
    model_type = "llava_onevision"

    def image_views(self, inputs: Any) -> tuple[int, list[int]]:
        # pixel_values: (images, views, channels, height, width), the base view and the crops
        pixels = inputs["pixel_values"]
        return int(pixels.shape[1]), [int(pixels.shape[-1]), int(pixels.shape[-2])]

    def vision_site(self) -> tuple[Any, str]:
        # the projector's input: the tower's vision_feature_layer, select strategy applied
        return self.model.model.multi_modal_projector, "input"

    def vision_tokens(self, kept: Any, inputs: Any) -> list[torch.Tensor]:
        from transformers.models.llava_onevision.modeling_llava_onevision import (
            image_size_to_num_patches,
        )

        config = self.model.config
        crops = [
            image_size_to_num_patches(
                image_size=size,
                grid_pinpoints=config.image_grid_pinpoints,
                patch_size=config.vision_config.image_size,
            )
            for size in inputs["image_sizes"]
        ]
        return [t.flatten(0, 1) for t in torch.split(kept, crops)]
