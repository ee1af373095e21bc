"""LLaVA-OneVision."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from hierzoo.models.vlm._base import VisionLLMClassifier

__all__ = ["LlavaOnevisionClassifier", "pad_to_square"]


def pad_to_square(
    image: Image.Image,
    background: tuple[int, ...],
    size: tuple[int, int],
    resample: int = Image.BICUBIC,
) -> Image.Image:
    """The image as LLaVA-NeXT's ``image_aspect_ratio="pad"`` shows it: pasted on a square
    canvas of its longer side filled with ``background`` (offset ``(longer - shorter) // 2``),
    then resized to ``size`` (width, height) with PIL's ``resample`` (LLaVA-NeXT's
    ``expand2square`` and its SigLIP image processor's resize)."""
    image = image.convert("RGB")
    width, height = image.size
    if width != height:
        side = max(width, height)
        canvas = Image.new("RGB", (side, side), background)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        image = canvas
    return image.resize(size, resample)


class LlavaOnevisionClassifier(VisionLLMClassifier):
    """LLaVA-OneVision (the ``-ov-hf`` checkpoints): SigLIP + Qwen2 with 1-D RoPE, float16 on
    CUDA as the paper ran it.

    Images, under ``image_processing="paper"`` (the default), as the paper's scripts ran the
    original checkpoint (LLaVA-NeXT with ``image_aspect_ratio="pad"``): each image padded to a
    square with the processor's mean colour ((127, 127, 127) for SigLIP's 0.5), resized to the
    vision tower's input (384 px, bicubic) and shown as one view, its patch features and the
    ``image_newline`` embedding (729 + 1 positions for the 384 px checkpoints); no anyres crops.
    Under ``"checkpoint"``: the ``-hf`` processor's anyres views (a base view and up to nine
    crops)."""

    family = "llava-onevision"
    model_class = "LlavaOnevisionForConditionalGeneration"
    model_type = "llava_onevision"
    paper_dtype = torch.float16

    # ------------------------------------------------------------------ the pad view
    @property
    def _pad(self) -> bool:
        return self.image_processing == "paper"

    def image_transform(self) -> Callable[[Image.Image], Any] | None:
        if not self._pad:
            return None
        ip = self.processor.image_processor
        return functools.partial(
            pad_to_square,
            background=tuple(int(x * 255) for x in ip.image_mean),
            size=(ip.size.width, ip.size.height),
            resample=int(ip.resample),
        )

    def pad_image_tokens(self) -> int:
        """Image positions of one padded view: the patch features and the ``image_newline``
        (less the class token where the features drop it), as the processor counts an image
        that is not cropped."""
        n = self.processor.num_image_tokens + 1
        return n - 1 if self.processor.vision_feature_select_strategy == "default" else n

    def _pad_pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(images, 1, 3, S, S)``: each image padded (:func:`pad_to_square`; a no-op on an
        image the loader already padded), times the rescale factor, minus mean, over std."""
        transform = self.image_transform()
        ip = self.processor.image_processor
        mean = np.asarray(ip.image_mean, dtype=np.float32)
        std = np.asarray(ip.image_std, dtype=np.float32)
        views = []
        for image in images:
            x = np.asarray(transform(image), dtype=np.float64) * ip.rescale_factor
            views.append(((x.astype(np.float32) - mean) / std).transpose(2, 0, 1))
        return torch.from_numpy(np.ascontiguousarray(np.stack(views)))[:, None]

    def _pad_prompts(self, texts: list[str]) -> list[str]:
        """``texts`` with each image token repeated for the positions of one padded view."""
        token = self.processor.image_token
        n = self.pad_image_tokens()
        return [t.replace(token, token * n) for t in texts]

    def _prefix_tokens(self, image: Image.Image, framing: Any = None) -> int:
        if not self._pad:
            return super()._prefix_tokens(image, framing)
        head, _ = self.template("image", framing)
        return len(self.processor.tokenizer(self._pad_prompts([head]))["input_ids"][0])

    def _encode(self, texts: list[str], images: list[Image.Image] | None, side: str) -> Any:
        if images is None or not self._pad:
            return super()._encode(texts, images, side)
        from transformers import BatchFeature

        start = time.perf_counter()
        enc = self.processor.tokenizer(
            self._pad_prompts(texts), padding=True, padding_side=side, return_tensors="pt"
        )
        pixels = self._pad_pixels(images)
        data = {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pixel_values": pixels,
            "image_sizes": torch.tensor([list(pixels.shape[-2:])] * len(images)),
            # transformers crops an image into anyres views unless it counts as one of several
            # images of a sample (need_patching = [n == 1 for n in batch_num_images ...] zipped
            # with the images): every image here is one view. Were that to change, the model's
            # own check of image tokens against image features raises.
            "batch_num_images": [max(len(images), 2)],
        }
        out = BatchFeature(data).to(device=self.device, dtype=self.dtype)
        self.pipeline_stats.preprocess += time.perf_counter() - start
        return out

    def image_views(self, inputs: Any) -> tuple[int, list[int]]:
        # pixel_values: (images, views, channels, height, width), the base view and the crops
        pixels = inputs["pixel_values"]
        return int(pixels.shape[1]), [int(pixels.shape[-1]), int(pixels.shape[-2])]

    # ------------------------------------------------------------------ features
    def vision_site(self) -> tuple[Any, str]:
        # the projector's input: the tower's vision_feature_layer, select strategy applied
        return self.model.model.multi_modal_projector, "input"

    def vision_tokens(self, kept: Any, inputs: Any) -> list[torch.Tensor]:
        from transformers.models.llava_onevision.modeling_llava_onevision import (
            image_size_to_num_patches,
        )

        config = self.model.config
        if self._pad:
            crops = [1] * len(inputs["image_sizes"])
        else:
            crops = [
                image_size_to_num_patches(
                    image_size=size,
                    grid_pinpoints=config.image_grid_pinpoints,
                    patch_size=config.vision_config.image_size,
                )
                for size in inputs["image_sizes"]
            ]
        return [t.flatten(0, 1) for t in torch.split(kept, crops)]
