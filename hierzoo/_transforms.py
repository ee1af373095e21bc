"""A model's preprocessing, understood step by step: a torchvision ``Compose`` or a
transformers image processor split into a uint8 half for the loader workers and a float half
for the device (the same numbers), or reproduced on tensors (``worker_decode="tensor"``,
``decode_on_device``: close to PIL's pixels, not equal).

Steps are recognised by their exact type (torchvision's, open_clip's and transformers' classes,
imported when a pipeline is inspected), never by name: a subclass or a look-alike may do
something else. A step hierzoo does not know (a ``Lambda``, a function, any other callable) or
an option it cannot reproduce (Lanczos resampling, ``max_size``, an unscaled dtype cast) makes
the pipeline unreproducible: :func:`unreproducible_step` says which step, and
:meth:`TensorPreprocess.from_transform`, :func:`tensor_decode_split` and
:func:`split_transform` return ``None``, so the caller keeps the exact PIL pipeline.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hierzoo._image_io import (
    check_pixels,
    decode_tensor,
    existing_file,
    image_header,
    load_image,
    pil_to_tensor,
)


# ------------------------------------------------------- uint8 on the host, floats on the device
class HostGeometry:
    """The PIL steps of a torchvision ``Compose`` before its ``ToTensor`` (resize, crop, RGB),
    returning a ``(3, H, W)`` uint8 tensor: a quarter of the bytes of the float image to move
    between processes, pin and copy, and no float work in the workers."""

    def __init__(self, steps: Sequence[Callable[[Any], Any]]):
        self.steps = list(steps)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        for step in self.steps:
            img = step(img)
        return pil_to_tensor(img)


@dataclass
class Normalize:
    """``(x / 255 - mean) / std`` of a uint8 ``(B, 3, H, W)`` tensor, as float32: the float
    half of a split ``Compose``, run where the tensor is (the device)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        out = pixels.float().div_(255.0)
        mean, std = _channel_stats(tuple(self.mean), tuple(self.std), out.device)
        return out.sub_(mean).div_(std)


@dataclass
class TensorDecode:
    """Read, decode and resize / crop an image to a ``(3, H, W)`` uint8 tensor without PIL:
    JPEG, PNG and WebP decoded by torchvision (libjpeg-turbo for JPEG) once the header's pixel
    count passed PIL's limit (:mod:`hierzoo._image_io`), then torch's antialiased uint8 resize,
    which follows PIL's closely but not exactly (on photo-like JPEGs of 200-900 px: at most 2
    grey levels apart, 0.035 on average). About 3 times less CPU per 500x375 JPEG than PIL's
    decode and resize (both measured by ``benchmarks/pipeline.py``); for worker processes
    feeding a GPU. Other formats (GIF, whose every frame torchvision would decode, TIFF, BMP
    ...) and files torchvision rejects go through PIL."""

    resize: int | tuple[int, int]
    crop: tuple[int, int] | None
    interpolation: str = "bicubic"
    crop_offset: str = "round"
    reads_files = True

    def __call__(self, item: str | Path | Image.Image) -> torch.Tensor:
        if isinstance(item, Image.Image):
            return self.geometry(pil_to_tensor(item))
        path = existing_file(item)
        data = path.read_bytes()
        header = image_header(data)
        if header is None:  # another format: PIL decodes it, checking its size itself
            return self.geometry(pil_to_tensor(load_image(path)))
        check_pixels(str(path), header[1], header[2])
        try:
            image = decode_tensor(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        except RuntimeError:  # a file torchvision rejects: PIL decides
            image = pil_to_tensor(load_image(path))
        return self.geometry(image)

    def geometry(self, image: torch.Tensor) -> torch.Tensor:
        return _resize_crop(image, self.resize, self.crop, self.interpolation, self.crop_offset)


def _resize_crop(
    image: torch.Tensor,
    resize: int | tuple[int, int],
    crop: tuple[int, int] | None,
    interpolation: str,
    offset: str,
) -> torch.Tensor:
    """Antialiased resize (shortest side, or an exact size), then a centre crop whose offset is
    rounded as torchvision does (``"round"``: open_clip's pipelines) or truncated as
    transformers' image processors do (``"floor"``); the two differ by a pixel when the margin
    is odd."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    size = [resize] if isinstance(resize, int) else list(resize)
    out = F.resize(image, size, interpolation=mode, antialias=True)
    if crop is None:
        return out
    if offset == "round":
        return F.center_crop(out, list(crop))
    h, w = out.shape[-2:]
    if crop[0] > h or crop[1] > w:  # smaller than the crop: padded as torchvision pads
        return F.center_crop(out, list(crop))
    return F.crop(out, int((h - crop[0]) / 2.0), int((w - crop[1]) / 2.0), crop[0], crop[1])


@functools.lru_cache(maxsize=64)
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as ``(C, 1, 1)`` tensors on ``device``, made once: a fresh host-to-device
    copy per batch would wait for the GPU's queued work."""
    return (
        torch.tensor(mean, device=device).view(-1, 1, 1),
        torch.tensor(std, device=device).view(-1, 1, 1),
    )


# ------------------------------------------------------------------------- recognising steps
@functools.lru_cache(maxsize=1)
def _torchvision_types() -> dict[str, tuple[Any, ...]]:
    from torchvision import transforms as v1
    from torchvision.transforms import v2

    return {
        "compose": (v1.Compose, v2.Compose),
        "resize": (v1.Resize, v2.Resize),
        "crop": (v1.CenterCrop, v2.CenterCrop),
        "rgb": (v2.RGB,),
        "float_tensor": (v1.ToTensor,),  # PIL uint8 -> float / 255
        "uint8_tensor": (v1.PILToTensor, v2.PILToTensor, v2.ToImage),
        "to_float": (v1.ConvertImageDtype, v2.ConvertImageDtype, v2.ToDtype),
        "normalize": (v1.Normalize, v2.Normalize),
    }


def _known() -> dict[str, tuple[Any, ...]]:
    """The exact types (and open_clip's RGB function) of the steps hierzoo understands.
    open_clip's are looked up only once open_clip is imported (a step of open_clip's means it
    is), so a transformers model does not pay for importing it."""
    known = {**_torchvision_types(), "pil_geometry": (), "rgb_function": ()}
    oc = sys.modules.get("open_clip.transform")
    if oc is not None:
        known["float_tensor"] += (oc.MaybeToTensor,)
        known["rgb"] += (oc.MaybeConvertMode,)
        # PIL steps the uint8 split runs as they are, with no tensor twin
        known["pil_geometry"] = (oc.ResizeKeepRatio, oc.CenterCropOrPad)
        known["rgb_function"] = tuple(f for f in [getattr(oc, "_convert_to_rgb", None)] if f)
    return known


def _kind(step: Any) -> str | None:
    """What ``step`` is, from its exact type: ``"resize"``, ``"crop"``, ``"rgb"``, ...;
    ``None`` for a step hierzoo does not know."""
    known = _known()
    if any(step is f for f in known["rgb_function"]):
        return "rgb"
    kind = next((k for k, types in known.items() if type(step) in types), None)
    if kind == "rgb" and getattr(step, "mode", "RGB") != "RGB":
        return None
    return kind


def _describe(step: Any) -> str:
    if hasattr(step, "__qualname__"):  # a function or a class
        return f"{step.__module__}.{step.__qualname__}"
    text = repr(step).replace("\n", " ")
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(step).__module__}.{type(step).__qualname__} ({text})"


def _interpolation(mode: Any) -> str | None:
    from torchvision.transforms import InterpolationMode

    return {InterpolationMode.BICUBIC: "bicubic", InterpolationMode.BILINEAR: "bilinear"}.get(mode)


def _float_cast(step: Any) -> bool:
    """A dtype step that turns uint8 into floats in [0, 1] (``ToDtype`` with ``scale=True``)."""
    dtype = getattr(step, "dtype", None)
    return (
        isinstance(dtype, torch.dtype) and dtype.is_floating_point and getattr(step, "scale", True)
    )


def split_transform(transform: Any) -> tuple[HostGeometry, Normalize] | None:
    """A torchvision ``Compose`` of PIL resize / crop / RGB steps, then ``ToTensor`` and one
    ``Normalize``, split into its uint8 host half and its float device half (the same numbers:
    ``ToTensor`` is ``x.float() / 255`` and ``Normalize`` is ``(x - mean) / std``). ``None``
    for any other pipeline (a transformers processor, augmentations, a custom step)."""
    if type(transform) not in _known()["compose"]:
        return None
    steps = list(transform.transforms)
    kinds = [_kind(t) for t in steps]
    cut = next((i for i, k in enumerate(kinds) if k == "float_tensor"), None)
    if (
        cut is None
        or kinds[cut + 1 :] != ["normalize"]
        or any(k not in ("resize", "crop", "rgb", "pil_geometry") for k in kinds[:cut])
    ):
        return None
    norm = steps[-1]
    return HostGeometry(steps[:cut]), Normalize(
        tuple(float(m) for m in norm.mean), tuple(float(s) for s in norm.std)
    )


def unreproducible_step(transform: Any) -> str | None:
    """``None`` when hierzoo can run ``transform`` on tensors (``worker_decode="tensor"``,
    ``decode_on_device``); else what stops it, naming the step (a ``Lambda``, an unknown
    callable, an option such as Lanczos resampling) or the processor. A caller that gets a
    reason keeps the model's own PIL pipeline."""
    plan = _plan(transform)
    return plan if isinstance(plan, str) else None


def tensor_decode_split(transform: Any) -> tuple[TensorDecode, Normalize] | None:
    """A plain resize / crop / normalise pipeline (see :meth:`TensorPreprocess.from_transform`)
    as :class:`TensorDecode` for the workers and :class:`Normalize` for the device; ``None``
    for anything else."""
    plan = TensorPreprocess.from_transform(transform)
    if plan is None:
        return None
    return TensorDecode(plan.resize, plan.crop, plan.interpolation, plan.crop_offset), Normalize(
        plan.mean, plan.std
    )


# --------------------------------------------------------------------------- decoding on the device
@dataclass
class TensorPreprocess:
    """Resize, centre-crop and normalise ``(3, H, W)`` uint8 tensors on any device.

    The tensor twin of the CLIP-style PIL pipelines (antialiased resize, as PIL does), used when
    images are decoded on the GPU. ``resize`` is the shortest side (an int) or an exact
    ``(height, width)``.
    """

    resize: int | tuple[int, int]
    crop: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_offset: str = "round"

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``image``: ``(C, H, W)`` or a ``(B, C, H, W)`` batch."""
        out = _resize_crop(image, self.resize, self.crop, self.interpolation, self.crop_offset)
        return Normalize(tuple(self.mean), tuple(self.std))(out)

    @classmethod
    def from_transform(cls, transform: Any) -> TensorPreprocess | None:
        """The tensor twin of a torchvision ``Compose`` (open_clip's preprocess) or of a
        transformers CLIP / SigLIP image processor; ``None`` when the pipeline is not a plain
        resize / crop / normalise (:func:`unreproducible_step` says why)."""
        plan = _plan(transform)
        return plan if isinstance(plan, TensorPreprocess) else None


def _plan(transform: Any) -> TensorPreprocess | str:
    """The tensor twin of ``transform``, or the reason there is none."""
    ip = getattr(transform, "image_processor", None)
    if ip is not None:
        return _plan_hf(ip)
    if type(transform) not in _known()["compose"]:
        return f"{_describe(transform)} is not a torchvision Compose or a transformers processor"
    resize: int | tuple[int, int] | None = None
    crop = norm = tensor = None
    interpolation: str | None = "bicubic"
    for step in transform.transforms:
        kind = _kind(step)
        if kind == "resize" and resize is None and crop is None and tensor is None:
            size = step.size
            interpolation = _interpolation(step.interpolation)
            if size is None or step.max_size is not None or interpolation is None:
                return f"{_describe(step)}: only bicubic or bilinear resizing to a size"
            resize = size if isinstance(size, int) else (size[0] if len(size) == 1 else tuple(size))
        elif kind == "crop" and resize is not None and crop is None and tensor is None:
            crop = tuple(step.size)
        elif kind == "rgb" and tensor is None:
            continue
        elif kind in ("float_tensor", "uint8_tensor") and tensor is None:
            tensor = kind
        elif kind == "to_float" and tensor == "uint8_tensor" and _float_cast(step):
            tensor = "float_tensor"
        elif kind == "normalize" and tensor == "float_tensor" and norm is None:
            norm = step
        else:
            return f"{_describe(step)}, which hierzoo cannot reproduce on tensors in that place"
    if resize is None or norm is None:
        return "the pipeline has no Resize or no Normalize"
    return TensorPreprocess(
        resize=resize,
        crop=crop,
        mean=tuple(norm.mean),
        std=tuple(norm.std),
        interpolation=interpolation or "bicubic",
    )


_HF_PROCESSORS = (
    "CLIPImageProcessor",
    "CLIPImageProcessorPil",
    "SiglipImageProcessor",
    "SiglipImageProcessorPil",
)


def _plan_hf(ip: Any) -> TensorPreprocess | str:
    import transformers

    known = tuple(c for c in (getattr(transformers, n, None) for n in _HF_PROCESSORS) if c)
    if type(ip) not in known:
        return f"{_describe(ip)}: hierzoo reproduces CLIP's and SigLIP's image processors only"
    size = getattr(ip, "size", None) or {}
    if "shortest_edge" in size:
        resize: int | tuple[int, int] = int(size["shortest_edge"])
    elif "height" in size:
        resize = (int(size["height"]), int(size["width"]))
    else:
        return f"{_describe(ip)}: size {size!r} is neither a shortest edge nor a height and width"
    resample = int(getattr(ip, "resample", 3))
    if (
        not getattr(ip, "do_resize", True)
        or not getattr(ip, "do_rescale", True)
        or abs(float(getattr(ip, "rescale_factor", 1 / 255)) - 1 / 255) > 1e-9
        or not getattr(ip, "do_normalize", True)
        or getattr(ip, "do_pad", None)
        or resample not in (2, 3)
    ):
        return (
            f"{_describe(ip)}: only resize (bicubic or bilinear), centre crop, rescale by 1/255 "
            "and normalise"
        )
    crop_size = getattr(ip, "crop_size", None)
    crop = (
        (int(crop_size["height"]), int(crop_size["width"]))
        if getattr(ip, "do_center_crop", False) and crop_size
        else None
    )
    return TensorPreprocess(
        resize=resize,
        crop=crop,
        mean=tuple(ip.image_mean),
        std=tuple(ip.image_std),
        interpolation="bilinear" if resample == 2 else "bicubic",
        crop_offset="floor",
    )
