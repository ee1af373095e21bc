"""All hierarchical metrics on 1,000,000 samples x 7 levels: vectorized against the per-sample loop.

The loop is the shape of the paper's metric script: per sample, lower-cased name lists,
compare, accumulate; one pass per metric. It runs on --loop-samples samples and its time is
scaled to the full size (it is linear in samples). hierzoo runs on integer node codes (the
form predictions take inside hierzoo); encoding names to codes is timed separately.

    python benchmarks/metrics.py [--samples 1000000] [--loop-samples 100000] [--json FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import print_table, write_json

from hierzoo import load_taxonomy
from hierzoo.metrics import encode, summarize


def paper_loop(pred: list[list[str]], true: list[list[str]]) -> dict[str, float]:
    def low(p):
        return [x.lower() for x in p]

    n = len(true)
    hca = sum(low(p) == low(t) for p, t in zip(pred, true)) / n
    leaf = sum(p[-1].lower() == t[-1].lower() for p, t in zip(pred, true)) / n
    por = sum(sum(a == b for a, b in zip(low(p), low(t))) / len(t) for p, t in zip(pred, true)) / n
    spor = 0.0
    for p, t in zip(pred, true):
        m = 0
        for a, b in zip(low(p), low(t)):
            if a != b:
                break
            m += 1
        spor += m / len(t)
    tor = 0.0
    for p, t in zip(pred, true):
        p, t = low(p), low(t)
        pairs = sum(1 for j in range(len(t) - 1) if p[j] == t[j] and p[j + 1] == t[j + 1])
        tor += pairs / (len(t) - 1) if len(t) > 1 else 0
    depth = max(len(t) for t in true)
    right = [0] * depth
    total = [0] * depth
    for p, t in zip(pred, true):
        p, t = low(p), low(t)
        for j in range(len(t)):
            total[j] += 1
            right[j] += p[j] == t[j]
    return {"hca": hca, "leaf_acc": leaf, "por": por, "strict_por": spor / n, "tor": tor / n}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--loop-samples", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "metrics.json"))
    args = ap.parse_args()

    tax = load_taxonomy("inat21-animal")  # 7 levels
    rng = np.random.default_rng(0)
    target = tax.paths[rng.integers(tax.n_leaves, size=args.samples)]
    pred = target.copy()
    for k in range(tax.depth):
        wrong = rng.random(args.samples) > 0.7
        pred[wrong, k] = rng.choice(tax.level_nodes(k), size=int(wrong.sum()))
    mask = target >= 0

    def vectorized():
        return summarize(pred, target, mask, taxonomy=tax)

    vectorized()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = vectorized()
        times.append(time.perf_counter() - t0)
    t_vec = min(times)
    t0 = time.perf_counter()
    out_ci = summarize(pred, target, mask, taxonomy=tax, ci=True, n_boot=1000)
    t_ci = time.perf_counter() - t0

    m = args.loop_samples
    names = tax.names
    true_names = [[names[i] for i in row] for row in target[:m]]
    pred_names = [[names[i] for i in row] for row in pred[:m]]
    t0 = time.perf_counter()
    loop = paper_loop(pred_names, true_names)
    t_loop = (time.perf_counter() - t0) * args.samples / m
    t0 = time.perf_counter()
    encode(pred_names, true_names, taxonomy=tax)
    t_encode = (time.perf_counter() - t0) * args.samples / m

    sub = summarize(pred[:m], target[:m], mask[:m], taxonomy=tax)
    agree = max(abs(sub[k] - loop[k]) for k in loop)
    rows = [
        {"method": "paper-style per-sample loop (names)", "seconds": t_loop, "speedup": 1.0},
        {"method": "hierzoo vectorized, all metrics", "seconds": t_vec, "speedup": t_loop / t_vec},
        {
            "method": "hierzoo vectorized + bootstrap CIs (1000)",
            "seconds": t_ci,
            "speedup": t_loop / t_ci,
        },
        {"method": "hierzoo encode names -> codes (once)", "seconds": t_encode, "speedup": None},
    ]
    print(f"{args.samples:,} samples x {tax.depth} levels (loop timed on {m:,} samples, scaled)")
    print_table(rows, ["method", "seconds", "speedup"])
    print(f"max |hierzoo - loop| on the loop's samples: {agree:.2e}")
    write_json(
        args.json,
        {
            "benchmark": "metrics",
            "samples": args.samples,
            "levels": tax.depth,
            "loop_samples": m,
            "rows": rows,
            "max_abs_difference": agree,
            "hca": out["hca"],
            "hca_ci": list(out_ci["hca"]),
        },
    )


if __name__ == "__main__":
    main()
