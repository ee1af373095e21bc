"""InternVL 3 / 3.5."""

from __future__ import annotations

import copy
from typing import Any

import torch

from hierzoo.models.vlm._base import VisionLLMClassifier

__all__ = ["InternVLClassifier", "pil_image_processor"]


def pil_image_processor(image_processor: Any, **overrides: Any) -> Any:
    """A PIL-backed copy of a transformers image processor (``GotOcr2ImageProcessorPil`` for a
    ``GotOcr2ImageProcessor``), with its settings and ``overrides``: it resizes with PIL as the
    paper's scripts did (transformers' default torchvision backend resizes with antialiased
    torch interpolation, close to but not equal to PIL). A PIL-backed one is copied as it is."""
    import transformers

    name = type(image_processor).__name__
    pil = image_processor if name.endswith("Pil") else getattr(transformers, name + "Pil", None)
    if pil is None:
        raise ValueError(
            f"transformers has no PIL-backed {name} to prepare images as the paper did; load with "
            "image_processing='checkpoint'."
        )
    cls = pil if isinstance(pil, type) else type(pil)
    return cls.from_dict({**image_processor.to_dict(), **overrides})


class InternVLClassifier(VisionLLMClassifier):
    """InternVL 3 / 3.5 (the ``-hf`` checkpoints): tiles of 448 px plus a thumbnail, 1-D RoPE.

    Under ``image_processing="paper"`` (the default) images are tiled as the paper's scripts
    tile them (``load_image(image, max_num=4)``: at most four 448 px tiles, the grid whose aspect
    ratio is closest to the image's, ties to the larger grid when the image covers more than
    half of it, a thumbnail of the whole image when there is more than one tile), resized with
    PIL; transformers' ``GotOcr2ImageProcessor`` implements the same rule, so this is its PIL
    backend with ``max_patches=4``. Under ``"checkpoint"``: the checkpoint's processor as it is
    (``max_patches`` 12 for the ``-hf`` checkpoints: a 500x375 photo is 12 tiles and a
    thumbnail rather than one tile)."""

    family = "internvl"
    model_class = "InternVLForConditionalGeneration"
    model_type = "internvl"
    paper_max_tiles = 4

    def paper_processor(self, processor: Any) -> Any:
        paper = copy.copy(processor)
        paper.image_processor = pil_image_processor(
            processor.image_processor, max_patches=self.paper_max_tiles, crop_to_patches=True
        )
        return paper

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
