"""Numbers and tables as hierzoo prints and writes them: plain-text, Markdown and CSV tables, one
formatter each, and JSON without binary float noise."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

DIGITS = 12


def tidy(obj: Any, digits: int = DIGITS) -> Any:
    """``obj`` with every float rounded to ``digits`` significant digits, so that JSON shows
    ``55.6`` rather than ``55.60000000000001`` (the noise of binary arithmetic, not a value).
    Dicts, lists and tuples are walked; other values are returned as they are."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if obj == obj and abs(obj) != float("inf") else obj
    if isinstance(obj, dict):
        return {k: tidy(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [tidy(v, digits) for v in obj]
    return obj


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, left: int = 1) -> list[str]:
    """A plain-text table, one string per line: columns two spaces apart, each as wide as its
    widest cell; the first ``left`` columns aligned left, the others right (numbers)."""
    cells = [list(header), *map(list, rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return [
        "  ".join(x.ljust(w) if i < left else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths)))
        for c in cells
    ]


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()
) -> list[str]:
    """A Markdown (GitHub) table, one string per line; columns in ``right`` aligned right."""
    right = set(right)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append(
        "| " + " | ".join("---:" if i in right else "---" for i in range(len(header))) + " |"
    )
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path, digits: int = 4) -> Path:
    """``rows`` as CSV: every key of any row a column (first-seen order), empty where a row has
    none or ``None``, floats rounded to ``digits`` decimals."""
    path = Path(path)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: round(v, digits) if isinstance(v, float) else v for k, v in r.items()})
    return path
