"""``hierzoo demo``: the whole pipeline offline in well under a minute.

A tiny open_clip model with random weights (built here, no download), a small synthetic image
set in an ImageFolder layout over CUB-200 leaves, ``hierzoo eval`` (questions built from the
taxonomy) and ``hierzoo report``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEMO_LEAVES = (
    "Black-footed Albatross",
    "Laysan Albatross",
    "Common Raven",
    "Blue Jay",
    "Horned Lark",
    "Ruby-throated Hummingbird",
    "Belted Kingfisher",
    "Mallard",
)
CUB_ROOT = "/data/CUB_200_2011"
"""Where the hint supposes CUB-200-2011 was unpacked (CUB_200_2011.tgz unpacked into /data)."""
CUB_FIRST_IMAGE = "images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg"
"""The first image of the bundled CUB-200 question sets, relative to the unpacked folder."""
REAL_COMMAND = (
    f"hierzoo eval --model bioclip2 --questions cub200-similar --image-root {CUB_ROOT} "
    "--taxonomy cub200 --out runs/bioclip2-cub200"
)
REAL_HINT = (
    "With a real model and the CUB-200-2011 images (hierzoo downloads no data): unpack "
    f"CUB_200_2011.tgz into /data, so that {CUB_ROOT}/{CUB_FIRST_IMAGE} exists, then run\n"
    f"  {REAL_COMMAND}\n"
    "--image-root takes the unpacked CUB_200_2011 folder (or the folder that holds it): the "
    "question files record paths ending in CUB_200_2011/images/<class>/<file>.jpg, and each "
    "resolves to the longest tail of its path that exists under --image-root."
)


def make_images(folder: Path, per_leaf: int = 5, seed: int = 0) -> int:
    """Synthetic photos (colour fields and blobs), one sub-folder per leaf; returns the count."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    n = 0
    for leaf in DEMO_LEAVES:
        sub = folder / leaf
        sub.mkdir(parents=True, exist_ok=True)
        base = rng.integers(40, 215, size=3)
        for j in range(per_leaf):
            img = Image.new(
                "RGB", (160, 120), tuple(int(c) for c in base + rng.integers(-30, 30, size=3))
            )
            draw = ImageDraw.Draw(img)
            x, y = rng.integers(20, 100), rng.integers(10, 60)
            draw.ellipse(
                [x, y, x + 50, y + 40], fill=tuple(int(c) for c in rng.integers(0, 255, size=3))
            )
            img.save(sub / f"{j:02d}.jpg", quality=90)
            n += 1
    return n


def run_demo(out: str | Path = "hierzoo-demo", per_leaf: int = 5) -> dict:
    """Build the model and images under ``out``, evaluate, report; returns the run summary."""
    from hierzoo.models.tiny_clip import build_tiny_openclip
    from hierzoo.runner import EvalConfig, run_eval

    out = Path(out)
    model_dir = out / "tiny-openclip"
    if not (model_dir / "open_clip_config.json").exists():
        build_tiny_openclip(model_dir, seed=0)
    images = out / "images"
    if not images.exists():
        make_images(images, per_leaf=per_leaf)
    cfg = EvalConfig(
        model=str(model_dir),
        out=str(out / "run"),
        taxonomy="cub200",
        images=str(images),
        distractors="similar",
        device="cpu",
        model_kwargs={"cache_dir": out / "cache"},
    )
    return run_eval(cfg)
