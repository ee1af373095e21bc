"""OpenCLIP models (BioCLIP, BioCLIP-2, LAION CLIP ...) through ``open_clip``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hierzoo.models._registry import ModelSpec
from hierzoo.models._sites import SiteError
from hierzoo.models.clip._base import ClipClassifier, _text_cache_key
from hierzoo.models.clip._features import _class_token, _mean_after_class_token

__all__ = ["OpenClipClassifier", "open_clip_args"]


def open_clip_args(spec: ModelSpec) -> tuple[str, dict[str, str]]:
    """``(model_name, pretrained kwargs)`` for ``open_clip.create_model_and_transforms``: a
    local directory as ``local-dir:``; a checkpoint the paper loaded by architecture and
    ``pretrained`` tag (``spec.pretrained_tag``) the same way, which takes the tag's image
    preprocessing (ViT-L/14 ``laion2b_s32b_b82k``: mean and std 0.5); else ``hf-hub:`` with the
    preprocessing of the hub's ``open_clip_config.json``."""
    if spec.source:
        return f"local-dir:{spec.source}", {}
    if spec.pretrained_tag:
        if not spec.arch:
            raise ValueError(
                f"The zoo entry {spec.name!r} names an open_clip pretrained tag but no "
                "architecture (arch=...)."
            )
        return spec.arch, {"pretrained": spec.pretrained_tag}
    return f"hf-hub:{spec.hub_id}", {}


class OpenClipClassifier(ClipClassifier):
    """OpenCLIP models (BioCLIP, BioCLIP-2, LAION CLIP ...) through ``open_clip``."""

    family = "openclip"
    label = "open_clip model"
    options = ClipClassifier.options | {"preprocess"}

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

        name, pretrained = open_clip_args(spec)
        model, _, preprocess = open_clip.create_model_and_transforms(name, **pretrained)
        tokenizer = open_clip.get_tokenizer(name)
        return cls.from_model(
            model,
            tokenizer,
            preprocess,
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
        tokenizer: Any = None,
        preprocess: Callable[[Image.Image], torch.Tensor] | None = None,
        *,
        name: str | None = None,
        spec: ModelSpec | None = None,
        model_key: str | None = None,
        device: torch.device | str | None = None,
        dtype: str | torch.dtype | None = None,
        **kw: Any,
    ) -> OpenClipClassifier:
        """Wrap an open_clip model held in memory (its weights are used, not copied; ``device``
        defaults to where the model already is).

        Args:
            model: an open_clip ``CLIP`` / ``CustomTextCLIP``.
            tokenizer: its tokenizer, or a name for ``open_clip.get_tokenizer`` (default:
                open_clip's ``SimpleTokenizer`` at the model's context length, for models with
                open_clip's own text tower).
            preprocess: the PIL -> tensor transform (default: open_clip's evaluation transform
                for the model's own preprocessing config).
            name: what results call the model (default ``"open_clip CLIP"``, its class).
            model_key: names the weights in the text-embedding cache; without it the cache
                stays in memory, since hierzoo cannot tell two in-memory models apart.
        """
        import open_clip

        if tokenizer is None:
            tokenizer = _default_tokenizer(model)
        elif isinstance(tokenizer, (str, Path)):
            tokenizer = open_clip.get_tokenizer(str(tokenizer))
        if not callable(tokenizer):
            raise ValueError(
                "Expected an open_clip tokenizer (callable on a list of texts) or a model name, "
                f"but got {type(tokenizer).__name__}; pass open_clip.get_tokenizer(NAME)."
            )
        if preprocess is None:
            from open_clip.transform import PreprocessCfg, image_transform_v2

            cfg = open_clip.get_model_preprocess_cfg(model)
            if "size" not in cfg:
                raise ValueError(
                    f"Cannot derive the image preprocessing of this {type(model).__name__}: pass "
                    "preprocess= (the third value of open_clip.create_model_and_transforms)."
                )
            preprocess = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        return cls._placed(
            model,
            tokenizer,
            preprocess,
            name=name or f"open_clip {type(model).__name__}",
            spec=spec,
            model_key=model_key,
            device=device,
            dtype=dtype,
            **kw,
        )

    def timed_module(self) -> torch.nn.Module:
        """The image tower (``model.visual``)."""
        return self.model.visual

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


def _default_tokenizer(model: Any) -> Any:
    """open_clip's ``SimpleTokenizer`` for models with open_clip's own text tower (the 49408-token
    CLIP vocabulary); other text towers need their tokenizer passed."""
    import open_clip

    if type(model).__name__ == "CLIP" and getattr(model, "vocab_size", None) == 49408:
        return open_clip.SimpleTokenizer(context_length=int(model.context_length))
    raise ValueError(
        f"Cannot derive the tokenizer of this open_clip {type(model).__name__} (its text tower is "
        "not open_clip's own CLIP transformer): pass it, hierzoo.wrap(model, "
        "open_clip.get_tokenizer(NAME), preprocess=...), or the model name as the second argument."
    )
