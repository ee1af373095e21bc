"""Write the bundled example result file: a simulated model on the CUB-200 similar-choice questions.

The "model" is a seeded simulation, not a real one: at each level it picks the right option with
a fixed probability (higher for species than for family, the pattern the paper reports) and a
random wrong option otherwise. It exists so that `hierzoo score` has a file in the paper's format
to run on offline. Usage: python scripts/make_example_results.py [OUT] [--n 500]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hierzoo.tasks import read_questions

LEVEL_ACCURACY = (0.85, 0.55, 0.6, 0.75)  # order, family, genus, species


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="hierzoo/data/examples/cub200_simulated_results.json")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    questions = read_questions("cub200-similar")
    picks = rng.choice(len(questions), size=args.n, replace=False)
    rows = []
    for qi in sorted(picks.tolist()):
        q = questions[qi]
        row = {"image": q.image, "label": q.label}
        for k, (ans, opts) in enumerate(zip(q.answers, q.choices), start=1):
            opts = list(opts)
            rng.shuffle(opts)
            letters = {chr(65 + i): o for i, o in enumerate(opts)}
            right = next(L for L, o in letters.items() if o == ans)
            wrong = [L for L in letters if right != L]
            letter = (
                right if rng.random() < LEVEL_ACCURACY[k - 1] else wrong[rng.integers(len(wrong))]
            )
            row[f"ground_truth_level{k}"] = ans
            row[f"predicted_level{k}_letter"] = letter
            row[f"predicted_level{k}"] = letters[letter]
            row[f"choices_level{k}"] = letters
        rows.append(row)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(rows, f)
    print(f"wrote {len(rows)} samples to {args.out}")


if __name__ == "__main__":
    main()
