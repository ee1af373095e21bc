"""transformers CLIP and SigLIP / SigLIP 2 (fixed-resolution) models."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from hierzoo.models._factory import resolve_dtype
from hierzoo.models._hf import load_processor
from hierzoo.models._registry import ModelSpec
from hierzoo.models.clip._base import ClipClassifier, _text_cache_key
from hierzoo.models.clip._features import _class_token, _mean_tokens

__all__ = ["HFClipClassifier"]


class _HFImageTransform:
    """Picklable PIL -> pixel tensor through a transformers image processor."""

    def __init__(self, image_processor: Any):
        self.image_processor = image_processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


def _features(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFClipClassifier(ClipClassifier):
    """transformers CLIP and SigLIP / SigLIP 2 (fixed-resolution) models."""

    family = "hf-clip"
    label = "transformers CLIP / SigLIP model"

    def __init__(self, model: Any, processor: Any, **kw: Any):
        self.model = model
        self.processor = processor
        self.is_siglip = model.config.model_type in ("siglip", "siglip2")
        super().__init__(**kw)

    @classmethod
    def from_spec(
        cls,
        spec: ModelSpec,
        *,
        device: torch.device,
        dtype: str | torch.dtype | None = None,
        **kw: Any,
    ) -> HFClipClassifier:
        from transformers import AutoModel, AutoProcessor

        where = spec.location
        revision = None if spec.source else spec.revision
        dtype = resolve_dtype(dtype, torch.float32)
        model = AutoModel.from_pretrained(where, revision=revision, dtype=dtype)
        processor = AutoProcessor.from_pretrained(where, revision=revision)
        return cls.from_model(
            model,
            processor,
            name=spec.name,
            spec=spec if not spec.source else None,
            model_key=_text_cache_key(spec, kw.get("cache_dir")),
            device=device,
            dtype=dtype,
            **kw,
        )

    @classmethod
    def from_model(
        cls,
        model: Any,
        processor: Any = None,
        *,
        name: str | None = None,
        spec: ModelSpec | None = None,
        model_key: str | None = None,
        device: torch.device | str | None = None,
        dtype: str | torch.dtype | None = None,
        **kw: Any,
    ) -> HFClipClassifier:
        """Wrap a transformers ``CLIPModel`` / ``SiglipModel`` and its processor held in memory
        (``device`` defaults to where the model already is; ``processor`` to the one saved where
        the model was loaded from)."""
        name = name or getattr(model, "name_or_path", "") or type(model).__name__
        if model.config.model_type == "siglip2":
            raise ValueError(
                f"{name} is a NaFlex SigLIP 2 checkpoint (variable resolution), which hierzoo "
                "does not score; use a fixed-resolution one such as "
                "google/siglip2-so400m-patch14-384 (zoo: siglip2-so400m)."
            )
        processor = load_processor(model, processor, cls.label)
        return cls._placed(
            model,
            processor,
            _HFImageTransform(processor.image_processor),
            name=name,
            spec=spec,
            model_key=model_key,
            device=device,
            dtype=dtype,
            **kw,
        )

    def timed_module(self) -> torch.nn.Module:
        """The image tower (``model.vision_model``)."""
        return self.model.vision_model

    @property
    def score_kind(self) -> str:  # type: ignore[override]
        return "sigmoid" if self.is_siglip else "softmax"

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels))

    def _vision_blocks(
        self,
    ) -> tuple[Sequence[torch.nn.Module], Callable[[torch.Tensor], torch.Tensor]]:
        # CLIP pools its class token (position 0); SigLIP has none (an attention head pools)
        return (
            self.model.vision_model.encoder.layers,
            _mean_tokens if self.is_siglip else _class_token,
        )

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        tok = self.processor.tokenizer
        if self.is_siglip:  # SigLIP pools the last position: pad to the trained length
            enc = tok(
                texts,
                padding="max_length",
                max_length=self.model.config.text_config.max_position_embeddings,
                truncation=True,
                return_tensors="pt",
            )
        else:
            enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        if self.is_siglip:
            enc.pop("attention_mask", None)  # as SiglipProcessor feeds it: all positions attended
        return _features(self.model.get_text_features(**enc))

    def _embed_dim(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "projection_dim", None) or cfg.text_config.hidden_size)
