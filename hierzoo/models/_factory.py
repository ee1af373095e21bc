"""``hierzoo.load``: name -> spec -> family class, importing the heavy backend on first use."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from hierzoo.models._hub import ModelUnavailableError, ensure_available, unavailable_message
from hierzoo.models._registry import CLIP_FAMILIES, EXTRAS, FAMILIES, ModelSpec, resolve
from hierzoo.models.base import HierClassifier


def family_class(family: str) -> type[HierClassifier]:
    """The class of a family, importing its module (and backend) now.

    Raises:
        ImportError: the backend is missing, with the ``pip install`` line that adds it.
    """
    module, cls = FAMILIES[family].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        extra = EXTRAS.get(family, "clip" if family in CLIP_FAMILIES else "vlm")
        missing = getattr(e, "name", None) or str(e)
        raise ImportError(
            f"Model family {family!r} needs {missing!r}, which is not installed: pip install "
            f"'hierzoo[{extra}]'"
        ) from e


def option_owners(option: str) -> list[str]:
    """What the families that take ``option`` call their models (``["vision LLM"]``), importing
    their modules; a family whose backend is missing is left out."""
    labels: list[str] = []
    for family in FAMILIES:
        try:
            cls = family_class(family)
        except ImportError:
            continue
        if option in cls.options and cls.label not in labels:
            labels.append(cls.label)
    return labels


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> the first CUDA device when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"Unknown device {str(device)!r}: expected cpu, cuda, cuda:N (a GPU index) or mps."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device {str(device)!r} asked for, but CUDA is not available here; use --device cpu."
        )
    return device


def resolve_dtype(dtype: str | torch.dtype | None, default: torch.dtype) -> torch.dtype:
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"Expected `dtype` to be one of {sorted(names)}, but got {dtype!r}.")
    return names[dtype]


def load(
    name_or_path: str | Path | ModelSpec,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **kwargs: Any,
) -> HierClassifier:
    """Load a model by zoo name, ``hf-hub:org/repo`` id, or local directory.

    Args:
        name_or_path: a zoo name (``hierzoo.list_models()``), a hub id, a directory in open_clip's
            layout (``open_clip_config.json`` + weights) or saved by transformers'
            ``save_pretrained``, or a :class:`ModelSpec`.
        device: where to run; default the first GPU when there is one.
        dtype: weights' dtype; default the family's (float32 for CLIP models with bf16
            autocast on CUDA; bfloat16 on CUDA and float32 on CPU for vision LLMs and text-only
            LLMs).
        **kwargs: family options (``cache_dir`` for CLIP text embeddings, ``device_map`` and
            ``token_budget`` for vision LLMs, ...).
    """
    spec = name_or_path if isinstance(name_or_path, ModelSpec) else resolve(name_or_path)
    cls = family_class(spec.family)
    device = resolve_device(device)
    ensure_available(spec)
    try:
        return cls.from_spec(spec, device=device, dtype=dtype, **kwargs)
    except OSError as e:
        # a partial cache offline: the backends chain three tracebacks; say what to do instead
        if spec.source is None and _is_hub_miss(e):
            raise ModelUnavailableError(
                unavailable_message(spec, "some of its files could not be fetched")
            ) from e
        raise


def load_for_dry_run(name_or_path: str | Path | ModelSpec, **options: Any) -> HierClassifier:
    """A model's classifier without its weights, for :meth:`HierClassifier.describe_requests`
    (``hierzoo eval --dry-run``): vision LLMs load their config and processor only, so a 72B
    checkpoint's requests show without downloading or loading the model.

    Raises:
        ValueError: a family that cannot describe its requests, or another family's options.
        ImportError: the family's backend is missing.
    """
    spec = name_or_path if isinstance(name_or_path, ModelSpec) else resolve(name_or_path)
    return family_class(spec.family).for_dry_run(spec, **options)


def _is_hub_miss(e: BaseException) -> bool:
    while e is not None:
        if type(e).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or (
            "couldn't connect" in str(e) or "cannot find the requested files" in str(e)
        ):
            return True
        e = e.__cause__ or e.__context__
    return False
