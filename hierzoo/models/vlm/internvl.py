"""InternVL 3 / 3.5 (transformers' format), and InternVL 2 / 2.5 in OpenGVLab's format (converted
on load, :mod:`hierzoo.models.vlm._internvl_chat`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hierzoo.models.vlm import _internvl_chat as remote
from hierzoo.models.vlm._base import VisionLLMClassifier
from hierzoo.models.vlm._lm import LOADING_OPTIONS

if TYPE_CHECKING:
    from hierzoo.models._registry import ModelSpec

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

    # ------------------------------------------------------------------ OpenGVLab's format
    @classmethod
    def _load_checkpoint(
        cls,
        spec: ModelSpec,
        *,
        device: torch.device,
        dtype: torch.dtype,
        device_map: str | dict[str, Any] | None,
        attn_implementation: str | None,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """A checkpoint in OpenGVLab's format (``spec.checkpoint_format == "internvl_chat"``)
        is converted into transformers' classes (:mod:`hierzoo.models.vlm._internvl_chat`);
        any other loads as transformers' format.

        Raises:
            ValueError: OpenGVLab's format without ``trust_remote_code=True``, or with
                ``device_map`` or other ``from_pretrained`` options.
        """
        if spec.checkpoint_format != remote.REMOTE_FORMAT:
            return super()._load_checkpoint(
                spec,
                device=device,
                dtype=dtype,
                device_map=device_map,
                attn_implementation=attn_implementation,
                **kwargs,
            )
        if device_map is not None:
            raise ValueError(
                f"{spec.name!r} is converted from OpenGVLab's format on load, onto one device: "
                "leave out device_map and pass device."
            )
        path, processor, config = cls._remote_parts(spec, kwargs)
        model = remote.load_remote(path, config, dtype, device)
        model.set_attn_implementation(attn_implementation or "sdpa")
        model.generation_config = remote.generation_config(path, processor.tokenizer)
        return model.to(device).eval(), processor

    @classmethod
    def _load_config(cls, spec: ModelSpec, **options: Any) -> tuple[Any, Any]:
        if spec.checkpoint_format != remote.REMOTE_FORMAT:
            return super()._load_config(spec, **options)
        _, processor, config = cls._remote_parts(spec, options)
        return config, processor

    @classmethod
    def _remote_parts(cls, spec: ModelSpec, options: dict[str, Any]) -> tuple[Path, Any, Any]:
        """The directory, processor and converted config of a checkpoint in OpenGVLab's
        format."""
        extra = sorted(set(options) - {"trust_remote_code"} - cls.options - LOADING_OPTIONS)
        if extra:
            raise ValueError(
                f"{spec.name!r} is converted from OpenGVLab's format on load; it takes no "
                f"from_pretrained options ({', '.join(extra)})."
            )
        if not options.get("trust_remote_code"):
            raise ValueError(
                f"{spec.name!r} is an InternVL checkpoint in OpenGVLab's own format: its "
                "tokenizer is code shipped with the checkpoint. Load it with "
                "trust_remote_code=True (hierzoo eval --trust-remote-code) if you trust "
                f"{spec.hub_id!r}."
            )
        path = remote.checkpoint_dir(spec)
        processor, config = remote.build_processor(path)
        return path, processor, config

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
