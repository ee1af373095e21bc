"""Tables of scores (terminal, Markdown, CSV)."""

from __future__ import annotations

from typing import Any

COLUMNS = [
    ("hca", "HCA"),
    ("leaf_acc", "Leaf"),
    ("por", "POR"),
    ("strict_por", "S-POR"),
    ("tor", "TOR"),
    ("hf1", "hF1"),
    ("consistency", "Consist"),
]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return f"{v['value']:.2f} [{v['low']:.1f}, {v['high']:.1f}]"
    return f"{v:.2f}"


def format_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A plain-text table of score summaries (percentages), one row per (name, summary)."""
    cols = [(k, h) for k, h in COLUMNS if any(k in s for _, s in rows)]
    width = max(len(name) for name, _ in rows)
    cells = [[name] + [_fmt(s.get(k)) for k, _ in cols] + [str(s["n"])] for name, s in rows]
    header = ["results"] + [h for _, h in cols] + ["n"]
    widths = [max(len(c[i]) for c in cells + [header]) for i in range(len(header))]
    widths[0] = max(width, len(header[0]))
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))
        )
    ]
    for c in cells:
        lines.append(
            "  ".join(
                x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths))
            )
        )
    for name, s in rows:
        levels = "  ".join(
            f"{lev}={_fmt(acc)}" for lev, acc in zip(s.get("levels", []), s["level_acc"])
        )
        lines.append(f"per level ({name}): {levels}")
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table of one ``summary.json``."""
    if not summary.get("metrics"):
        return f"n=0, errors={summary.get('n_errors')}: nothing to score"
    name = summary.get("model", "model")
    table = format_table([(name, {**summary["metrics"], "n": summary["n"], "levels": summary.get("levels", [])})])
    prov = summary.get("provenance", {})
    rate = prov.get("questions_per_second")
    extra = f"errors: {summary['n_errors']}"
    if rate:
        extra += f"; {rate:.1f} questions/s, {prov.get('images_per_second', 0):.1f} images/s on {prov.get('device')}"
    return f"{table}\n{extra}"
