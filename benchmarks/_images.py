"""Synthetic JPEG photos of realistic size for the benchmarks (smooth colour fields plus noise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_jpegs(folder: str | Path, n: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[str]:
    """Write ``n`` JPEGs (quality 90) of ``size`` into ``folder`` (reused when present)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        p = folder / f"img{i:05d}.jpg"
        paths.append(str(p))
        if p.exists():
            continue
        a, b, c = rng.uniform(0.005, 0.05, size=3)
        base = np.stack([np.sin(xx * a + i), np.cos(yy * b + 2 * i), np.sin((xx + yy) * c)], axis=-1)
        img = (127 + 100 * base + rng.normal(0, 12, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(p, quality=90)
    return paths
