"""The plots of ``hierzoo report`` (matplotlib, the ``plot`` extra), and the display names of
runs that the tables and the plots share."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hierzoo import plots


def _label(run: dict[str, Any]) -> str:
    if run.get("model_label"):
        return str(run["model_label"])
    model = str(run["model"])
    return Path(model).name if ("/" in model and not model.startswith("hf-hub:")) else model


def _names(runs: list[dict[str, Any]]) -> list[str]:
    """A display name per run: the model label, plus the task and mode where they are not the
    defaults (questions, image), plus the run directory where two runs would read the same."""
    names = []
    for r in runs:
        defaults = (("task", "questions"), ("mode", "image"), ("answer", "logits"))
        defaults += (("protocol", "paper"), ("parse", "paper"))
        extra = [str(r.get(k)) for k, d in defaults if r.get(k, d) != d]
        names.append(f"{_label(r)} ({', '.join(extra)})" if extra else _label(r))
    keys = [(n, r["taxonomy"]) for n, r in zip(names, runs)]
    return [
        f"{n} [{Path(r['run_dir']).name}]" if keys.count(k) > 1 else n
        for n, k, r in zip(names, keys, runs)
    ]


def _merge_levels(lists: list[list[str]]) -> list[str]:
    """One order of level names across taxonomies, keeping each list's own order."""
    out: list[str] = []
    for names in lists:
        for i, name in enumerate(names):
            if name in out:
                continue
            if i and names[i - 1] in out:
                out.insert(out.index(names[i - 1]) + 1, name)
            else:
                after = next((out.index(n) for n in names[i + 1 :] if n in out), len(out))
                out.insert(after, name)
    return out


def _by_taxonomy(runs: list[dict[str, Any]], names: list[str]) -> dict[str, list[tuple[str, dict]]]:
    groups: dict[str, list[tuple[str, dict]]] = {}
    for n, r in zip(names, runs):
        groups.setdefault(r["taxonomy"], []).append((n, r))
    return groups


def plot_hca_vs_leaf(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Leaf accuracy (x) against HCA (y) with 95% intervals; colour per model, marker per
    taxonomy. HCA is at most leaf accuracy: the dashed line y = x bounds it, and the dotted
    lines mark where HCA keeps 3/4 and 1/2 of the leaf accuracy."""
    fig = plots.figure(figsize=(7.5, 5.6))
    from matplotlib.lines import Line2D

    scored = [r for r in runs if r["metrics"]]
    names = _names(scored)
    colours = plots.colours(names)
    taxa = list(dict.fromkeys(r["taxonomy"] for r in scored))
    markers = {t: plots.MARKERS[i % len(plots.MARKERS)] for i, t in enumerate(taxa)}

    ax = fig.add_subplot()
    ends = [
        r["metrics"][k][b] for r in scored for k in ("hca", "leaf_acc") for b in ("low", "high")
    ]
    lo = max(0.0, 10 * ((min(ends) - 4) // 10))
    hi = min(100.0, 10 * -((-max(ends) - 4) // 10))
    diag = [lo, hi]
    ax.fill_between(diag, diag, [hi, hi], color="0.94", lw=0, zorder=0)
    ax.plot(diag, diag, color="0.4", ls="--", lw=1, zorder=1)
    mid = lo + 0.5 * (hi - lo)
    notes = [
        ax.annotate(
            "HCA = leaf accuracy: the upper bound (above: impossible)",
            (mid, mid),
            xytext=(-5, 5),
            textcoords="offset points",
            rotation=45,
            rotation_mode="anchor",
            ha="center",
            va="bottom",
            color="0.4",
            fontsize=8,
        )
    ]
    for ratio in (0.75, 0.5):
        x0 = max(lo + 0.3 * (hi - lo), lo / ratio + 0.06 * (hi - lo))
        if x0 < hi:
            ax.plot(diag, [ratio * v for v in diag], color="0.6", ls=":", lw=0.9, zorder=1)
            notes.append(
                ax.annotate(
                    f"HCA = {ratio:g} × leaf",
                    (x0, ratio * x0),
                    xytext=(0, 2),
                    textcoords="offset points",
                    rotation=math.degrees(math.atan(ratio)),
                    rotation_mode="anchor",
                    ha="left",
                    va="bottom",
                    color="0.5",
                    fontsize=7,
                )
            )
    points = []
    for n, r in zip(names, scored):
        m = r["metrics"]
        leaf, hca = m["leaf_acc"], m["hca"]
        ax.errorbar(
            leaf["value"],
            hca["value"],
            xerr=[[leaf["value"] - leaf["low"]], [leaf["high"] - leaf["value"]]],
            yerr=[[hca["value"] - hca["low"]], [hca["high"] - hca["value"]]],
            fmt=markers[r["taxonomy"]],
            color=colours[n],
            ms=7,
            mec="white",
            mew=0.6,
            elinewidth=1,
            capsize=2,
            zorder=3,
            clip_on=False,
        )
        points.append(
            {
                "x": leaf["value"],
                "y": hca["value"],
                "xlo": leaf["low"],
                "xhi": leaf["high"],
                "ylo": hca["low"],
                "yhi": hca["high"],
                "text": n,
                "colour": colours[n],
            }
        )
    ax.set(xlim=diag, ylim=diag, aspect="equal")
    ax.set_xlabel("leaf accuracy (%)")
    ax.set_ylabel("HCA: every level right (%)")
    ax.set_title("HCA against leaf accuracy (bars: 95% intervals)")
    ax.grid(True, color="0.9", lw=0.6)
    ax.set_axisbelow(True)

    blank = Line2D([], [], ls="", marker="")
    handles = [blank] + [Line2D([], [], color=c, marker="o", ls="", ms=7) for c in colours.values()]
    handles += [blank, blank] + [
        Line2D([], [], color="0.3", marker=markers[t], ls="", ms=7) for t in taxa
    ]
    labels = ["model", *colours, "", "taxonomy", *taxa]
    leg = ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
        fontsize=8,
        handletextpad=0.4,
    )
    texts = leg.get_texts()
    for text in (texts[0], texts[len(colours) + 2]):
        text.set_fontweight("bold")
        text.set_x(-18)
    plots.place_labels(fig, ax, points, avoid=notes)
    return plots.save(fig, Path(path))


def _panels(fig: Any, groups: dict[str, list], widths: list[int]) -> list[Any]:
    axes = fig.subplots(1, len(groups), sharey=True, squeeze=False, width_ratios=widths)[0]
    return list(axes)


def _run_legend(fig: Any, axes: list[Any], colours: dict[str, Any], style: str) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if style == "line":
        handles = [Line2D([], [], color=c, marker="o", ms=5, label=n) for n, c in colours.items()]
    else:
        handles = [Patch(facecolor=c, label=n) for n, c in colours.items()]
    axes[-1].legend(
        handles=handles,
        title="model",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
        fontsize=8,
        title_fontsize=9,
        alignment="left",
    )


def _first_scored_level(summary: dict[str, Any]) -> int | None:
    """The ``K`` of the first scored ``ground_truth_levelK`` (summaries before
    ``first_scored_level`` called it ``first_level``)."""
    return summary.get("first_scored_level", summary.get("first_level"))


def _panel_title(tax: str, group: list[tuple[str, dict]]) -> str:
    first = max(_first_scored_level(r) or 1 for _, r in group)
    return f"{tax}\n(root level not scored)" if first > 1 else tax


def plot_level_accuracy(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Accuracy per level, coarse to fine, one line per run; one panel per taxonomy."""
    scored = [r for r in runs if r["metrics"]]
    names = _names(scored)
    groups = _by_taxonomy(scored, names)
    levels = {t: _merge_levels([r["levels"] for _, r in g]) for t, g in groups.items()}
    widths = [max(3, len(v)) for v in levels.values()]
    fig = plots.figure(figsize=(min(16, 2.2 + 0.75 * sum(widths) + 1.4 * len(groups)), 4.4))
    axes = _panels(fig, groups, widths)
    colours = plots.colours(names)
    rotate = any(len(v) > 5 or max(map(len, v)) > 9 for v in levels.values())
    for ax, (tax, group) in zip(axes, groups.items()):
        xs = {lev: i for i, lev in enumerate(levels[tax])}
        k = len(group)
        for j, (n, r) in enumerate(group):
            dodge = (j - (k - 1) / 2) * min(0.06, 0.3 / k)
            acc = r["metrics"]["level_acc"]
            x = [xs[lev] + dodge for lev in r["levels"]]
            y = [a["value"] for a in acc]
            err = [[a["value"] - a["low"] for a in acc], [a["high"] - a["value"] for a in acc]]
            ax.errorbar(
                x,
                y,
                yerr=err,
                color=colours[n],
                marker="o",
                ms=4,
                lw=1.5,
                elinewidth=0.8,
                capsize=2,
                label=n,
            )
        plots.level_ticks(ax, list(xs), rotate)
        ax.set_xlim(-0.4, len(xs) - 0.6)
        ax.set_title(_panel_title(tax, group), fontsize=10)
        ax.set_xlabel("level (coarse → fine)")
        ax.grid(True, axis="y", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
    axes[0].set_ylim(0, 100)
    axes[0].set_ylabel("accuracy (%)")
    fig.suptitle("Accuracy per level (bars: 95% intervals)")
    _run_legend(fig, axes, colours, "line")
    return plots.save(fig, Path(path))


def plot_first_error(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Share of samples whose path first goes wrong at each level; "all right" (= HCA) last."""
    scored = [r for r in runs if r["metrics"]]
    names = _names(scored)
    groups = _by_taxonomy(scored, names)
    levels = {t: _merge_levels([r["levels"] for _, r in g]) for t, g in groups.items()}
    widths = [max(3, len(v) + 1) for v in levels.values()]
    fig = plots.figure(figsize=(min(16, 2.2 + 0.8 * sum(widths) + 1.4 * len(groups)), 4.4))
    axes = _panels(fig, groups, widths)
    colours = plots.colours(names)
    top = 0.0
    for ax, (tax, group) in zip(axes, groups.items()):
        buckets = levels[tax] + ["all right (HCA)"]
        xs = {b: i for i, b in enumerate(buckets)}
        k = len(group)
        width = 0.8 / k
        for j, (n, r) in enumerate(group):
            counts = r["first_error"]
            total = sum(counts) or 1
            share = [100 * c / total for c in counts]
            top = max(top, *share)
            x = [xs[b] + (j - (k - 1) / 2) * width for b in r["levels"] + ["all right (HCA)"]]
            ax.bar(x, share, width=width * 0.92, color=colours[n], label=n)
        ax.axvline(len(buckets) - 1.5, color="0.5", ls=":", lw=1)
        plots.level_ticks(ax, buckets, rotate=True)
        ax.set_xlim(-0.6, len(buckets) - 0.4)
        ax.set_title(_panel_title(tax, group), fontsize=10)
        ax.set_xlabel("first wrong level (coarse → fine)")
        ax.grid(True, axis="y", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
    axes[0].set_ylim(0, min(100, 10 * -(-top * 1.08 // 10)) or 100)
    axes[0].set_ylabel("share of scored samples (%)")
    fig.suptitle("Where paths first break")
    _run_legend(fig, axes, colours, "bar")
    return plots.save(fig, Path(path))


def plot_vlm_vs_llm(pairs: list[tuple[dict[str, Any], dict[str, Any]]], path: str | Path) -> Path:
    """Accuracy per level of each vision LLM in text mode (solid) and of its LLM (dashed), one
    panel per pair, with both runs' HCA in the legend."""
    scored = [(v, m) for v, m in pairs if v["metrics"] and m["metrics"]]
    if not scored:
        raise ValueError("nothing to plot: no pair has scored samples in both runs")
    names = _names([r for pair in scored for r in pair])
    levels = [_merge_levels([v["levels"], m["levels"]]) for v, m in scored]
    widths = [max(3, len(v)) for v in levels]
    fig = plots.figure(figsize=(min(16, 2.4 + 0.8 * sum(widths) + 1.2 * len(scored)), 4.6))
    axes = fig.subplots(1, len(scored), sharey=True, squeeze=False, width_ratios=widths)[0]
    rotate = any(len(v) > 5 or max(map(len, v)) > 9 for v in levels)
    colours = plots.colours(names[::2])
    for i, (ax, (vlm, llm), order) in enumerate(zip(axes, scored, levels)):
        xs = {lev: j for j, lev in enumerate(order)}
        colour = colours[names[2 * i]]
        for run, name, style in ((vlm, names[2 * i], "-"), (llm, names[2 * i + 1], "--")):
            acc = run["metrics"]["level_acc"]
            ax.errorbar(
                [xs[lev] for lev in run["levels"]],
                [a["value"] for a in acc],
                yerr=[[a["value"] - a["low"] for a in acc], [a["high"] - a["value"] for a in acc]],
                color=colour,
                ls=style,
                marker="o" if style == "-" else "s",
                ms=4,
                lw=1.5,
                elinewidth=0.8,
                capsize=2,
                label=f"{name}: HCA {run['metrics']['hca']['value']:.1f}",
            )
        plots.level_ticks(ax, list(xs), rotate)
        ax.set_xlim(-0.4, len(xs) - 0.6)
        ax.set_title(str(vlm["taxonomy"]), fontsize=10)
        ax.set_xlabel("level (coarse → fine)")
        ax.grid(True, axis="y", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
        ax.legend(loc="lower left", frameon=False, fontsize=7)
    axes[0].set_ylim(0, 100)
    axes[0].set_ylabel("accuracy (%)")
    fig.suptitle("Vision LLM in text mode (solid) and its LLM (dashed): accuracy per level")
    return plots.save(fig, Path(path))


def write_plots(
    runs: list[dict[str, Any]],
    out_dir: str | Path,
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] | None = None,
) -> list[Path]:
    """``hca_vs_leaf.png``, ``level_accuracy.png`` and ``first_error.png`` in ``out_dir``, and
    ``vlm_vs_llm.png`` (:func:`plot_vlm_vs_llm`) for the ``pairs`` of :func:`pair_runs` with
    scored samples on both sides.

    Runs whose metrics are null (every sample failed) are left out; none at all is an error.
    Needs matplotlib (``pip install 'hierzoo[plot]'``).
    """
    if not any(r["metrics"] for r in runs):
        raise ValueError("nothing to plot: no run has scored samples (every metrics is null)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        plot_hca_vs_leaf(runs, out / "hca_vs_leaf.png"),
        plot_level_accuracy(runs, out / "level_accuracy.png"),
        plot_first_error(runs, out / "first_error.png"),
    ]
    if pairs and any(v["metrics"] and m["metrics"] for v, m in pairs):
        written.append(plot_vlm_vs_llm(pairs, out / "vlm_vs_llm.png"))
    return written
