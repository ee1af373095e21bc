"""Tables of scores (terminal, Markdown, CSV) and the plots of ``hierzoo report``."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hierzoo import tables
from hierzoo._report_plots import (
    _first_scored_level,
    _merge_levels,
    _names,
    plot_first_error,
    plot_hca_vs_leaf,
    plot_level_accuracy,
    plot_vlm_vs_llm,
    write_plots,
)
from hierzoo.tables import markdown_table, text_table

__all__ = [
    "COLUMNS",
    "METRICS",
    "COMPARED",
    "format_table",
    "format_summary",
    "format_open",
    "format_binary",
    "format_generated",
    "load_runs",
    "report_table",
    "format_markdown",
    "write_markdown",
    "write_csv",
    "PairError",
    "pair_runs",
    "comparison_table",
    "format_comparison",
    "write_comparison_csv",
    "plot_hca_vs_leaf",
    "plot_level_accuracy",
    "plot_first_error",
    "plot_vlm_vs_llm",
    "write_plots",
]

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
    cells = [[name] + [_fmt(s.get(k)) for k, _ in cols] + [str(s["n"])] for name, s in rows]
    lines = text_table(["results"] + [h for _, h in cols] + ["n"], cells)
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
    name = summary.get("model_label") or summary.get("model", "model")
    table = format_table(
        [(name, {**summary["metrics"], "n": summary["n"], "levels": summary.get("levels", [])})]
    )
    prov = summary.get("provenance", {})
    rate = prov.get("questions_per_second")
    extra = f"errors: {summary['n_errors']}"
    if rate:
        per_image = prov.get("images_per_second", 0)
        extra += f"; {rate:.1f} questions/s, {per_image:.1f} images/s on {prov.get('device')}"
    answers = format_binary(summary) or format_open(summary) or format_generated(summary)
    return f"{table}\n{extra}" + (f"\n{answers}" if answers else "")


def format_open(summary: dict[str, Any]) -> str:
    """One line on open-ended answers (``--protocol open``): how the replies were matched onto
    the taxonomy's nodes; ``""`` for other protocols."""
    tiers = summary.get("match_tiers")
    if summary.get("protocol") != "open" or not tiers:
        return ""
    counts = ", ".join(f"{n} {how}" for how, n in tiers.items())
    return f"open answers: {counts} of {summary['n_answers']}"


def format_binary(summary: dict[str, Any]) -> str:
    """One line on yes/no statements (``--protocol binary``): how many were answered yes, no or
    neither, and how many levels got no yes or several; ``""`` for other protocols."""
    if summary.get("protocol") != "binary" or not summary.get("n_statements"):
        return ""
    return (
        f"statements: {summary['n_yes']} yes, {summary['n_no']} no, {summary['n_neither']} "
        f"neither of {summary['n_statements']}; of {summary['n_levels']} levels "
        f"{summary['levels_without_yes']} without a yes (scored wrong), "
        f"{summary['levels_with_several_yes']} with several (the first counts)"
    )


def format_generated(summary: dict[str, Any]) -> str:
    """One line on generated answers (``--answer generate``): how many replies named no option
    and how often the parsed letter is the first token's most probable letter; ``""`` for
    answers read from logits."""
    if summary.get("answer") != "generate" or not summary.get("n_answers"):
        return ""
    n, unknown = summary["n_answers"], summary.get("n_unknown", 0)
    agreement = summary.get("answer_agreement")
    line = f"generated replies: {unknown} of {n} Unknown ({100 * unknown / n:.1f}%, scored wrong)"
    if agreement is not None:
        line += f"; the parsed letter is the first token's most probable letter in {agreement:.1f}%"
    return line


# ---------------------------------------------------------------------------------------------
# hierzoo report: many run directories -> one table (Markdown, CSV) and plots (PNG)

METRICS = ["hca", "leaf_acc", "por", "strict_por", "tor", "hf1", "consistency"]
_REQUIRED = ("model", "taxonomy", "n", "metrics")


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); not a `hierzoo eval` summary"
        ) from None
    if not isinstance(run, dict):
        raise ValueError(f"{path}: expected a JSON object written by `hierzoo eval`")
    missing = [k for k in _REQUIRED if k not in run]
    if missing:
        raise ValueError(f"{path}: not a `hierzoo eval` summary (missing {', '.join(missing)})")
    if run["metrics"]:
        levels, acc, first = (
            run.get("levels"),
            run["metrics"].get("level_acc"),
            run.get("first_error"),
        )
        if not levels or acc is None or first is None:
            raise ValueError(
                f"{path}: a summary with metrics needs levels, level_acc and first_error"
            )
        if len(acc) != len(levels) or len(first) != len(levels) + 1:
            raise ValueError(
                f"{path}: expected {len(levels)} level accuracies and {len(levels) + 1} "
                "first-error "
                f"counts for levels {levels}, but got {len(acc)} and {len(first)}"
            )
    run["run_dir"] = str(path.parent)
    return run


def load_runs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The ``summary.json`` of each run directory, in the order given.

    A path may be a run directory, its ``summary.json``, or a folder whose subfolders are run
    directories (searched one level down, in name order). Each summary gains ``run_dir``.
    """
    runs: list[dict[str, Any]] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file() and p.name == "summary.json":
            found = [p]
        elif p.is_dir():
            found = (
                [p / "summary.json"]
                if (p / "summary.json").is_file()
                else sorted(p.glob("*/summary.json"))
            )
            for run in sorted(q.parent for q in p.glob("*/run.json")):
                if not (run / "summary.json").is_file():
                    warnings.warn(
                        f"{run}: an unfinished run (no summary.json) is left out; run its "
                        "`hierzoo eval` command again to finish it.",
                        stacklevel=2,
                    )
        elif not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        else:
            found = []
        if not found and (p / "run.json").is_file():
            raise FileNotFoundError(
                f"{p}: an unfinished run (no summary.json); run its `hierzoo eval` command again "
                "to finish it"
            )
        if not found:
            raise FileNotFoundError(
                f"{p}: no summary.json in it or in its subfolders; pass a run directory written "
                "by `hierzoo eval --out DIR`, or a folder of them"
            )
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                runs.append(_read_summary(f))
    return runs


def report_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per run: labels, counts, each metric (percent) with ``_low``/``_high`` 95%
    bounds, ``hca_leaf_ratio`` (HCA / leaf accuracy, a fraction) and ``acc_<level>`` per level
    name (the union over taxonomies; ``None`` where a run has no such level), ``protocol`` (the
    way of asking, ``--protocol``; ``paper`` for summaries without one). When any run
    generated its answers (``--answer generate``), every row also has ``answer``, ``n_unknown``
    and ``answer_agreement`` (percent; ``None`` for runs that read logits). When any run was
    asked under a protocol other than ``paper`` (``--protocol``), every row also has
    ``protocol``.

    Rows are grouped by taxonomy (in order of first appearance), best HCA first.
    """
    names = _names(runs)
    all_levels = _merge_levels([r.get("levels") or [] for r in runs])
    generated = any(r.get("answer") == "generate" for r in runs)
    named = any(r.get("protocol", "paper") != "paper" for r in runs)
    asked = _question_sets(runs)
    several_sets = len({(r["taxonomy"], asked[i]) for i, r in enumerate(runs)}) > len(
        {r["taxonomy"] for r in runs}
    )
    rows = []
    for i, (name, r) in enumerate(zip(names, runs)):
        m = r["metrics"] or {}
        row: dict[str, Any] = {
            "model": name,
            "taxonomy": r["taxonomy"],
            "task": r.get("task"),
            "mode": r.get("mode"),
            "n": r["n"],
            "n_errors": r.get("n_errors"),
        }
        for k in METRICS:
            est = m.get(k)
            row[k] = est["value"] if est else None
            row[f"{k}_low"] = est["low"] if est else None
            row[f"{k}_high"] = est["high"] if est else None
        hca_v, leaf_v = row["hca"], row["leaf_acc"]
        row["hca_leaf_ratio"] = hca_v / leaf_v if hca_v is not None and leaf_v else None
        acc = dict(zip(r.get("levels") or [], m.get("level_acc") or []))
        for lev in all_levels:
            row[f"acc_{lev}"] = acc[lev]["value"] if lev in acc else None
        row["first_level"] = _first_scored_level(r)
        if several_sets:
            row["questions"] = asked[i]
        if named:
            row["protocol"] = r.get("protocol", "paper")
        if generated:
            row["answer"] = r.get("answer", "logits")
            row["n_unknown"] = r.get("n_unknown")
            row["answer_agreement"] = r.get("answer_agreement")
        row["run"] = r["run_dir"]
        rows.append(row)
    order = list(dict.fromkeys((r["taxonomy"], r.get("questions")) for r in rows))
    return sorted(
        rows,
        key=lambda r: (
            order.index((r["taxonomy"], r.get("questions"))),
            r["hca"] is None,
            -(r["hca"] or 0.0),
        ),
    )


def _question_sets(runs: list[dict[str, Any]]) -> list[str]:
    """The question set each run asked, as a table shows it: its label in the summary
    (``cub200-similar``, a file's name), with the start of its content hash where one label
    stands for several sets (another ``--limit``, another file of the same name)."""
    digests = [
        str(((r.get("provenance") or {}).get("identity") or {}).get("questions") or "")
        for r in runs
    ]
    labels = [str(r.get("questions") or "questions") for r in runs]
    shared = {
        label for label in labels if len({d for d, lb in zip(digests, labels) if lb == label}) > 1
    }
    return [
        f"{label} #{digest[:6]}" if label in shared or label == "questions" else label
        for label, digest in zip(labels, digests)
    ]


def _cell(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v).replace("|", "\\|")


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The report as Markdown: one table of metrics, then one table of accuracy per level for
    each taxonomy."""
    out = [
        "# hierzoo report",
        "",
        "Percent of scored samples; HCA and leaf accuracy with bootstrap 95% intervals. "
        "HCA/Leaf: the share of leaf-right samples whose whole path is right.",
        "",
    ]

    def with_ci(r: dict[str, Any], k: str) -> str:
        if r[k] is None:
            return "-"
        return f"{r[k]:.1f} [{r[k + '_low']:.1f}, {r[k + '_high']:.1f}]"

    generated = any("answer" in r for r in rows)
    named = any("protocol" in r for r in rows)
    asked = ["questions"] if any("questions" in r for r in rows) else []
    lead = ["model", "taxonomy", *asked, "task", "mode"] + (["protocol"] if named else [])
    header = [*lead, "n", "errors", "HCA", "Leaf", "HCA/Leaf"]
    header += [h for k, h in COLUMNS if k not in ("hca", "leaf_acc")]
    header += ["answer", "Unknown", "Agree"] if generated else []
    header += ["run"]
    body = []
    for r in rows:
        keys = ("model", "taxonomy", *asked, "task", "mode") + (("protocol",) if named else ())
        cells = [_cell(r[k]) for k in (*keys, "n", "n_errors")]
        cells += [with_ci(r, "hca"), with_ci(r, "leaf_acc"), _cell(r["hca_leaf_ratio"], 2)]
        cells += [_cell(r[k]) for k, _ in COLUMNS if k not in ("hca", "leaf_acc")]
        if generated:
            cells += [_cell(r[k]) for k in ("answer", "n_unknown", "answer_agreement")]
        body.append(cells + [_cell(r["run"])])
    out += markdown_table(header, body, right=set(range(len(lead), len(header) - 1)))
    if generated:
        out += [
            "",
            "answer: how the answer was read (logits: the option letters' logits; generate: a "
            "reply parsed by the paper's rule, or by its last stated letter where the model's "
            "name says last-letter). Unknown: replies naming no option (scored wrong). "
            "Agree: percent of replies whose letter is the first token's most probable letter.",
        ]

    levels = [k for k in (rows[0] if rows else {}) if k.startswith("acc_")]
    for tax in dict.fromkeys(r["taxonomy"] for r in rows):
        group = [r for r in rows if r["taxonomy"] == tax]
        cols = [k for k in levels if any(r[k] is not None for r in group)]
        if not cols:
            continue
        first = next((r["first_level"] for r in group if r["first_level"]), 1)
        note = f" (levels from {first}; the single root is not scored)" if first > 1 else ""
        out += ["", f"## Accuracy per level: {_cell(tax)}{note}", ""]
        body = [[_cell(r["model"])] + [_cell(r[k]) for k in cols] for r in group]
        out += markdown_table(
            ["model"] + [k[4:] for k in cols], body, right=set(range(1, len(cols) + 1))
        )
    return "\n".join(out) + "\n"


def write_markdown(
    rows: list[dict[str, Any]],
    path: str | Path,
    comparison: list[dict[str, Any]] | None = None,
) -> Path:
    """Write :func:`format_markdown` of the rows to ``path``, followed by
    :func:`format_comparison` of ``comparison`` (the rows of :func:`comparison_table`) when
    there are any."""
    path = Path(path)
    text = format_markdown(rows)
    if comparison:
        text += "\n" + format_comparison(comparison)
    path.write_text(text)
    return path


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the rows as CSV (every key a column; empty where ``None``; floats to 4 decimals)."""
    return tables.write_csv(rows, path, digits=4)


# ---------------------------------------------------------------------------------------------
# a vision LLM's text-mode run next to its LLM's run: the paper's "the LLM is the bottleneck"

COMPARED = [("hca", "HCA"), ("leaf_acc", "Leaf"), ("por", "POR"), ("strict_por", "S-POR")]
# identity items a pair shares
_SAME = ("questions", "taxonomy", "task", "answer", "circular", "protocol", "parse")


class PairError(ValueError):
    """Two runs that cannot be compared (another question set, taxonomy or setting)."""


def _zoo_spec(run: dict[str, Any]) -> Any:
    """The zoo spec of a run's model: by the name it was run with (a zoo name or a zoo hub id),
    else by the spec recorded in its provenance; ``None`` for a model outside the zoo."""
    from hierzoo.models._registry import ZOO

    recorded = (run.get("provenance") or {}).get("model") or {}
    for name in (str(run.get("model", "")), str(recorded.get("name", ""))):
        key = name.lower().removeprefix("hf-hub:")
        if key in ZOO:
            return ZOO[key]
        spec = next((s for s in ZOO.values() if s.hub_id.lower() == key), None)
        if spec is not None:
            return spec
    return None


def _identity(run: dict[str, Any]) -> dict[str, Any] | None:
    return (run.get("provenance") or {}).get("identity")


def _mismatch(vlm: dict[str, Any], llm: dict[str, Any]) -> str | None:
    """Why two runs do not answer the same questions the same way, or ``None`` if they do."""
    for run in (vlm, llm):
        if run.get("mode") != "text":
            return f"{run['run_dir']} was run in {run.get('mode')} mode, not text mode"
    if vlm["taxonomy"] != llm["taxonomy"]:
        return f"taxonomies differ ({vlm['taxonomy']} and {llm['taxonomy']})"
    a, b = _identity(vlm), _identity(llm)
    if a is None or b is None:
        missing = vlm if a is None else llm
        return f"{missing['run_dir']} records no run identity (summary.json without provenance)"
    for key in _SAME:
        if a.get(key) != b.get(key):
            what = "question sets (content hashes)" if key == "questions" else key
            return f"their {what} differ ({a.get(key)!r} and {b.get(key)!r})"
    return None


def pair_runs(
    runs: list[dict[str, Any]], explicit: Iterable[tuple[str | Path, str | Path]] = ()
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(vision-LLM run, LLM run)`` pairs: each vision LLM's text-mode run next to a run of its
    text-only LLM on the same questions.

    Found by the zoo: a run of a vision LLM whose spec names a ``base_llm``
    (``qwen2.5-vl-7b`` -> ``qwen2.5-7b-instruct``) pairs with every run of that LLM with the same
    taxonomy, question set (the content hash in the run identity), task, answer setting,
    circular setting, protocol and parse rule; both in text mode. ``explicit``: more pairs as
    ``(VLM run, LLM run)`` paths (run directories or their ``summary.json``, read if not among
    ``runs``), for models outside the zoo; they must match in the same way.

    Raises:
        PairError: an explicit pair whose runs cannot be compared, naming why.
    """
    by_dir = {Path(r["run_dir"]).resolve(): r for r in runs}
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for vlm_path, llm_path in explicit:
        got = []
        for p in (vlm_path, llm_path):
            path = Path(p)
            run_dir = (path.parent if path.name == "summary.json" else path).resolve()
            if run_dir not in by_dir:
                if not (run_dir / "summary.json").is_file():
                    raise PairError(
                        f"--pair {vlm_path}={llm_path}: {p} is not a run directory (no "
                        "summary.json in it); name one run on each side."
                    )
                by_dir[run_dir] = load_runs([run_dir])[0]
            got.append(by_dir[run_dir])
        if got[0] is got[1]:
            raise PairError(
                f"--pair {vlm_path}={llm_path}: the same run on both sides; pair a vision LLM's "
                "text-mode run with its LLM's run."
            )
        why = _mismatch(got[0], got[1])
        if why is not None:
            raise PairError(f"--pair {vlm_path}={llm_path}: cannot compare these runs: {why}.")
        pairs.append((got[0], got[1]))
    specs = {id(r): _zoo_spec(r) for r in runs}
    for vlm in runs:
        spec = specs[id(vlm)]
        if spec is None or not spec.base_llm or vlm.get("mode") != "text":
            continue
        for llm in runs:
            other = specs[id(llm)]
            known = any(v is vlm and m is llm for v, m in pairs)
            if (
                not known
                and other is not None
                and other.name == spec.base_llm
                and _mismatch(vlm, llm) is None
            ):
                pairs.append((vlm, llm))
    return pairs


def comparison_table(
    pairs: list[tuple[dict[str, Any], dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Three flat rows per pair of :func:`pair_runs`: the vision LLM in text mode, its LLM, and
    the difference (vision LLM minus LLM, percentage points); per row ``pair`` (its number),
    ``role`` (``vlm``, ``llm``, ``difference``), ``model``, ``taxonomy``, ``n``, the metrics of
    :data:`COMPARED` and ``acc_<level>`` per level of either run (``None`` where missing). A
    run without scored samples gives ``None`` metrics, and so does the difference."""
    names = _names([r for pair in pairs for r in pair])
    rows: list[dict[str, Any]] = []
    for i, (vlm, llm) in enumerate(pairs):
        levels = _merge_levels([vlm.get("levels") or [], llm.get("levels") or []])
        sides = []
        for role, run, name in (("vlm", vlm, names[2 * i]), ("llm", llm, names[2 * i + 1])):
            m = run["metrics"] or {}
            row: dict[str, Any] = {
                "pair": i + 1,
                "role": role,
                "model": name,
                "taxonomy": run["taxonomy"],
                "n": run["n"],
            }
            for k, _ in COMPARED:
                row[k] = m[k]["value"] if m.get(k) else None
            acc = dict(zip(run.get("levels") or [], m.get("level_acc") or []))
            for lev in levels:
                row[f"acc_{lev}"] = acc[lev]["value"] if lev in acc else None
            row["run"] = run["run_dir"]
            sides.append(row)
        diff: dict[str, Any] = {
            "pair": i + 1,
            "role": "difference",
            "model": "difference (vision LLM - LLM)",
            "taxonomy": vlm["taxonomy"],
            "n": None,
        }
        for k in [k for k, _ in COMPARED] + [f"acc_{lev}" for lev in levels]:
            a, b = sides[0][k], sides[1][k]
            diff[k] = a - b if a is not None and b is not None else None
        diff["run"] = None
        rows += [*sides, diff]
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`comparison_table` as Markdown: one table per taxonomy, a vision LLM's
    text-mode run, its LLM's run and their difference in consecutive rows."""
    out = [
        "## Vision LLMs and their LLMs, text mode",
        "",
        "The same text questions (the leaf named in the question, no image) asked of a vision "
        "LLM and of the text-only LLM it was built on. Percent of scored samples; the leaf is "
        "given in text mode. difference: vision LLM minus LLM, in percentage points.",
    ]
    for tax in dict.fromkeys(r["taxonomy"] for r in rows):
        group = [r for r in rows if r["taxonomy"] == tax]
        levels = list(dict.fromkeys(k for r in group for k in r if k.startswith("acc_")))
        levels = [k for k in levels if any(r.get(k) is not None for r in group)]
        header = ["model", "n"] + [h for _, h in COMPARED] + [k[4:] for k in levels]
        body = []
        for r in group:
            sign = r["role"] == "difference"
            cells = [_cell(r["model"]), _cell(r["n"])]
            for k in [k for k, _ in COMPARED] + levels:
                v = r.get(k)
                cells.append(f"{v:+.1f}" if sign and v is not None else _cell(v))
            body.append(cells)
        out += ["", f"### {_cell(tax)}", ""]
        out += markdown_table(header, body, right=set(range(1, len(header))))
    return "\n".join(out) + "\n"


def write_comparison_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the rows of :func:`comparison_table` as CSV (every key a column)."""
    return tables.write_csv(rows, path, digits=4)


# ---------------------------------------------------------------------------------------------
# plots
