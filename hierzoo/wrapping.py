"""``hierzoo.wrap``: a :class:`~hierzoo.models.HierClassifier` around a model you already hold.

Research code loads, fine-tunes and adapts models itself; ``wrap`` puts hierzoo's interface on
that very object, without copying a weight and without global state:

- an open_clip ``CLIP`` / ``CustomTextCLIP`` -> ``OpenClipClassifier``;
- a transformers model, by ``config.model_type``: ``clip`` / ``siglip`` -> ``HFClipClassifier``;
  ``qwen2_5_vl``, ``qwen3_vl``, ``llava_onevision``, ``internvl`` -> the family's
  ``VisionLLMClassifier`` subclass (the same table ``hierzoo.load`` uses); a text-only
  ``...ForCausalLM`` (``qwen2``, ``llama``, ``mistral`` ... or any other without a vision part)
  -> ``TextLLMClassifier``;
  the family's ``from_model`` does the rest, as ``from_spec`` does for ``hierzoo.load``;
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
from typing import Any

import torch

from hierzoo.models._factory import family_class, option_owners
from hierzoo.models._registry import family_of_model
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
            Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision or InternVL model or a text-only LLM (the
            ``...Model`` of a CLIP, the ``...ForConditionalGeneration`` of a vision LLM, the
            ``...ForCausalLM`` of a text-only LLM); a peft ``PeftModel`` around one;
            or any of these inside ``DistributedDataParallel``, ``DataParallel`` or
            ``torch.compile``.
        processor_or_tokenizer: open_clip: its tokenizer, or a name for
            ``open_clip.get_tokenizer`` (default: open_clip's ``SimpleTokenizer`` at the model's
            context length, for models with open_clip's own text tower). transformers: its
            processor (tokenizer + image processor + chat template), or a directory or hub id to
            load it from (default: ``model.name_or_path``, where ``from_pretrained`` loaded the
            model from); a text-only LLM takes its tokenizer.
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
    cls = family_class(family_of_model(model))
    if preprocess is not None:
        if "preprocess" not in cls.options:
            owners = " and ".join(f"{label}s" for label in option_owners("preprocess"))
            raise ValueError(
                f"`preprocess` is for {owners}; a {cls.label} preprocesses images with its "
                "processor (pass it as the second argument)."
            )
        options["preprocess"] = preprocess
    clf = cls.from_model(
        model, processor_or_tokenizer, name=name, device=device, dtype=dtype, **options
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
