"""Result files in the paper's format, and scoring them.

Each sample is a JSON object with ``ground_truth_level{k}`` and ``predicted_level{k}`` for
``k = 1, 2, ...`` (plus ``image``, ``label``, letters and choices, which scoring ignores).
A file is a JSON list of such objects (the paper's scripts) or JSON Lines (hierzoo's runs).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hierzoo.metrics.accumulator import summarize
from hierzoo.metrics.names import encode_ids
from hierzoo.metrics.reading import (
    ResultColumns,
    columns_from_rows,
    read_rows,
)

if TYPE_CHECKING:
    from hierzoo.taxonomy import Taxonomy

SCORE_KEYS = ("hca", "leaf_acc", "por", "strict_por", "tor")


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Read a result file: a JSON list, or JSON Lines (a torn last line is skipped with a
    warning), every row as a dict. To score a large file, :func:`read_result_columns` reads only
    the scored fields, streamed."""
    return read_rows(path)


_LEVEL_KEY = re.compile(r"ground_truth_level([1-9][0-9]*)\Z")


def _row_depth(row: dict[str, Any]) -> int:
    """The last level ``k`` whose ``ground_truth_levelk`` is present and not ``None``."""
    depth = 0
    for key in row:
        m = _LEVEL_KEY.match(key)
        if m and row[key] is not None:
            depth = max(depth, int(m.group(1)))
    return depth


def results_to_paths(
    rows: list[dict[str, Any]],
) -> tuple[list[list[str | None]], list[list[str | None]], int]:
    """Ground-truth and predicted name paths of the samples that have predictions.

    Returns ``(truth, pred, n_errors)``; samples with an ``error`` field are counted, not scored.
    A path runs from level 1 to the last level whose ground truth is given; a level above it
    whose ground truth is missing or ``None`` stays in the path as ``None`` (wrong at that
    level, never a shorter path). A missing or ``None`` prediction stays ``None`` and counts as
    wrong.
    """
    truth, pred, n_errors = [], [], 0
    for row in rows:
        if row.get("error"):
            n_errors += 1
            continue
        t_path, p_path = [], []
        for k in range(1, _row_depth(row) + 1):
            gt = row.get(f"ground_truth_level{k}")
            t_path.append(str(gt) if gt is not None else None)
            guess = row.get(f"predicted_level{k}")
            p_path.append(guess if isinstance(guess, str) else None)
        if t_path:
            truth.append(t_path)
            pred.append(p_path)
    return truth, pred, n_errors


def score_results(
    rows: list[dict[str, Any]] | ResultColumns,
    *,
    keep_root: bool = False,
    taxonomy: Taxonomy | None = None,
    ci: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score result rows (or the :class:`ResultColumns` of a file) as the paper does; percent.

    The first level is left out when its ground truth is the same for every sample (the single
    root of iNat, ImageNet and Food), unless ``keep_root``; with a taxonomy, when the taxonomy
    has a single top-level node. A path runs to its last given ground truth; a level missing
    above it is wrong there (with a taxonomy, an error naming the row). Returns ``hca, leaf_acc,
    por, strict_por, tor, hf1`` (and ``consistency`` with a taxonomy) in percent, ``level_acc``
    (percent per kept level), ``n``, ``n_errors``, ``first_level`` (1-based level of the first
    kept column) and ``levels``.
    """
    cols = rows if isinstance(rows, ResultColumns) else columns_from_rows(rows)
    truth, values = cols.truth_names()
    present = truth >= 0
    depth = np.zeros(cols.n, dtype=np.int64)
    for k in range(truth.shape[0]):
        depth[present[k]] = k + 1
    if not depth.any():
        raise ValueError(
            "No scorable samples: every row lacks ground_truth_level1 or has an error."
        )
    if taxonomy is not None:
        drop = not keep_root and taxonomy.level_sizes[0] == 1
    else:
        drop = not keep_root and _one_name(truth[0, depth > 0], values)
    start = 1 if drop else 0
    keep = np.flatnonzero(depth > start)
    truth, pred = truth[start:, keep], cols.pred[start:, keep]
    if taxonomy is not None:
        _check_no_missing_level(truth, depth[keep] - start, keep, cols, start)
    p, t, m = encode_ids(
        pred,
        truth,
        values,
        taxonomy=taxonomy,
        first_level=start,
        describe=lambda i: cols.describe(int(keep[i])),
    )
    summary = summarize(
        p, t, m, taxonomy=taxonomy, first_level=start, ci=ci, n_boot=n_boot, seed=seed
    )
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if key in ("n", "first_error"):
            out[key] = value
        elif key == "level_acc":
            out[key] = [_percent(v) for v in value]
        else:
            out[key] = _percent(value)
    out["n_errors"] = cols.n_errors
    out["first_level"] = start + 1
    width = len(out["level_acc"])
    if taxonomy is not None and taxonomy.ranks:
        out["levels"] = list(taxonomy.ranks[start : start + width])
    else:
        out["levels"] = [f"level{k}" for k in range(start + 1, start + 1 + width)]
    return out


def _one_name(first: np.ndarray, values: list[Any]) -> bool:
    """Whether every id names the same thing, compared lower-cased (none missing)."""
    if not len(first) or (first < 0).any():
        return False
    ids = np.unique(first)
    return len({values[i].lower() for i in ids.tolist()}) == 1


def _check_no_missing_level(
    truth: np.ndarray, depth: np.ndarray, keep: np.ndarray, cols: ResultColumns, start: int
) -> None:
    """With a taxonomy every level of a path exists: a gap is an error naming the row."""
    gap = (truth < 0) & (np.arange(truth.shape[0])[:, None] < depth)
    if gap.any():
        i, k = np.argwhere(gap.T)[0].tolist()
        where = cols.describe(int(keep[i]))
        raise ValueError(
            f"{where[:1].upper()}{where[1:]} has no ground_truth_level{start + k + 1} but has a "
            "level below it; every path of a taxonomy has every level: fix the row, or score "
            "without a taxonomy to count the missing level as wrong."
        )


def _percent(v: Any) -> Any:
    if isinstance(v, tuple):
        return {"value": 100 * v[0], "low": 100 * v[1], "high": 100 * v[2]}
    return 100 * v
