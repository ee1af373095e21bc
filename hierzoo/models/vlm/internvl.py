"""InternVL 3 / 3.5."""

from __future__ import annotations

from typing import Any

import torch

from hierzoo.models.vlm._base import VisionLLMClassifier

__all__ = ["InternVLClassifier"]


class InternVLClassifier(VisionLLMClassifier):
    """InternVL 3 / 3.5 (the ``-hf`` checkpoints): tiles of 448 px plus a thumbnail, 1-D RoPE."""

    family = "internvl"
    model_class = "InternVLForConditionalGeneration"
    model_type = "internvl"

    def vision_site(self) -> tuple[Any, str]:
        return self.model.model.vision_tower, "output"

    def vision_tokens(self, kept: Any, inputs: Any) -> list[torch.Tensor]:
        # as get_image_features selects them, before the pixel shuffle and the projector
        config = self.model.config
        layer = config.vision_feature_layer
        feats = kept.last_hidden_state if layer == -1 else kept.hidden_states[layer]
        if config.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        tiles = (
            (inputs["input_ids"] == config.image_token_id).sum(-1) // config.image_seq_length
        ).tolist()
        return [t.flatten(0, 1) for t in torch.split(feats, tiles)]
