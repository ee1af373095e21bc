"""Image inputs: paths, PIL images or preprocessed tensors, loaded in DataLoader workers.

A bad image (missing, empty, corrupt) never stops a batch: its slot carries an error message
naming the file and the fix, and the other images go on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

ImageInput = str | Path | Image.Image | torch.Tensor


class ImageError(OSError):
    """An image that cannot be read."""


def load_image(item: str | Path | Image.Image) -> Image.Image:
    """An RGB PIL image from a path or a PIL image.

    Raises:
        ImageError: a missing, empty or undecodable file, naming it.
    """
    if isinstance(item, Image.Image):
        return item.convert("RGB") if item.mode != "RGB" else item
    path = Path(item)
    if not path.is_file():
        raise ImageError(f"No image file at {str(path)!r}; check the path or pass --image-root.")
    if path.stat().st_size == 0:
        raise ImageError(f"Image file {str(path)!r} is empty (0 bytes); re-copy or remove it.")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except Exception as e:  # PIL raises several types for corrupt data
        raise ImageError(f"Cannot decode image {str(path)!r} ({type(e).__name__}: {e}); the file is corrupt or not an image.") from e


def as_list(images: ImageInput | Sequence[ImageInput]) -> tuple[list[ImageInput], bool]:
    """``(items, single)``: a list of images, and whether one image (not a list) was given.

    A 3-D tensor is one preprocessed image; a 4-D tensor is a batch of them.
    """
    if isinstance(images, (str, Path, Image.Image)):
        return [images], True
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return [images], True
        if images.ndim == 4:
            return list(images), False
        raise ValueError(f"Expected a (C, H, W) or (N, C, H, W) image tensor, but got shape {tuple(images.shape)}.")
    items = list(images)
    if not items:
        raise ValueError("Expected at least one image, but got an empty sequence.")
    return items, False


class ImageDataset(torch.utils.data.Dataset):
    """Items decoded and transformed on access; failures come back as messages, not exceptions.

    ``transform`` maps a PIL image to what the model eats (a tensor, or the PIL image itself
    when ``None``). Tensors are taken as already preprocessed.
    """

    def __init__(self, items: Sequence[ImageInput | None], transform: Callable[[Image.Image], Any] | None = None):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        item = self.items[index]
        if item is None:
            return index, None, "the image path did not resolve to a file (check --image-root)"
        if isinstance(item, torch.Tensor):
            return index, item, None
        try:
            img = load_image(item)
            return index, (self.transform(img) if self.transform is not None else img), None
        except Exception as e:
            return index, None, str(e)


@dataclass
class ImageBatch:
    """A batch of decoded images: their positions in the input, the stacked tensor (or a list
    of PIL images), and the positions and messages of the images that failed."""

    indices: list[int]
    data: Any
    failed: dict[int, str]


def _collate(rows: list[tuple[int, Any, str | None]]) -> ImageBatch:
    ok = [(i, x) for i, x, err in rows if err is None]
    failed = {i: err for i, _, err in rows if err is not None}
    data: Any = [x for _, x in ok]
    if data and all(isinstance(x, torch.Tensor) for x in data):
        shapes = {tuple(x.shape) for x in data}
        if len(shapes) == 1:
            data = torch.stack(data)
    return ImageBatch([i for i, _ in ok], data, failed)


def default_workers(n_items: int) -> int:
    """DataLoader workers: none for a handful of images, else up to 8, leaving one core."""
    if n_items < 64:
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def iterate_images(
    items: Sequence[ImageInput | None],
    transform: Callable[[Image.Image], Any] | None,
    batch_size: int,
    *,
    num_workers: int | None = None,
    pin_memory: bool = False,
) -> Iterator[ImageBatch]:
    """Batches of decoded, transformed images, in input order, decoded in worker processes."""
    workers = default_workers(len(items)) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        ImageDataset(items, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    yield from loader
