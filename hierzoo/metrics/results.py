"""Result files in the paper's format, and scoring them.

Each sample is a JSON object with ``ground_truth_level{k}`` and ``predicted_level{k}`` for
``k = 1, 2, ...`` (plus ``image``, ``label``, letters and choices, which scoring ignores).
A file is a JSON list of such objects (the paper's scripts) or JSON Lines (hierzoo's runs).
"""

from __future__ import annotations

import math
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hierzoo.metrics.functional import summarize
from hierzoo.metrics.names import encode_ids
from hierzoo.metrics.reading import (
    LEVEL_KEY,
    ResultColumns,
    columns_from_rows,
    read_result_columns,
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


def _row_depth(row: dict[str, Any]) -> int:
    """The last level ``k`` whose ``ground_truth_levelk`` is present and not ``None``."""
    depth = 0
    for key in row:
        m = LEVEL_KEY.match(key)
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
    level, never a shorter path). Numbers are names by their text (``1`` matches ``1`` and
    ``"1"``). A missing or ``None`` prediction, or one that is neither a string nor a number,
    is ``None`` and counts as wrong.
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
            if isinstance(guess, (int, float)) and not isinstance(guess, bool):
                guess = str(guess)
            p_path.append(guess if isinstance(guess, str) else None)
        if t_path:
            truth.append(t_path)
            pred.append(p_path)
    return truth, pred, n_errors


def score_results(
    rows: list[dict[str, Any]] | ResultColumns | str | PathLike[str],
    *,
    keep_root: bool = False,
    taxonomy: Taxonomy | str | None = None,
    ci: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score result rows (a list of dicts, the :class:`ResultColumns` of a file, or a result
    file's path) as the paper does; every value in percent (the functions of
    :mod:`hierzoo.metrics.functional`, ``summarize`` and ``HierarchicalMetrics.compute`` give
    fractions). ``taxonomy`` is a :class:`~hierzoo.taxonomy.Taxonomy`, a bundled name or a
    taxonomy file.

    The root rule: level 1 is left out when it carries no information, as in the paper
    (``keep_root`` keeps it). With a taxonomy that is when the taxonomy has a single top-level
    node, whatever the rows hold; without one, when every scored row has the same level-1 ground
    truth, which on a subset (all albatrosses) also drops a real level: give the taxonomy. The
    output says which level was left out, why and how to keep it.

    A path runs to its last given ground truth; a level missing above it is wrong there (with a
    taxonomy, whose paths have every level, an error naming the row).

    Returns:
        ``hca, leaf_acc, por, strict_por, tor, hf1`` (and ``consistency`` with a taxonomy) in
        percent (with ``ci``, ``{"value", "low", "high"}``); ``level_acc``, percent per scored
        level; ``levels``, the scored levels' names (ranks, or ``levelK`` as in the result
        files); ``first_scored_level``, the ``K`` of ``ground_truth_levelK`` of the first scored
        level (counting from 1, as the result files do); ``left_out``, one entry per level not
        scored (``level``, ``name``, ``reason``, ``keep``: how to keep it); ``n`` scored rows;
        ``n_errors``, rows with an ``error`` field; ``first_error``, rows per first wrong scored
        level (the last entry counts fully right paths).

    Raises:
        ValueError: rows that cannot be scored (no ground truth, no ``predicted_levelK``
            field, ``ground_truth_level0``, nothing left after the root rule, a ground truth
            that is not a node of ``taxonomy``), or bootstrap settings out of range.
        TypeError: ``rows`` that are not a list of rows, their columns or a path.
    """
    if isinstance(rows, (str, PathLike)):
        rows = read_result_columns(rows)
    elif isinstance(rows, dict):
        raise TypeError("Expected a list of result rows, but got one row (a dict); pass [row].")
    elif not isinstance(rows, (list, tuple, ResultColumns)):
        raise TypeError(
            f"Expected a list of result rows (dicts), their ResultColumns or a file path, but "
            f"got {type(rows).__name__}."
        )
    if isinstance(taxonomy, (str, PathLike)):
        from hierzoo.taxonomy import load_taxonomy

        taxonomy = load_taxonomy(taxonomy)
    cols = rows if isinstance(rows, ResultColumns) else columns_from_rows(list(rows))
    src = "the rows" if cols.source == "rows" else cols.source
    if cols.level0:
        raise ValueError(
            f"{src} has ground_truth_level0, but result files count levels from 1 "
            "(ground_truth_level1 is the top level) and level 0 would not be scored: number "
            "the fields from 1."
        )
    truth, pred_ids, values = cols.names()
    present = truth >= 0
    depth = np.zeros(cols.n, dtype=np.int64)
    for k in range(truth.shape[0]):
        depth[present[k]] = k + 1
    if not depth.any():
        raise ValueError(
            f"No scorable samples in {src}: every row lacks ground_truth_level1 or has an error."
        )
    truth_root = _one_name(truth[0, depth > 0], values) if taxonomy is None else None
    if taxonomy is not None:
        drop = not keep_root and taxonomy.level_sizes[0] == 1
    else:
        drop = not keep_root and truth_root is not None
    start = 1 if drop else 0
    keep = np.flatnonzero(depth > start)
    if not len(keep):
        why = _root_left_out(taxonomy, "level1", truth_root)
        raise ValueError(
            f"Nothing to score in {src}: its rows have level 1 only, and level 1 is left out "
            f"({why['reason']}); keep it with {why['keep']}."
        )
    truth, pred = truth[start:, keep], pred_ids[start:, keep]
    if taxonomy is not None:
        _check_no_missing_level(truth, depth[keep] - start, keep, cols, start)
    if not cols.predicted_fields:
        raise ValueError(
            f"No row of {src} has a predicted_levelK field: predictions are read from "
            "predicted_level1, predicted_level2, ... (next to ground_truth_level1, ...); "
            "rename the fields that hold them."
        )
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
    width = len(out["level_acc"])
    names = _level_names(taxonomy, start + width)
    out["levels"] = names[start:]
    out["first_scored_level"] = start + 1
    out["left_out"] = []
    if drop:
        out["left_out"].append(_root_left_out(taxonomy, names[0], truth_root))
    return out


def _level_names(taxonomy: Taxonomy | None, width: int) -> list[str]:
    if taxonomy is not None and taxonomy.ranks and len(taxonomy.ranks) >= width:
        return list(taxonomy.ranks[:width])
    return [f"level{k}" for k in range(1, width + 1)]


def _root_left_out(taxonomy: Taxonomy | None, name: str, root: str | None) -> dict[str, Any]:
    if taxonomy is not None:
        top = taxonomy.names[int(taxonomy.level_nodes(0)[0])]
        reason = (
            f"taxonomy {taxonomy.name!r} has a single top-level node ({top!r}), which carries "
            "no information"
        )
        keep = "--keep-root (keep_root=True)"
    else:
        reason = (
            f"every scored row has the same ground truth there ({root!r}), taken for a single "
            "root; on a subset of a taxonomy that is a real level"
        )
        keep = (
            "--keep-root (keep_root=True), or --taxonomy NAME so that the rule follows the taxonomy"
        )
    return {"level": 1, "name": name, "reason": reason, "keep": keep}


def format_left_out(summary: dict[str, Any]) -> list[str]:
    """One line per level :func:`score_results` left out: which, why, how to keep it."""
    return [
        f"left out {e['name']} (level {e['level']}): {e['reason']}; keep it with {e['keep']}"
        for e in summary.get("left_out", [])
    ]


def _one_name(first: np.ndarray, values: list[Any]) -> str | None:
    """The name every id gives, compared lower-cased; ``None`` when they differ or one is
    missing."""
    if not len(first) or (first < 0).any():
        return None
    ids = np.flatnonzero(np.bincount(first))
    names = {values[i].lower() for i in ids.tolist()}
    return values[int(ids[0])] if len(names) == 1 else None


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


def round_floats(obj: Any, digits: int = 6) -> Any:
    """``obj`` with every float rounded to ``digits`` decimals (``55.60000000000001`` ->
    ``55.6``) and NaN or infinity as ``None``, for strict, readable JSON."""
    if isinstance(obj, float):
        return round(obj, digits) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    return obj


def _percent(v: Any) -> Any:
    if isinstance(v, tuple):
        return {"value": 100 * v[0], "low": 100 * v[1], "high": 100 * v[2]}
    return 100 * v
