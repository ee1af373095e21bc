"""``hierzoo.wrap``: a :class:`~hierzoo.models.HierClassifier` around a model you already hold.

Research code loads, fine-tunes and adapts models itself; ``wrap`` puts hierzoo's interface on
that very object, without copying a weight and without global state:

- an open_clip ``CLIP`` / ``CustomTextCLIP`` -> ``OpenClipClassifier``;
- a transformers model, by ``config.model_type``: ``clip`` / ``siglip`` -> ``HFClipClassifier``;
  ``qwen2_5_vl``, ``qwen3_vl``, ``llava_onevision``, ``internvl`` -> the family's
  ``VisionLLMClassifier`` subclass (the same table ``hierzoo.load`` uses);
- a peft ``PeftModel`` around any of these (LoRA and the other adapters that live inside the
  base model's modules): hierzoo runs the base model, whose layers carry the adapter, so what
  the user does to the ``PeftModel`` (``disable_adapter()``, ``set_adapter()``, training steps)
  is what hierzoo sees;
- ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile`` wrappers: their module.

A merged fine-tuned checkpoint saved with ``save_pretrained`` is a directory: ``hierzoo.load(dir)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hierzoo.models._factory import family_class, resolve_device, resolve_dtype
from hierzoo.models._registry import CLIP_FAMILIES, MODEL_TYPES
from hierzoo.models.base import HierClassifier

__all__ = ["wrap"]


def wrap(
    model: Any,
    processor_or_tokenizer: Any = None,
    *,
    preprocess: Callable[[Any], torch.Tensor] | None = None,
    name: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **options: Any,
) -> HierClassifier:
    """The :class:`~hierzoo.models.HierClassifier` of a model held in memory (no weight copies).

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP``; a transformers CLIP, SigLIP,
            Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision or InternVL model (the ``...Model`` of a CLIP,
            the ``...ForConditionalGeneration`` of a vision LLM); a peft ``PeftModel`` around one;
            or any of these inside ``DistributedDataParallel``, ``DataParallel`` or
            ``torch.compile``.
        processor_or_tokenizer: open_clip: its tokenizer, or a name for
            ``open_clip.get_tokenizer`` (default: open_clip's ``SimpleTokenizer`` at the model's
            context length, for models with open_clip's own text tower). transformers: its
            processor (tokenizer + image processor + chat template), or a directory or hub id to
            load it from (default: ``model.name_or_path``, where ``from_pretrained`` loaded the
            model from).
        preprocess: open_clip only: the PIL -> tensor transform (default: open_clip's evaluation
            transform for the model's own preprocessing config).
        name: what results and progress bars call the model (default: where it was loaded from,
            or its class).
        device: move the model there first (in place, as ``Module.to`` does); default: where it
            is. A model spread over devices with ``device_map`` stays where it is.
        dtype: cast the model's weights first (in place); default: their dtype.
        **options: the family's options: ``templates``, ``batch_size``, ``num_workers``,
            ``decode_on_device``, ``model_key`` / ``cache_dir`` (CLIP); ``token_budget``,
            ``batch_size``, ``prefix_cache``, ``batched_vision_attention`` (vision LLMs; on by
            default for Qwen-VL, it patches the attention modules of ``model``'s vision tower in
            place, with the same outputs; ``False`` puts transformers' forward back).

    Returns:
        The family's classifier. Its ``model`` is the very module passed in (for a ``PeftModel``,
        its base model, which holds the adapter layers), so parameters share storage; ``wrapped``
        is the object passed in. The model is put in eval mode, as loading does.

    Raises:
        TypeError: a model of a kind hierzoo does not know, naming the kinds it knows.
        ValueError: what the model needs and was not given (its tokenizer, its processor), or a
            peft adapter that does not live in the base model's modules (prompt learning).

    CLIP classifiers cache text embeddings in memory, per classifier (a wrapped model never
    writes the disk cache unless ``model_key`` names its weights): wrap again after the weights
    change, or the old text embeddings are used.
    """
    if isinstance(model, HierClassifier):
        raise TypeError(f"{model!r} is already a HierClassifier; use it as it is.")
    source = model
    model, adapter = _unwrap(model)
    if _is_open_clip(model):
        clf = _wrap_open_clip(
            model, processor_or_tokenizer, preprocess, name, device, dtype, options
        )
    else:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type is None:
            raise TypeError(
                f"hierzoo.wrap does not know a {type(model).__module__}.{type(model).__name__}: "
                "expected an "
                "open_clip CLIP / CustomTextCLIP, a transformers model whose config.model_type is "
                "one of "
                f"{sorted(MODEL_TYPES)}, or a peft PeftModel around one."
            )
        if model_type not in MODEL_TYPES:
            raise TypeError(
                f"hierzoo.wrap does not know transformers model_type {model_type!r} "
                f"({type(model).__name__}); expected one of {sorted(MODEL_TYPES)}."
            )
        if preprocess is not None:
            raise ValueError(
                "`preprocess` is for open_clip models; a transformers model preprocesses images "
                "with its processor (pass it as the second argument)."
            )
        family = MODEL_TYPES[model_type]
        if family in CLIP_FAMILIES:
            clf = _wrap_hf_clip(model, processor_or_tokenizer, family, name, device, dtype, options)
        else:
            clf = _wrap_vision_llm(
                model, processor_or_tokenizer, family, name, device, dtype, options
            )
    if adapter and name is None:
        clf.name = f"{clf.name} + {adapter}"
    clf.wrapped = source  # type: ignore[attr-defined]
    return clf


# --------------------------------------------------------------------------- unwrapping
def _unwrap(model: Any) -> tuple[Any, str]:
    """The module that runs, under DDP / DataParallel / torch.compile / peft wrappers, and a
    description of the peft adapter ('' when none)."""
    adapter = ""
    for _ in range(8):
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(model, torch.nn.Module) and isinstance(
            getattr(model, "_orig_mod", None), torch.nn.Module
        ):
            model = model._orig_mod  # torch.compile's OptimizedModule
        elif _is_peft(model):
            config = model.active_peft_config
            if getattr(config, "is_prompt_learning", False):
                raise ValueError(
                    f"The peft adapter {model.active_adapter!r} is {config.peft_type} (prompt "
                    "learning): its "
                    "virtual tokens are added by PeftModel.forward, which hierzoo's batched "
                    "scoring does "
                    "not call. hierzoo scores adapters that live in the base model's layers "
                    "(LoRA, IA3, "
                    "...), or a merged checkpoint directory (hierzoo.load(dir))."
                )
            kind = getattr(config.peft_type, "value", config.peft_type)
            adapter = f"peft:{kind}:{model.active_adapter}"
            model = model.get_base_model()
        else:
            return model, adapter
    raise TypeError(
        f"hierzoo.wrap could not unwrap {type(model).__name__}: wrappers nested too deep."
    )


def _is_peft(model: Any) -> bool:
    peft = sys.modules.get("peft")  # a PeftModel exists only where peft was imported
    return peft is not None and isinstance(model, peft.PeftModel)


def _is_open_clip(model: Any) -> bool:
    return (
        type(model).__module__.split(".")[0] == "open_clip"
        and hasattr(model, "encode_image")
        and hasattr(model, "encode_text")
    )


def _device_of(model: Any, device: str | torch.device | None) -> torch.device:
    """``device`` checked, else where the model's first parameter is."""
    if device is not None:
        return resolve_device(device)
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


# --------------------------------------------------------------------------- families
def _wrap_open_clip(
    model: Any,
    tokenizer: Any,
    preprocess: Callable[[Any], torch.Tensor] | None,
    name: str | None,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    options: dict[str, Any],
) -> HierClassifier:
    import open_clip

    from hierzoo.models.clip import OpenClipClassifier

    if tokenizer is None:
        tokenizer = _default_open_clip_tokenizer(model)
    elif isinstance(tokenizer, (str, Path)):
        tokenizer = open_clip.get_tokenizer(str(tokenizer))
    if not callable(tokenizer):
        raise ValueError(
            "Expected an open_clip tokenizer (callable on a list of texts) or a model name, but "
            "got "
            f"{type(tokenizer).__name__}; pass open_clip.get_tokenizer(NAME)."
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
    return OpenClipClassifier.from_model(
        model,
        tokenizer,
        preprocess,
        name=name or f"open_clip {type(model).__name__}",
        device=_device_of(model, device),
        dtype=dtype,
        **options,
    )


def _default_open_clip_tokenizer(model: Any) -> Any:
    """open_clip's ``SimpleTokenizer`` for models with open_clip's own text tower (the 49408-token
    CLIP vocabulary); other text towers need their tokenizer passed."""
    import open_clip

    if type(model).__name__ == "CLIP" and getattr(model, "vocab_size", None) == 49408:
        return open_clip.SimpleTokenizer(context_length=int(model.context_length))
    raise ValueError(
        f"Cannot derive the tokenizer of this open_clip {type(model).__name__} (its text tower is "
        "not "
        "open_clip's own CLIP transformer): pass it, hierzoo.wrap(model, "
        "open_clip.get_tokenizer(NAME), "
        "preprocess=...), or the model name as the second argument."
    )


def _processor(model: Any, given: Any, family: str) -> Any:
    """The transformers processor given, loaded from a path / hub id, or from where the model
    was loaded; it must hold an image processor and a tokenizer."""
    if given is None:
        given = getattr(model, "name_or_path", "") or None
        if given is None:
            raise ValueError(
                f"A {family} model needs its processor: hierzoo.wrap(model, "
                "AutoProcessor.from_pretrained(CHECKPOINT)) "
                "(this model does not say where it was loaded from)."
            )
    if isinstance(given, (str, Path)):
        from transformers import AutoProcessor

        try:
            given = AutoProcessor.from_pretrained(str(given))
        except Exception as e:  # not found, offline, no processor files ...
            raise ValueError(
                f"Could not load the processor of the {family} model from {str(given)!r} "
                f"({type(e).__name__}: {e}); pass it: hierzoo.wrap(model, processor)."
            ) from e
    if not (hasattr(given, "image_processor") and hasattr(given, "tokenizer")):
        raise ValueError(
            f"A {family} model needs its processor (image processor + tokenizer, AutoProcessor), "
            "but got a "
            f"{type(given).__name__}; pass AutoProcessor.from_pretrained(CHECKPOINT)."
        )
    return given


def _wrap_hf_clip(
    model: Any,
    processor: Any,
    family: str,
    name: str | None,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    options: dict[str, Any],
) -> HierClassifier:
    cls: Any = family_class(family)
    return cls.from_model(
        model,
        _processor(model, processor, family),
        name=name or getattr(model, "name_or_path", "") or type(model).__name__,
        device=_device_of(model, device),
        dtype=dtype,
        **options,
    )


def _wrap_vision_llm(
    model: Any,
    processor: Any,
    family: str,
    name: str | None,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    options: dict[str, Any],
) -> HierClassifier:
    import transformers

    cls: Any = family_class(family)
    expected = getattr(transformers, cls.model_class)
    if not isinstance(model, expected):
        raise TypeError(
            f"A {family} model scores answers through its language-model head: expected a "
            f"{cls.model_class} (AutoModelForImageTextToText), but got {type(model).__name__}."
        )
    processor = _processor(model, processor, family)
    target = resolve_dtype(dtype, model.dtype)
    spread = len(set(getattr(model, "hf_device_map", {}).values())) > 1
    if device is not None and spread:
        raise ValueError(
            "This model is spread over devices with device_map; wrap it without `device` (it runs "
            "where it is)."
        )
    moved = (
        {"device": resolve_device(device)}
        if device is not None and model.device != resolve_device(device)
        else {}
    )
    if target != model.dtype:
        moved["dtype"] = target
    if moved:
        model.to(**moved)
    return cls(
        model.eval(),
        processor,
        name=name or getattr(model, "name_or_path", "") or cls.model_class,
        **options,
    )
