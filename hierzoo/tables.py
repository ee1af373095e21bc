"""Numbers and tables as hierzoo prints and writes them: plain-text, Markdown and CSV tables, one
formatter each, and JSON without binary float noise."""

from __future__ import annotations

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
