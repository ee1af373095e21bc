"""Result files in the paper's format, and scoring them.

Each sample is a JSON object with ``ground_truth_level{k}`` and ``predicted_level{k}`` for
``k = 1, 2, ...`` (plus ``image``, ``label``, letters and choices, which scoring ignores).
A file is a JSON list of such objects (the paper's scripts) or JSON Lines (hierzoo's runs).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hierzoo.metrics.accumulator import summarize

if TYPE_CHECKING:
    from hierzoo.taxonomy import Taxonomy

SCORE_KEYS = ("hca", "leaf_acc", "por", "strict_por", "tor")


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Read a result file: a JSON list, or JSON Lines (a torn last line is skipped with a
    warning)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No result file at {str(path)!r}.")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped:
        return []
    if stripped[0] == "[":
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} starts like a JSON list but does not parse: {e}.") from e
    else:
        rows = []
        lines = text.splitlines()
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                if i == len(lines) and not text.endswith("\n"):
                    warnings.warn(
                        f"{path}:{i}: skipped a torn last line (an interrupted write).",
                        stacklevel=2,
                    )
                    continue
                raise ValueError(f"{path}:{i} is not a JSON object: {e}.") from e
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ValueError(
            f"{path}: entry {bad} is {rows[bad]!r}; expected one JSON object per sample."
        )
    return rows


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
    truth, pred, _, n_errors = _paths_and_rows(rows)
    return truth, pred, n_errors


def _paths_and_rows(
    rows: list[dict[str, Any]],
) -> tuple[list[list[str | None]], list[list[str | None]], list[int], int]:
    truth, pred, where, n_errors = [], [], [], 0
    for i, row in enumerate(rows):
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
            where.append(i)
    return truth, pred, where, n_errors


def score_results(
    rows: list[dict[str, Any]],
    *,
    keep_root: bool = False,
    taxonomy: Taxonomy | None = None,
    ci: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score result rows as the paper does; percentages.

    The first level is left out when its ground truth is the same for every sample (the single
    root of iNat, ImageNet and Food), unless ``keep_root``; with a taxonomy, when the taxonomy
    has a single top-level node. Returns ``hca, leaf_acc, por, strict_por, tor, hf1`` (and
    ``consistency`` with a taxonomy) in percent, ``level_acc`` (percent per kept level), ``n``,
    ``n_errors``, ``first_level`` (1-based level of the first kept column) and ``levels``.
    """
    truth, pred, where, n_errors = _paths_and_rows(rows)
    if not truth:
        raise ValueError(
            "No scorable samples: every row lacks ground_truth_level1 or has an error."
        )
    if taxonomy is not None:
        drop = not keep_root and taxonomy.level_sizes[0] == 1
    else:
        drop = not keep_root and len({t[0].lower() if t[0] else None for t in truth}) == 1
    start = 1 if drop else 0
    if taxonomy is not None:
        _check_no_missing_level(truth, where, rows, start, taxonomy)
    kept = [(t[start:], p[start:]) for t, p in zip(truth, pred) if len(t) > start]
    truth, pred = [t for t, _ in kept], [p for _, p in kept]
    summary = summarize(
        pred, truth, taxonomy=taxonomy, first_level=start, ci=ci, n_boot=n_boot, seed=seed
    )
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if key in ("n", "first_error"):
            out[key] = value
        elif key == "level_acc":
            out[key] = [_percent(v) for v in value]
        else:
            out[key] = _percent(value)
    out["n_errors"] = n_errors
    out["first_level"] = start + 1
    width = len(out["level_acc"])
    if taxonomy is not None and taxonomy.ranks:
        out["levels"] = list(taxonomy.ranks[start : start + width])
    else:
        out["levels"] = [f"level{k}" for k in range(start + 1, start + 1 + width)]
    return out


def _check_no_missing_level(
    truth: list[list[str | None]],
    where: list[int],
    rows: list[dict[str, Any]],
    start: int,
    taxonomy: Taxonomy,
) -> None:
    for path, i in zip(truth, where):
        if None in path[start:]:
            k = path.index(None, start) + 1
            image = rows[i].get("image")
            named = f" ({image})" if image else ""
            raise ValueError(
                f"Row {i}{named} has no ground_truth_level{k} but has a level below it; a path "
                f"of taxonomy {taxonomy.name!r} has every level: fix the row, or score without "
                "--taxonomy to count the missing level as wrong."
            )


def _percent(v: Any) -> Any:
    if isinstance(v, tuple):
        return {"value": 100 * v[0], "low": 100 * v[1], "high": 100 * v[2]}
    return 100 * v
