"""OpenCLIP models (BioCLIP, BioCLIP-2, LAION CLIP ...) through ``open_clip``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hierzoo.models._registry import ModelSpec
from hierzoo.models._sites import SiteError
from hierzoo.models.clip._base import ClipClassifier, _class_token, _mean_after_class_token
from hierzoo.models.clip._text_cache import _weights_key

__all__ = ["OpenClipClassifier"]


class OpenClipClassifier(ClipClassifier):
    """OpenCLIP models (BioCLIP, BioCLIP-2, LAION CLIP ...) through ``open_clip``."""

    family = "openclip"

    def __init__(self, model: Any, tokenizer: Any, **kw: Any):
        self.model = model
        self.tokenizer = tokenizer
        super().__init__(**kw)

    @classmethod
    def from_spec(
        cls,
        spec: ModelSpec,
        *,
        device: torch.device,
        dtype: str | torch.dtype | None = None,
        **kw: Any,
    ) -> OpenClipClassifier:
        import open_clip

        if spec.source:
            ident, key = f"local-dir:{spec.source}", _weights_key(Path(spec.source))
        else:
            ident, key = f"hf-hub:{spec.hub_id}", f"{spec.hub_id}@{spec.revision}"
        model, _, preprocess = open_clip.create_model_and_transforms(ident)
        tokenizer = open_clip.get_tokenizer(ident)
        return cls.from_model(
            model,
            tokenizer,
            preprocess,
            name=spec.name,
            spec=spec if not spec.source else None,
            model_key=key,
            device=device,
            dtype=dtype,
            **kw,
        )

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        preprocess: Callable[[Image.Image], torch.Tensor],
        *,
        name: str = "open_clip model",
        spec: ModelSpec | None = None,
        model_key: str | None = None,
        device: torch.device | str | None = None,
        dtype: str | torch.dtype | None = None,
        **kw: Any,
    ) -> OpenClipClassifier:
        """Wrap an open_clip model held in memory (its weights are used, not copied; ``device``
        defaults to where the model already is).

        ``model_key`` names the weights in the text-embedding cache; without it the cache stays
        in memory, since hierzoo cannot tell two in-memory models apart.
        """
        return cls._placed(
            model,
            tokenizer,
            preprocess,
            name=name,
            spec=spec,
            model_key=model_key,
            device=device,
            dtype=dtype,
            **kw,
        )

    @property
    def score_kind(self) -> str:  # type: ignore[override]
        return "sigmoid" if getattr(self.model, "logit_bias", None) is not None else "softmax"

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _vision_blocks(
        self,
    ) -> tuple[Sequence[torch.nn.Module], Callable[[torch.Tensor], torch.Tensor]]:
        visual = self.model.visual
        trunk = getattr(visual, "trunk", None)
        if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "num_prefix_tokens"):
            # a timm VisionTransformer tower (open_clip's TimmModel): batch-first blocks; the
            # class token where timm pools it, else the mean of the patch tokens (SigLIP's
            # attention-pooled towers have no prefix tokens)
            prefix = int(trunk.num_prefix_tokens)
            if getattr(trunk, "global_pool", "") == "token" and prefix > 0:
                return trunk.blocks, _class_token
            return trunk.blocks, lambda hidden: hidden[:, prefix:].mean(1)
        transformer = getattr(visual, "transformer", None)
        if transformer is None or not hasattr(transformer, "resblocks"):
            raise SiteError(
                f"layer:K reads open_clip's own VisionTransformer blocks, but {self.name!r} has a "
                f"{type(visual).__name__} image tower; use 'image' or 'image:raw'."
            )
        if not getattr(transformer, "batch_first", True):
            raise SiteError(
                f"The image transformer of {self.name!r} is sequence-first; layer:K needs "
                "open_clip >= 2.24."
            )
        if getattr(visual, "pool_type", "tok") == "tok":
            return transformer.resblocks, _class_token
        return transformer.resblocks, _mean_after_class_token

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def _embed_dim(self) -> int:
        return (
            int(self.model.text_projection.shape[1])
            if hasattr(self.model, "text_projection")
            else super()._embed_dim()
        )
