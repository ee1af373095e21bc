from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
import reference as ref

from hierzoo import load_taxonomy
from hierzoo.cli import main
from hierzoo.metrics import read_results, score_results
from hierzoo.tasks import build_questions

EXAMPLE = str(resources.files("hierzoo.data.examples").joinpath("cub200_simulated_results.json"))


def _paths(rows, start):
    truth, pred = [], []
    for row in rows:
        k, t, p = start, [], []
        while f"ground_truth_level{k}" in row:
            t.append(row[f"ground_truth_level{k}"])
            p.append(row[f"predicted_level{k}"])
            k += 1
        truth.append(t)
        pred.append(p)
    return truth, pred


def _expected(rows, start):
    truth, pred = _paths(rows, start)
    return {
        "hca": 100 * ref.hca(pred, truth),
        "leaf_acc": 100 * ref.leaf(pred, truth),
        "por": 100 * ref.por(pred, truth),
        "strict_por": 100 * ref.strict_por(pred, truth),
        "tor": 100 * ref.tor(pred, truth),
        "level_acc": [100 * v for v in ref.level_acc(pred, truth)],
        "n": len(truth),
    }


def _simulated_results(tax, n, seed, p_right=0.6):
    """Paper-format result rows for random images of a taxonomy (variable depth included)."""
    rng = np.random.default_rng(seed)
    labels = [tax.labels[i] for i in rng.integers(tax.n_leaves, size=n)]
    rows = []
    for q in build_questions(
        tax, [(f"img{i}.jpg", lab) for i, lab in enumerate(labels)], seed=seed
    ):
        row = {"image": q.image, "label": q.label}
        for k, (ans, opts) in enumerate(zip(q.answers, q.choices), start=1):
            choice = ans if rng.random() < p_right else opts[rng.integers(len(opts))]
            if rng.random() < 0.03:
                choice = "Unknown"
            letters = {chr(65 + i): o for i, o in enumerate(opts)}
            row[f"ground_truth_level{k}"] = ans
            row[f"predicted_level{k}"] = choice
            row[f"predicted_level{k}_letter"] = next(
                (L for L, o in letters.items() if o == choice), "Unknown"
            )
            row[f"choices_level{k}"] = letters
        rows.append(row)
    return rows


def test_score_json_on_the_bundled_example(capsys):
    assert main(["score", EXAMPLE, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = _expected(read_results(EXAMPLE), start=1)  # CUB: every level kept
    for key in ("hca", "leaf_acc", "por", "strict_por", "tor"):
        assert out[key] == pytest.approx(expected[key], abs=1e-6)
    assert out["level_acc"] == pytest.approx(expected["level_acc"], abs=1e-6)
    assert out["n"] == expected["n"] == 500
    assert out["levels"] == ["level1", "level2", "level3", "level4"]


@pytest.mark.parametrize(
    "name", ["imagenet-animal", "food101", "inat21-plant", "imagenet-artifact"]
)
def test_root_level_is_left_out_as_in_the_paper(name, tmp_path):
    tax = load_taxonomy(name)
    rows = _simulated_results(tax, 300, seed=1)
    f = tmp_path / "results.json"
    f.write_text(json.dumps(rows))
    got = score_results(read_results(f))
    expected = _expected(rows, start=2)  # the paper's script starts at level 2 here
    for key in ("hca", "leaf_acc", "por", "strict_por", "tor", "n"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert got["level_acc"] == pytest.approx(expected["level_acc"], abs=1e-6)
    with_tax = score_results(read_results(f), taxonomy=tax)
    for key in ("hca", "leaf_acc", "por", "strict_por", "tor", "level_acc"):
        assert with_tax[key] == pytest.approx(got[key], abs=1e-9)
    assert 0 <= with_tax["consistency"] <= 100
    kept = score_results(read_results(f), keep_root=True)
    assert len(kept["level_acc"]) == len(got["level_acc"]) + 1


def test_none_counts_as_wrong_where_the_paper_shifts(tmp_path):
    rows = [
        {
            "ground_truth_level1": "a",
            "ground_truth_level2": "b",
            "ground_truth_level3": "c",
            "predicted_level1": "a",
            "predicted_level2": None,
            "predicted_level3": "c",
        },
        {
            "ground_truth_level1": "x",
            "ground_truth_level2": "b",
            "ground_truth_level3": "d",
            "predicted_level1": "x",
            "predicted_level2": "B",
        },
    ]
    got = score_results(rows)
    assert got["level_acc"] == [100.0, 50.0, 50.0]
    assert got["hca"] == 0.0


def test_jsonl_with_a_torn_last_line_and_errors(tmp_path):
    rows = _simulated_results(load_taxonomy("cub200"), 20, seed=2)
    f = tmp_path / "predictions.jsonl"
    body = (
        "".join(json.dumps(r) + "\n" for r in rows)
        + json.dumps({"image": "bad.jpg", "error": "cannot open"})
        + "\n"
    )
    f.write_text(body + '{"image": "torn.jpg", "ground_tru')
    with pytest.warns(UserWarning, match="torn last line"):
        got = score_results(read_results(f))
    assert got["n"] == 20 and got["n_errors"] == 1


def test_python_dash_m_and_table():
    out = subprocess.run(
        [sys.executable, "-m", "hierzoo", "score", EXAMPLE],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "HCA" in out.stdout and "per level" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "hierzoo", "score", "nope.json"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "No result file at 'nope.json'" in bad.stderr


# ------------------------------------------------------------------ missing levels (issue 13)
CUB_PATH = ["Procellariiformes", "Diomedeidae", "Phoebastria", "Black-footed Albatross"]


def _albatross_row(species="Laysan Albatross", drop=None, null=None):
    """A CUB-200 row right at every level but the species; ``drop``/``null`` remove a level."""
    row = {"image": "albatross.jpg"}
    for k, name in enumerate(CUB_PATH, start=1):
        row[f"ground_truth_level{k}"] = name
        row[f"predicted_level{k}"] = name if k < 4 else species
    if drop:
        del row[f"ground_truth_level{drop}"], row[f"predicted_level{drop}"]
    if null:
        row[f"ground_truth_level{null}"] = None
    return row


@pytest.mark.parametrize("gap", [{"drop": 3}, {"null": 2}])
def test_a_missing_middle_level_is_never_a_shorter_path(gap):
    rows = [_albatross_row(), _albatross_row(**gap)]  # both wrong at the species
    with pytest.raises(ValueError, match=r"Row 1 \(albatross.jpg\) has no ground_truth_level"):
        score_results(rows, taxonomy=load_taxonomy("cub200"))
    got = score_results(rows, keep_root=True)
    assert got["hca"] == 0.0 and got["leaf_acc"] == 0.0
    missing = next(iter(gap.values())) - 1
    expected = [100.0, 100.0, 100.0, 0.0]
    expected[missing] = 50.0  # the row without that level is wrong there
    assert got["level_acc"] == expected
    assert got["por"] == pytest.approx(100 * (3 / 4 + 2 / 4) / 2)
    assert got["strict_por"] == pytest.approx(100 * (3 / 4 + missing / 4) / 2)
