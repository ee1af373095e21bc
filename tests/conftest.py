from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from hierzoo.taxonomy import Taxonomy  # noqa: E402


def random_paths(
    rng: np.random.Generator,
    n_leaves: int = 40,
    min_depth: int = 2,
    max_depth: int = 6,
    branching: int = 3,
) -> dict[str, list[str]]:
    """Leaf -> path of a random tree whose leaves lie at depths min_depth..max_depth.

    Node names repeat across parents and levels (as in the real data), so names are not ids.
    """
    paths: dict[str, list[str]] = {}
    while len(paths) < n_leaves:
        depth = int(rng.integers(min_depth, max_depth + 1))
        path = [f"n{int(rng.integers(branching))}" for _ in range(depth - 1)]
        path = [f"{p}_{i}" if i == 0 else p for i, p in enumerate(path)]
        leaf = f"leaf{len(paths)}"
        path.append(leaf)
        # a leaf must not sit where another path continues: make inner names distinct from leaves
        paths[leaf] = path
    # drop paths that run through a node that is also a leaf (cannot happen: leaf names unique)
    return paths


def random_taxonomy(seed: int, **kw) -> Taxonomy:
    return Taxonomy.from_paths(
        random_paths(np.random.default_rng(seed), **kw), name=f"random{seed}"
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
