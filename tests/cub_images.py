"""Random images where the paper's CUB-200 question files say the images are: the first ``n``
entries of ``cub200-similar`` under ``root/data/CUB_200_2011/...``, for runs with
``--image-root root/data``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from hierzoo.tasks import read_questions


def write_cub_images(
    root: Path,
    n: int,
    height: Callable[[int], int] = lambda i: 48,
    rng: np.random.Generator | None = None,
) -> Path:
    """Write ``n`` random RGB images (``height(i)`` x 64 px, drawn from ``rng``, default a
    generator seeded 0) and return the folder to pass as ``--image-root``."""
    rng = np.random.default_rng(0) if rng is None else rng
    for i, q in enumerate(read_questions("cub200-similar")[:n]):
        p = root / "data" / "CUB_200_2011" / q.image.split("CUB_200_2011/")[1]
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (height(i), 64, 3), dtype=np.uint8)).save(p)
    return root / "data"
