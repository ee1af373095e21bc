"""The matplotlib helpers every hierzoo plot uses (``hierzoo report``, ``hierzoo probe``).

matplotlib is imported by the functions, never at import: tables work without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">"]


def figure(**kw: Any) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot, so no global backend change).

    Raises:
        ImportError: matplotlib is missing, with the ``pip install`` line that adds it.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("hierzoo's plots need matplotlib: pip install 'hierzoo[plot]'") from None
    fig = Figure(layout="constrained", **kw)
    FigureCanvasAgg(fig)
    return fig


def colours(names: list[str]) -> dict[str, Any]:
    """One colour per distinct name, in order (tab10, or tab20 beyond ten names)."""
    from matplotlib import colormaps

    uniq = list(dict.fromkeys(names))
    cmap = colormaps["tab10" if len(uniq) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(uniq)}


def save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at 150 dpi, trimmed to its content."""
    path = Path(path)
    fig.savefig(path, dpi=150, bbox_inches="tight", pad_inches=0.1)
    return path


def level_ticks(ax: Any, labels: list[str], rotate: bool) -> None:
    """Taxonomy level names under the x axis, slanted when ``rotate``."""
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=30 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor" if rotate else "default",
    )


def place_labels(fig: Any, ax: Any, points: list[dict[str, Any]], avoid: list[Any]) -> None:
    """Label each point where its text covers the least of the other labels, markers, error bars,
    the ``avoid`` artists and the frame edge; a label set away from its point gets a leader line.
    Points with the most neighbours choose first."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    frame = ax.get_window_extent(renderer)
    half = 3.5 * fig.dpi / 72 + 1
    obstacles = []
    for a in avoid:  # rotated text rising to the right: small boxes along its diagonal
        b, h = a.get_window_extent(renderer), a.get_fontsize() * fig.dpi / 72
        for t in np.linspace(0, 1, 24):
            cx, cy = b.x0 + t * b.width, b.y0 + t * b.height
            obstacles.append(((cx - h / 2, cy - h / 2, cx + h / 2, cy + h / 2), 3.0))
    for p in points:
        px, py = p["px"] = to_px((p["x"], p["y"]))
        x0, x1 = to_px((p["xlo"], p["y"]))[0], to_px((p["xhi"], p["y"]))[0]
        y0, y1 = to_px((p["x"], p["ylo"]))[1], to_px((p["x"], p["yhi"]))[1]
        obstacles.append(((px - half, py - half, px + half, py + half), 4.0))
        obstacles.append(((x0, py - 1.5, x1, py + 1.5), 8.0))
        obstacles.append(((px - 1.5, y0, px + 1.5, y1), 8.0))
    angles = [math.radians(a) for a in (45, -45, 135, -135, 0, 180, 90, -90, 22, -22, 158, -158)]
    candidates = [(d * math.cos(a), d * math.sin(a)) for d in (5, 10, 17, 26, 38) for a in angles]

    def overlap(a: tuple, b: tuple) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    def crowding(p: dict) -> int:
        return sum(math.dist(p["px"], q["px"]) < 60 for q in points)

    for p in sorted(points, key=crowding, reverse=True):
        best = None
        for ox, oy in candidates:
            ha = "left" if ox > 1 else "right" if ox < -1 else "center"
            va = "bottom" if oy > 1 else "top" if oy < -1 else "center"
            ann = ax.annotate(
                p["text"],
                (p["x"], p["y"]),
                xytext=(ox, oy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=7.5,
            )
            bb = ann.get_window_extent(renderer)
            ann.remove()
            box = (bb.x0 - 2, bb.y0 - 1, bb.x1 + 2, bb.y1 + 1)
            outside = (
                max(0, frame.x0 - box[0])
                + max(0, box[2] - frame.x1)
                + max(0, frame.y0 - box[1])
                + max(0, box[3] - frame.y1)
            )
            cost = (
                sum(w * overlap(box, o) for o, w in obstacles)
                + 1000 * outside
                + 6 * math.hypot(ox, oy)
            )
            if best is None or cost < best[0]:
                best = (cost, ox, oy, ha, va, box)
        _, ox, oy, ha, va, box = best
        leader = {"arrowstyle": "-", "color": p["colour"], "lw": 0.6, "shrinkA": 0, "shrinkB": 5}
        ax.annotate(
            p["text"],
            (p["x"], p["y"]),
            xytext=(ox, oy),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=7.5,
            color=p["colour"],
            arrowprops=leader if math.hypot(ox, oy) > 12 else None,
        )
        obstacles.append((box, 5.0))
