"""`hierzoo score` on a 1,000,000-row x 7-level result file, end to end and stage by stage,
against the paper's metric script on the same file.

The file is generated once (iNat21-Animal paths, 30% wrong answers per level) in the paper's
format as its evaluation scripts write it: a JSON list, ``json.dump(results, f, indent=4)``,
with ``image``, ``label`` and per level ``ground_truth_levelk``, ``predicted_levelk_letter``,
``predicted_levelk`` and ``choices_levelk``; a JSON Lines copy (one compact row per line, as
``hierzoo eval`` writes) is read too.

Measured in one process, interleaved, best of ``--repeats``:

- the paper's script: ``utils/metric.py`` of the paper's repository, transcribed (``json.load``,
  ``extract_hierarchies_from_results``, and the seven metric functions its ``__main__`` calls);
- ``hierzoo score FILE --ci --json``: read + encode + every metric + bootstrap intervals + print,
  reading with its default number of processes (the CPUs available, at most 8) and with
  ``--workers 1``;
- each stage of it: reading (msgspec in one process and in parts by ``--workers`` processes,
  and the standard library's json; JSON list and JSON Lines), encoding names to codes, the
  metrics, the metrics with bootstrap intervals; and, to show where reading's time goes,
  msgspec's scan of the JSON list keeping no field (the floor of any reader built on it) and
  keeping the scored fields as strings without turning them into ids;
- names to codes on in-memory name lists: ``hierzoo.metrics.encode`` against the per-sample
  encoder it replaced (``tests/reference.py``), on strings as a JSON parser makes them (one object
  per occurrence) and as a training loop holds them (the taxonomy's own name objects), beside
  one dictionary probe per name occurrence and nothing else.

    python benchmarks/metrics.py [--samples 1000000] [--repeats 3] [--encode-samples 100000]
                                 [--workdir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import sys
import tempfile
import textwrap
import time
from itertools import chain
from pathlib import Path

import numpy as np
from _common import print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import reference  # noqa: E402  (the per-sample encoder hierzoo had: the names -> codes baseline)

from hierzoo import load_taxonomy  # noqa: E402
from hierzoo.cli import main as hierzoo_main  # noqa: E402
from hierzoo.metrics import (  # noqa: E402
    available_cpus,
    encode,
    read_result_columns,
    score_results,
    summarize,
)
from hierzoo.metrics.names import encode_ids, factorize, new_vocabulary  # noqa: E402
from hierzoo.metrics.reading import _mapped, _record  # noqa: E402


# --------------------------------------------------------------------------- the paper's script
# utils/metric.py of yuanqing-ai/LLM-Hierarchical-Consistency, as its __main__ runs it (the
# prints of the first samples left out). Kept as written: it is the baseline.
def _normalize_case(hierarchy_list):
    return [item.lower() if item is not None else None for item in hierarchy_list]


def _compute_strict_por(y_pred_list, y_true_list, ignore_first_layer=True):
    por_total = 0
    n = len(y_pred_list)
    for i in range(n):
        start_idx = (
            1 if ignore_first_layer and len(y_pred_list[i]) > 1 and len(y_true_list[i]) > 1 else 0
        )
        pred_hierarchy = _normalize_case(y_pred_list[i][start_idx:])
        true_hierarchy = _normalize_case(y_true_list[i][start_idx:])
        lcp_length = 0
        for pred, true in zip(pred_hierarchy, true_hierarchy):
            if pred == true:
                lcp_length += 1
            else:
                break
        q_ci = len(true_hierarchy)
        por_total += lcp_length / q_ci if q_ci > 0 else 0
    return (por_total / n) * 100


def _compute_tor(y_pred_list, y_true_list, ignore_first_layer=True):
    por_total = 0
    n = len(y_pred_list)
    for i in range(n):
        start_idx = (
            1 if ignore_first_layer and len(y_pred_list[i]) > 1 and len(y_true_list[i]) > 1 else 0
        )
        pred_hierarchy = _normalize_case(y_pred_list[i][start_idx:])
        true_hierarchy = _normalize_case(y_true_list[i][start_idx:])
        consecutive_matches = 0
        for j in range(len(true_hierarchy) - 1):
            if j + 1 < len(pred_hierarchy) and (
                pred_hierarchy[j] == true_hierarchy[j]
                and pred_hierarchy[j + 1] == true_hierarchy[j + 1]
            ):
                consecutive_matches += 1
        total_possible = len(true_hierarchy) - 1
        por_total += consecutive_matches / total_possible if total_possible > 0 else 0
    return (por_total / n) * 100


def _compute_por(y_pred_list, y_true_list, ignore_first_layer=True):
    por_total = 0
    n = len(y_pred_list)
    for i in range(n):
        start_idx = (
            1 if ignore_first_layer and len(y_pred_list[i]) > 1 and len(y_true_list[i]) > 1 else 0
        )
        pred_hierarchy = _normalize_case(y_pred_list[i][start_idx:])
        true_hierarchy = _normalize_case(y_true_list[i][start_idx:])
        match_count = sum(1 for pred, true in zip(pred_hierarchy, true_hierarchy) if pred == true)
        por_total += match_count / len(true_hierarchy) if len(true_hierarchy) > 0 else 0
    return (por_total / n) * 100


def _compute_layer_by_layer_accuracy(y_pred_list, y_true_list, ignore_first_layer=True):
    max_depth = max(max([len(h) for h in y_pred_list]), max([len(h) for h in y_true_list]))
    layer_correct = {i: 0 for i in range(1, max_depth + 1)}
    layer_total = {i: 0 for i in range(1, max_depth + 1)}
    start_idx = 1 if ignore_first_layer else 0
    for i in range(len(y_true_list)):
        pred_hierarchy = _normalize_case(y_pred_list[i])
        true_hierarchy = _normalize_case(y_true_list[i])
        for j in range(start_idx, max_depth):
            layer_idx = j + 1
            if j < len(true_hierarchy):
                layer_total[layer_idx] += 1
                if j < len(pred_hierarchy) and pred_hierarchy[j] == true_hierarchy[j]:
                    layer_correct[layer_idx] += 1
    return {
        layer: (layer_correct[layer] / total) * 100 if total > 0 else 0.0
        for layer, total in layer_total.items()
    }


def _compute_hierarchy_consistency_accuracy(y_pred, y_true, ignore_first_layer=True):
    correct_samples = 0
    for pred, true in zip(y_pred, y_true):
        start_idx = 1 if ignore_first_layer and len(pred) > 1 and len(true) > 1 else 0
        if _normalize_case(pred[start_idx:]) == _normalize_case(true[start_idx:]):
            correct_samples += 1
    return (correct_samples / len(y_true)) * 100


def _por_f1(y_pred_list, y_true_list, ignore_first_layer=True):
    f1_total = 0
    n = len(y_pred_list)
    for i in range(n):
        start_idx = (
            1 if ignore_first_layer and len(y_pred_list[i]) > 1 and len(y_true_list[i]) > 1 else 0
        )
        pred_hierarchy = _normalize_case(y_pred_list[i][start_idx:])
        true_hierarchy = _normalize_case(y_true_list[i][start_idx:])
        match_count = sum(1 for pred, true in zip(pred_hierarchy, true_hierarchy) if pred == true)
        precision = match_count / len(pred_hierarchy) if len(pred_hierarchy) > 0 else 0
        recall = match_count / len(true_hierarchy) if len(true_hierarchy) > 0 else 0
        f1_total += (
            2 * (precision * recall) / (precision + recall) if (precision + recall) > 0 else 0
        )
    return (f1_total / n) * 100


def _compute_leaf_node_accuracy(y_pred_list, y_true_list, ignore_first_layer=True):
    mismatched_items = []
    correct_leaf_count = 0
    for i, (y_pred, y_true) in enumerate(zip(y_pred_list, y_true_list)):
        if (y_pred[-1] or "").lower() == (y_true[-1] or "").lower():
            correct_leaf_count += 1
        else:
            mismatched_items.append(
                {
                    "index": i,
                    "prediction": y_pred,
                    "ground_truth": y_true,
                    "pred_leaf": y_pred[-1],
                    "true_leaf": y_true[-1],
                }
            )
    return (correct_leaf_count / len(y_true_list)) * 100


def _extract_hierarchies_from_results(results, cub=False):
    ground_truth_hierarchies = []
    predicted_hierarchies = []
    for item in results:
        gt_hierarchy = []
        level = 1 if cub else 2
        while f"ground_truth_level{level}" in item:
            value = item[f"ground_truth_level{level}"]
            if value is not None:
                gt_hierarchy.append(value)
            level += 1
        pred_hierarchy = []
        level = 1 if cub else 2
        while f"predicted_level{level}" in item:
            value = item[f"predicted_level{level}"]
            if value is not None:
                pred_hierarchy.append(value)
            level += 1
        if gt_hierarchy and pred_hierarchy:
            ground_truth_hierarchies.append(gt_hierarchy)
            predicted_hierarchies.append(pred_hierarchy)
    return ground_truth_hierarchies, predicted_hierarchies


def paper_script(path: str) -> dict[str, float]:
    """The paper's ``python utils/metric.py --file_path FILE`` (not ``--cub``: level 1 left
    out), returning what it prints."""
    with open(path) as f:
        data = json.load(f)
    y_true, y_pred = _extract_hierarchies_from_results(data, cub=False)
    _compute_layer_by_layer_accuracy(y_pred, y_true, ignore_first_layer=False)
    return {
        "tor": _compute_tor(y_pred, y_true, ignore_first_layer=False),
        "por": _compute_por(y_pred, y_true, ignore_first_layer=False),
        "strict_por": _compute_strict_por(y_pred, y_true, ignore_first_layer=False),
        "hca": _compute_hierarchy_consistency_accuracy(y_pred, y_true, ignore_first_layer=False),
        "hf1": _por_f1(y_pred, y_true, ignore_first_layer=False),
        "leaf_acc": _compute_leaf_node_accuracy(y_pred, y_true, ignore_first_layer=False),
    }


# --------------------------------------------------------------------------- the result file
def generate(path_list: Path, path_lines: Path, samples: int, seed: int = 0) -> None:
    """A paper-format result file (and its JSON Lines copy) for ``samples`` iNat21-Animal
    images, 30% wrong answers per level, four options per question."""
    tax = load_taxonomy("inat21-animal")
    rng = np.random.default_rng(seed)
    target = tax.paths[rng.integers(tax.n_leaves, size=samples)]
    names = [n.lower() for n in tax.names]
    level_nodes = [tax.level_nodes(k) for k in range(tax.depth)]
    letters = "ABCD"
    with open(path_list, "w") as fl, open(path_lines, "w") as fj:
        fl.write("[\n")
        for i in range(samples):
            row = {"image": f"images/{i:07d}.jpg", "label": names[target[i, -1]]}
            for k in range(tax.depth):
                right = int(target[i, k])
                nodes = level_nodes[k]
                others = [int(x) for x in rng.choice(nodes, size=min(3, len(nodes) - 1) + 1)]
                options = [right] + [x for x in others if x != right][:3]
                rng.shuffle(options)
                chosen = right if rng.random() < 0.7 else options[int(rng.integers(len(options)))]
                row[f"ground_truth_level{k + 1}"] = names[right]
                row[f"predicted_level{k + 1}_letter"] = letters[options.index(chosen)]
                row[f"predicted_level{k + 1}"] = names[chosen]
                row[f"choices_level{k + 1}"] = {letters[j]: names[x] for j, x in enumerate(options)}
            text = textwrap.indent(json.dumps(row, indent=4), "    ")
            fl.write(text + (",\n" if i < samples - 1 else "\n"))
            fj.write(json.dumps(row) + "\n")
        fl.write("]")


# --------------------------------------------------------------------------- timing
def best_of(times: dict[str, list[float]], name: str, fn, *args, **kw):
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    times.setdefault(name, []).append(time.perf_counter() - t0)
    return out


def hierzoo_score_cli(path: str, *options: str) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        hierzoo_main(["score", path, "--ci", "--json", *options])
    return json.loads(buf.getvalue())


def msgspec_pass(path: Path, depth: int) -> int:
    """msgspec over the memory-mapped JSON list alone: ``depth=0`` keeps no field (the
    parser's scan of the file, a floor for any reader built on it); ``depth=7`` builds the
    record of the 14 scored fields per row, as the reader does, and stops there (no ids)."""
    with _mapped(path) as data:
        return len(_record(depth)[2].decode(data))


def probe_every_name(pred: list[list], target: list[list]) -> np.ndarray:
    """One dictionary probe per name occurrence (true and predicted) and nothing else: a
    vocabulary id for every name, as an encoder that looks each name up once must give."""
    n = sum(map(len, pred)) + sum(map(len, target))
    names = chain(chain.from_iterable(target), chain.from_iterable(pred))
    return factorize(names, n, new_vocabulary())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--encode-samples",
        type=int,
        default=100_000,
        help="rows of the file for the names -> codes comparison (the old encoder is linear)",
    )
    ap.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "hierzoo-bench-metrics"),
        help="where the generated result files are kept (reused when they exist)",
    )
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "metrics.json"))
    args = ap.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    f_list = work / f"results-{args.samples}.json"
    f_lines = work / f"results-{args.samples}.jsonl"
    if not (f_list.is_file() and f_lines.is_file()):
        t0 = time.perf_counter()
        generate(f_list, f_lines, args.samples)
        print(f"generated {f_list} in {time.perf_counter() - t0:.0f} s")
    size_mb = f_list.stat().st_size / 1e6
    print(f"{args.samples:,} rows x 7 levels: {f_list} ({size_mb:.0f} MB), {f_lines}")

    tax = load_taxonomy("inat21-animal")
    workers = min(available_cpus(), 8)
    times: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        paper = best_of(times, "paper", paper_script, str(f_list))
        ours = best_of(times, "score", hierzoo_score_cli, str(f_list))
        best_of(times, "score, one process", hierzoo_score_cli, str(f_list), "--workers", "1")
        best_of(times, "read list parts", read_result_columns, f_list, workers=workers)
        best_of(times, "read lines parts", read_result_columns, f_lines, workers=workers)
        cols = best_of(times, "read list msgspec", read_result_columns, f_list, parser="msgspec")
        best_of(times, "scan list", msgspec_pass, f_list, 0)
        best_of(times, "decode list", msgspec_pass, f_list, 7)
        best_of(times, "read list json", read_result_columns, f_list, parser="json")
        best_of(times, "read lines msgspec", read_result_columns, f_lines, parser="msgspec")
        best_of(times, "read lines json", read_result_columns, f_lines, parser="json")
        truth, pred, values = cols.names()
        p, t, m = best_of(times, "encode", encode_ids, pred[1:], truth[1:], values, first_level=1)
        best_of(times, "metrics", summarize, p, t, m)
        best_of(times, "metrics + ci", summarize, p, t, m, ci=True)
        best_of(times, "score after reading", score_results, cols, ci=True)
        best_of(times, "score after reading, taxonomy", score_results, cols, taxonomy=tax, ci=True)
        # names -> codes on in-memory name lists, against the per-sample encoder
        sub = slice(0, args.encode_samples)
        true_names = [[values[i] for i in row] for row in truth[:, sub].T.tolist()]
        pred_names = [[values[i] for i in row] for row in pred[:, sub].T.tolist()]
        for label, (tn, pn) in {
            "shared": (true_names, pred_names),
            "parsed": json.loads(json.dumps([true_names, pred_names])),
        }.items():
            best_of(times, f"one probe per name, {label}", probe_every_name, pn, tn)
            for how, tx in (("no taxonomy", None), ("taxonomy", tax)):
                best_of(
                    times, f"old encoder, {how}, {label}", reference.encode_per_sample, pn, tn, tx
                )
                best_of(times, f"encode, {how}, {label}", encode, pn, tn, tx)
            del tn, pn
        del true_names, pred_names, cols, truth, values, p, t, m
        print(
            f"repeat {rep + 1}/{args.repeats}: "
            + ", ".join(f"{k} {v[-1]:.2f}" for k, v in list(times.items())[:3]),
            flush=True,
        )

    best = {k: min(v) for k, v in times.items()}
    agree = max(abs(ours[k]["value"] - paper[k]) for k in paper)
    base = best["paper"]
    rows = [
        {"stage": "paper's utils/metric.py (json.load + loops)", "seconds": base, "vs paper": 1.0},
        {
            "stage": f"hierzoo score --ci --json (end to end, {workers} processes)",
            "seconds": best["score"],
        },
        {"stage": "hierzoo score --ci --json --workers 1", "seconds": best["score, one process"]},
        {
            "stage": f"  read JSON list, msgspec, {workers} processes",
            "seconds": best["read list parts"],
        },
        {"stage": "  read JSON list, msgspec, one process", "seconds": best["read list msgspec"]},
        {"stage": "    msgspec's scan alone (no field kept)", "seconds": best["scan list"]},
        {"stage": "    + the 14 scored fields as strings", "seconds": best["decode list"]},
        {"stage": "  read JSON list, json", "seconds": best["read list json"]},
        {
            "stage": f"  read JSON Lines, msgspec, {workers} processes",
            "seconds": best["read lines parts"],
        },
        {"stage": "  read JSON Lines, msgspec, one process", "seconds": best["read lines msgspec"]},
        {"stage": "  read JSON Lines, json", "seconds": best["read lines json"]},
        {"stage": "  encode names -> codes", "seconds": best["encode"]},
        {"stage": "  metrics", "seconds": best["metrics"]},
        {"stage": "  metrics + bootstrap CIs (2000)", "seconds": best["metrics + ci"]},
        {"stage": "  everything after reading", "seconds": best["score after reading"]},
        {
            "stage": "  everything after reading, --taxonomy",
            "seconds": best["score after reading, taxonomy"],
        },
    ]
    for r in rows:
        r["vs paper"] = base / r["seconds"]
    enc_rows = []
    for label in ("shared", "parsed"):
        for how in ("no taxonomy", "taxonomy"):
            old, new = best[f"old encoder, {how}, {label}"], best[f"encode, {how}, {label}"]
            enc_rows.append(
                {
                    "names": label,
                    "taxonomy": how,
                    "old encoder": old,
                    "encode": new,
                    "speedup": old / new,
                    "one probe per name": best[f"one probe per name, {label}"],
                }
            )
    print(f"best of {args.repeats}; same process, interleaved")
    print_table(rows, ["stage", "seconds", "vs paper"])
    print(f"names -> codes on {min(args.encode_samples, args.samples):,} rows x 7 levels")
    print_table(
        enc_rows, ["names", "taxonomy", "old encoder", "encode", "speedup", "one probe per name"]
    )
    print(f"max |hierzoo - paper| over HCA, leaf, POR, strict POR, TOR, hF1: {agree:.2e}")
    per_repeat = [a / b for a, b in zip(times["paper"], times["score"])]
    print(
        "paper's script / hierzoo score, timed back to back in each repeat: "
        + ", ".join(f"{r:.1f}" for r in per_repeat)
    )
    write_json(
        args.json,
        {
            "benchmark": "metrics",
            "samples": args.samples,
            "encode_samples": min(args.encode_samples, args.samples),
            "levels": 7,
            "file_mb": round(size_mb, 1),
            "repeats": args.repeats,
            "workers": workers,
            "stages": rows,
            "names_to_codes": enc_rows,
            "all_times": times,
            "score_vs_paper_per_repeat": per_repeat,
            "max_abs_difference_percent": agree,
            "hca": ours["hca"],
        },
    )


if __name__ == "__main__":
    main()
