"""Reading one image file, the same way in every decoding path (PIL, torchvision in the loader
workers, nvJPEG on the device).

- **Size first.** Before anything is decoded, the pixel count in the file's header is checked
  against PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) with PIL's rule: more
  than twice the limit is refused (:class:`ImageTooLarge`, recorded as that sample's error),
  more than the limit is decoded with a ``PIL.Image.DecompressionBombWarning``. hierzoo reads the
  headers of JPEG, PNG and WebP itself; other formats are decoded by PIL, which checks the same
  way. ``PIL.Image.MAX_IMAGE_PIXELS = None`` turns the check off.
- **8 bits, by the value range.** 16-bit and 32-bit integer greys (PIL modes ``I;16``, ``I``;
  torchvision's ``uint16``) keep their high byte, ``v >> 8`` (how PIL reads 16-bit colour PNGs;
  ``I`` is clipped to 0-65535 first). A float image (mode ``F``, float TIFFs) maps
  ``[min(0, lowest value), max(1, highest value)]`` to 0-255, rounded: an image in [0, 1] is
  scaled by 255, one with values outside [0, 1] by its own range; NaN counts as 0.
"""

from __future__ import annotations

import contextlib
import struct
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class ImageError(OSError):
    """An image that cannot be read."""


class ImageTooLarge(ImageError):
    """An image whose header declares more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels."""


def existing_file(item: str | Path) -> Path:
    """The path of a non-empty file, or an :class:`ImageError` saying what is wrong with it."""
    path = Path(item)
    if not path.is_file():
        raise ImageError(
            f"No image file at {str(path)!r}; check the path (`hierzoo eval` reads recorded "
            "paths under --image-root, `hierzoo probe` under --images)."
        )
    if path.stat().st_size == 0:
        raise ImageError(f"Image file {str(path)!r} is empty (0 bytes); re-copy or remove it.")
    return path


def load_image(item: str | Path | Image.Image) -> Image.Image:
    """An 8-bit RGB PIL image from a path or a PIL image (see the module docstring for the
    bit depths and the size limit).

    Raises:
        ImageError: a missing, empty or undecodable file, naming it.
        ImageTooLarge: more pixels than PIL's decompression-bomb limit allows.
    """
    if isinstance(item, Image.Image):
        return to_rgb(item)
    path = existing_file(item)
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except Image.DecompressionBombError as e:  # raised by Image.open, before any decoding
        with path.open("rb") as f:
            header = image_header(f.read(1 << 20))
        if header is not None:
            raise ImageTooLarge(_too_large(str(path), header[1], header[2])) from None
        raise ImageTooLarge(
            f"Image {str(path)!r} was not decoded: {e} If you trust the file, raise "
            "PIL.Image.MAX_IMAGE_PIXELS to at least its pixel count before the run (None turns "
            "the check off)."
        ) from None
    except Exception as e:  # PIL raises several types for corrupt data
        raise ImageError(
            f"Cannot decode image {str(path)!r} ({type(e).__name__}: {e}); the file is corrupt or "
            "not an image."
        ) from e


# ------------------------------------------------------------------------------ size limit
def image_header(data: bytes | memoryview) -> tuple[str, int, int] | None:
    """``(format, width, height)`` from the start of a JPEG, PNG or (still) WebP file (a JPEG's
    segments are walked to its frame header); ``None`` for another format, an animated WebP or
    a header that does not parse."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            width, height = struct.unpack_from(">II", data, 16)
            kind = "png"
        elif data[:2] == b"\xff\xd8":
            size = _jpeg_size(data)
            if size is None:
                return None
            (width, height), kind = size, "jpeg"
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            size = _webp_size(data)
            if size is None:
                return None
            (width, height), kind = size, "webp"
        else:
            return None
    except struct.error:  # a header cut short
        return None
    return (kind, width, height) if width and height else None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
        elif marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        elif marker in _SOF:
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        else:
            i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    return None


def _webp_size(data: bytes | memoryview) -> tuple[int, int] | None:
    chunk = bytes(data[12:16])
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = struct.unpack_from("<I", data, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and not data[20] & 0x02:  # 0x02: animated (decoded by PIL)
        b = bytes(data[24:30])
        return int.from_bytes(b[:3], "little") + 1, int.from_bytes(b[3:], "little") + 1
    return None


def check_pixels(name: str, width: int, height: int) -> None:
    """PIL's decompression-bomb rule for an image about to be decoded without PIL: more than
    twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels raises :class:`ImageTooLarge`, more than the
    limit warns (``PIL.Image.DecompressionBombWarning``); ``None`` turns the check off."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    pixels = width * height
    if pixels > 2 * limit:
        raise ImageTooLarge(_too_large(name, width, height))
    if pixels > limit:
        warnings.warn(
            f"Image {name!r} is {width}x{height} ({pixels:,} pixels), over PIL's "
            f"decompression-bomb limit of {limit:,} pixels; decoded, as PIL decodes up to twice "
            "the limit.",
            Image.DecompressionBombWarning,
            stacklevel=2,
        )


def _too_large(name: str, width: int, height: int) -> str:
    pixels, limit = width * height, Image.MAX_IMAGE_PIXELS
    return (
        f"Image {name!r} is {width}x{height} ({pixels:,} pixels, about {3 * pixels / 2**30:.1f} "
        f"GB as RGB), more than twice PIL's decompression-bomb limit of {limit:,} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS), so it was not decoded. If you trust the file, raise the "
        f"limit before the run: PIL.Image.MAX_IMAGE_PIXELS = {pixels} (None turns the check "
        "off)."
    )


# ------------------------------------------------------------------------------ bit depth
def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, integer and float greys scaled by their value range (see the
    module docstring), every other mode converted by PIL."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return Image.fromarray(grey_to_uint8(np.asarray(img))).convert("RGB")
    return img.convert("RGB")


def grey_to_uint8(values: np.ndarray) -> np.ndarray:
    """Integer values (16-bit, or 32-bit clipped to 16) by their high byte; float values from
    ``[min(0, lowest), max(1, highest)]`` to 0-255, rounded half up, NaN as 0."""
    if values.dtype.kind != "f":
        return (np.clip(values, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
    x = values.astype(np.float64)
    finite = x[np.isfinite(x)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(1.0, float(finite.max())) if finite.size else 1.0
    x = np.nan_to_num(x, nan=0.0, posinf=hi, neginf=lo)
    return np.floor((x - lo) / (hi - lo) * 255.0 + 0.5).astype(np.uint8)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A ``(3, H, W)`` uint8 tensor of ``img`` as :func:`to_rgb` makes it."""
    return torch.from_numpy(np.array(to_rgb(img))).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------ torchvision
def decode_tensor(data: torch.Tensor) -> torch.Tensor:
    """A ``(3, H, W)`` uint8 tensor decoded by torchvision from a file's bytes whose header
    :func:`check_pixels` has passed; 16-bit PNGs keep their high byte, as :func:`to_rgb` does.

    Raises:
        RuntimeError: a format or a file torchvision cannot decode (PIL then decides).
    """
    from torchvision.io import ImageReadMode, decode_image

    with quiet_torchvision():
        image = decode_image(data, mode=ImageReadMode.RGB)
    if image.ndim == 4:  # an animation: its first frame, as PIL gives
        image = image[0]
    if image.dtype == torch.uint16:
        return (image.to(torch.int32) >> 8).to(torch.uint8)
    if image.dtype != torch.uint8:
        raise RuntimeError(f"decoded as {image.dtype}, not uint8")
    return image


_TORCHVISION_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


@contextlib.contextmanager
def quiet_torchvision() -> Iterator[None]:
    """Silence torchvision's deprecation of its decoders (a ``DeprecationWarning`` at every
    call since 0.29) around one call, where that cannot disturb another thread.

    ``warnings.catch_warnings`` swaps the process-wide filter list and puts the old one back
    on exit, so two threads inside such blocks at once can undo each other's filters; it is
    used only while this is the process's one Python thread (a DataLoader worker, a script
    decoding in its main thread). Elsewhere (the device decoder's prefetch thread) nothing is
    changed: Python's default filters already hide a ``DeprecationWarning`` raised inside a
    library, and ``-W error`` is then the user's choice. Nothing is installed at import.
    """
    if sum(not t.name.startswith(WATCHER_PREFIX) for t in threading.enumerate()) > 1:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=_TORCHVISION_DEPRECATION, category=DeprecationWarning
        )
        yield


WATCHER_PREFIX = "hierzoo-parent-watch"
"""Name of the thread that ends a loader worker whose parent died (it never warns)."""
