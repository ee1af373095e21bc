"""hierzoo report: run directories -> Markdown, CSV and PNG plots."""

from __future__ import annotations

import csv
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hierzoo.cli import main
from hierzoo.report import format_summary, format_table, load_runs, report_table

CUB = ["order", "family", "genus", "species"]
ARTIFACT = [f"level{k}" for k in range(2, 9)]  # imagenet-artifact: variable depth, root dropped


def _est(p: float, n: int) -> dict[str, float]:
    half = 196 * math.sqrt(max(p, 0.5) * (1 - min(p, 0.995)) / n)
    return {"value": 100 * p, "low": max(0.0, 100 * p - half), "high": min(100.0, 100 * p + half)}


def fake_summary(
    model: str,
    taxonomy: str,
    levels: list[str],
    level_acc: list[float],
    hca: float,
    n: int = 1000,
    first_level: int = 1,
    seed: int = 0,
) -> dict:
    """A summary.json as `hierzoo eval` writes it, with plausible, self-consistent numbers."""
    rng = np.random.default_rng(seed)
    right = round(hca * n)
    wrong = np.zeros(len(levels), dtype=int)
    wrong[0] = round((1 - level_acc[0]) * n)  # the first level is wrong exactly when it is wrong
    weights = np.array([1 - a for a in level_acc[1:]]) * rng.uniform(0.7, 1.3, len(levels) - 1)
    wrong[1:] = np.floor(weights / weights.sum() * (n - right - wrong[0]))
    wrong[-1] += n - right - wrong.sum()
    leaf = level_acc[-1]
    return {
        "model": model,
        "model_label": model,
        "taxonomy": taxonomy,
        "task": "questions",
        "mode": "image",
        "n": n,
        "n_errors": int(seed % 3),
        "first_level": first_level,
        "levels": levels,
        "first_error": [int(c) for c in wrong] + [right],
        "metrics": {
            "hca": _est(hca, n),
            "leaf_acc": _est(leaf, n),
            "por": _est(float(np.mean(level_acc)), n),
            "strict_por": _est(float(np.mean(level_acc)) - 0.12, n),
            "tor": _est(float(np.mean(level_acc)) - 0.08, n),
            "hf1": _est(float(np.mean(level_acc)), n),
            "consistency": _est(0.9 + 0.01 * (seed % 5), n),
            "level_acc": [_est(a, n) for a in level_acc],
        },
        "provenance": {"device": "cpu", "questions_per_second": 12.5, "images_per_second": 3.1},
    }


RUNS = {
    "bioclip2-cub": fake_summary("bioclip2", "cub200", CUB, [0.93, 0.86, 0.79, 0.74], 0.52, seed=1),
    "qwen-cub": fake_summary(
        "qwen2.5-vl-7b", "cub200", CUB, [0.88, 0.74, 0.70, 0.81], 0.38, seed=2
    ),
    "bioclip2-artifact": fake_summary(
        "bioclip2",
        "imagenet-artifact",
        ARTIFACT,
        [0.82, 0.71, 0.66, 0.69, 0.72, 0.75, 0.78],
        0.31,
        n=800,
        first_level=2,
        seed=3,
    ),
    "qwen-artifact": fake_summary(
        "qwen2.5-vl-7b",
        "imagenet-artifact",
        ARTIFACT,
        [0.90, 0.80, 0.73, 0.70, 0.74, 0.79, 0.83],
        0.44,
        n=800,
        first_level=2,
        seed=4,
    ),
    "broken-cub": {
        "model": "/models/internvl3-1b",
        "model_label": "internvl3-1b",
        "taxonomy": "cub200",
        "task": "questions",
        "mode": "image",
        "n": 0,
        "n_errors": 20,
        "metrics": None,
    },
}


def write_runs(root: Path, runs: dict[str, dict] = RUNS) -> Path:
    """One run directory per summary under ``root``; returns ``root``."""
    for name, summary in runs.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "summary.json").write_text(json.dumps(summary, indent=2))
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = write_runs(tmp_path_factory.mktemp("runs"))
    out = root.parent / "report"
    return root, out


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _md_rows(text: str, first_header: str = "model") -> list[list[str]]:
    """The body rows of the first Markdown table whose header starts with ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_report_end_to_end(report, capsys):
    root, out = report
    # a parent folder, and one run directory passed again on its own (read once)
    assert main(["report", str(root), str(root / "qwen-cub"), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert md in stdout
    for name in (
        "report.md",
        "report.csv",
        "hca_vs_leaf.png",
        "level_accuracy.png",
        "first_error.png",
    ):
        assert str(out / name) in stdout

    # Markdown: one row per run, numbers as in the summaries
    table = _md_rows(md)
    header, body = table[0], table[2:]
    assert header[:9] == [
        "model",
        "taxonomy",
        "task",
        "mode",
        "n",
        "errors",
        "HCA",
        "Leaf",
        "HCA/Leaf",
    ]
    assert header[-1] == "run"
    assert len(body) == len(RUNS)
    by_run = {Path(r[-1]).name: dict(zip(header, r)) for r in body}
    for name, s in RUNS.items():
        row = by_run[name]
        assert row["model"] == s["model_label"]
        assert row["taxonomy"] == s["taxonomy"]
        assert row["n"] == str(s["n"])
        assert row["errors"] == str(s["n_errors"])
        if s["metrics"] is None:
            assert row["HCA"] == row["Leaf"] == row["POR"] == "-"
            continue
        m = s["metrics"]
        assert (
            row["HCA"] == f"{m['hca']['value']:.1f} [{m['hca']['low']:.1f}, {m['hca']['high']:.1f}]"
        )
        assert row["Leaf"].startswith(f"{m['leaf_acc']['value']:.1f} [")
        assert row["HCA/Leaf"] == f"{m['hca']['value'] / m['leaf_acc']['value']:.2f}"
        assert row["TOR"] == f"{m['tor']['value']:.1f}"
    # grouped by taxonomy in order of first appearance (subfolders in name order: bioclip2-artifact
    # first), best HCA first, the failed run last in its group
    assert [Path(r[-1]).name for r in body] == [
        "qwen-artifact",
        "bioclip2-artifact",
        "bioclip2-cub",
        "qwen-cub",
        "broken-cub",
    ]
    # per-level tables: one per taxonomy, with that taxonomy's level names in order
    assert "## Accuracy per level: cub200\n" in md
    assert "## Accuracy per level: imagenet-artifact (levels from 2;" in md
    cub_levels = _md_rows(md.split("## Accuracy per level: cub200")[1])
    assert cub_levels[0] == ["model", *CUB]
    assert cub_levels[2] == ["bioclip2", "93.0", "86.0", "79.0", "74.0"]
    art_levels = _md_rows(md.split("## Accuracy per level: imagenet-artifact")[1])
    assert art_levels[0] == ["model", *ARTIFACT]

    # CSV: every run, full precision, CI bounds and per-level columns (union over taxonomies)
    with (out / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(RUNS)
    cols = list(rows[0])
    assert cols[:6] == ["model", "taxonomy", "task", "mode", "n", "n_errors"]
    for k in ("hca", "hca_low", "hca_high", "leaf_acc", "consistency", "hca_leaf_ratio", "run"):
        assert k in cols
    acc_cols = [c[4:] for c in cols if c.startswith("acc_")]
    assert sorted(acc_cols) == sorted(CUB + ARTIFACT)
    assert [c for c in acc_cols if c in CUB] == CUB  # each taxonomy's levels coarse to fine
    assert [c for c in acc_cols if c in ARTIFACT] == ARTIFACT
    for row in rows:
        s = RUNS[Path(row["run"]).name]
        if s["metrics"] is None:
            assert row["hca"] == row["acc_order"] == ""
            assert row["n_errors"] == "20"
            continue
        m = s["metrics"]
        assert float(row["hca"]) == pytest.approx(m["hca"]["value"], abs=1e-4)
        assert float(row["leaf_acc_high"]) == pytest.approx(m["leaf_acc"]["high"], abs=1e-4)
        assert float(row["hca_leaf_ratio"]) == pytest.approx(
            m["hca"]["value"] / m["leaf_acc"]["value"], abs=1e-4
        )
        for lev, acc in zip(s["levels"], m["level_acc"]):
            assert float(row[f"acc_{lev}"]) == pytest.approx(acc["value"], abs=1e-4)
        other = ARTIFACT if s["taxonomy"] == "cub200" else CUB
        assert all(row[f"acc_{lev}"] == "" for lev in other)

    # PNGs: valid and of a sensible size
    for name in ("hca_vs_leaf.png", "level_accuracy.png", "first_error.png"):
        w, h = _png_size(out / name)
        assert 600 <= w <= 3000 and 400 <= h <= 2000, (name, w, h)


def test_no_plots_and_one_run(tmp_path, capsys):
    root = write_runs(tmp_path / "runs", {"qwen-cub": RUNS["qwen-cub"]})
    out = tmp_path / "rep"
    assert (
        main(["report", str(root / "qwen-cub" / "summary.json"), "--out", str(out), "--no-plots"])
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.md"]
    assert "qwen2.5-vl-7b" in capsys.readouterr().out


def test_bad_directories(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert main(["report", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "hierzoo report: error:" in err and str(empty) in err and "summary.json" in err

    assert main(["report", str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text(json.dumps({"model": "m", "metrics": None}))
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad / "summary.json") in err and "taxonomy" in err


def test_only_failed_runs_cannot_be_plotted(tmp_path, capsys):
    root = write_runs(tmp_path / "runs", {"broken": RUNS["broken-cub"]})
    assert main(["report", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    assert main(["report", str(root), "--out", str(tmp_path / "o"), "--no-plots"]) == 0


def test_duplicate_labels_get_the_run_directory(tmp_path):
    root = write_runs(tmp_path / "runs", {"a": RUNS["qwen-cub"], "b": RUNS["qwen-cub"]})
    names = sorted(r["model"] for r in report_table(load_runs([root])))
    assert names == ["qwen2.5-vl-7b [a]", "qwen2.5-vl-7b [b]"]


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch, capsys):
    root = write_runs(tmp_path / "runs", {"qwen-cub": RUNS["qwen-cub"]})
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert main(["report", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'hierzoo[plot]'" in err and "--no-plots" in err
    assert (tmp_path / "o" / "report.md").exists()  # tables are written first


def test_import_hierzoo_does_not_import_matplotlib():
    code = (
        "import sys, hierzoo, hierzoo.report, hierzoo.cli, hierzoo.plots, hierzoo.tables; "
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


GOLDEN_SUMMARY = [
    "results                  HCA                Leaf                 POR               S-POR"
    "                 TOR                 hF1             Consist     n",
    "bioclip2  52.00 [48.9, 55.1]  74.00 [71.3, 76.7]  83.00 [80.7, 85.3]  71.00 [68.2, 73.8]  "
    "75.00 [72.3, 77.7]  83.00 [80.7, 85.3]  91.00 [89.2, 92.8]  1000",
    "per level (bioclip2): order=93.00 [91.4, 94.6]  family=86.00 [83.8, 88.2]  "
    "genus=79.00 [76.5, 81.5]  species=74.00 [71.3, 76.7]",
    "errors: 1; 2.0 questions/s, 0.0 images/s on cpu",
]


def test_format_table_and_summary_unchanged():
    """The tables, character for character (a change to them is a change users see)."""
    s = RUNS["bioclip2-cub"]
    text = format_summary({**s, "provenance": {"questions_per_second": 2.0, "device": "cpu"}})
    assert text.splitlines() == GOLDEN_SUMMARY
    assert format_table([("x", {**s["metrics"], "n": 5})]).splitlines()[:2] == [
        "results                 HCA                Leaf                 POR               S-POR"
        "                 TOR                 hF1             Consist  n",
        "x        52.00 [48.9, 55.1]  74.00 [71.3, 76.7]  83.00 [80.7, 85.3]  71.00 [68.2, 73.8]  "
        "75.00 [72.3, 77.7]  83.00 [80.7, 85.3]  91.00 [89.2, 92.8]  5",
    ]


def test_one_table_formatter_for_text_and_markdown():
    from hierzoo.tables import markdown_table, text_table

    rows = [["bioclip2", "55.6", "7"], ["qwen2.5-vl-7b", "3.25", "1234"]]
    assert text_table(["model", "HCA", "n"], rows) == [
        "model           HCA     n",
        "bioclip2       55.6     7",
        "qwen2.5-vl-7b  3.25  1234",
    ]
    assert text_table(["a", "b"], [["xx", "y"]], left=0) == [" a  b", "xx  y"]
    assert text_table(["a", "b"], [["xx", "y"]], left=2) == ["a   b", "xx  y"]
    assert markdown_table(["model", "HCA"], [["m|x", "1.0"]], right={1}) == [
        "| model | HCA |",
        "| --- | ---: |",
        "| m|x | 1.0 |",
    ]


def test_generated_answers_show_their_unknowns_and_agreement(tmp_path, capsys):
    generated = {
        **RUNS["qwen-cub"],
        "answer": "generate",
        "n_answers": 4000,
        "n_unknown": 37,
        "n_unknown_per_level": {"level1": 10, "level2": 9, "level3": 9, "level4": 9},
        "answer_agreement": 93.45,
    }
    root = write_runs(tmp_path / "runs", {"qwen-logits": RUNS["qwen-cub"], "qwen-gen": generated})
    out = tmp_path / "rep"
    assert main(["report", str(root), "--out", str(out), "--no-plots"]) == 0
    md = (out / "report.md").read_text()
    table = _md_rows(md)
    header, body = table[0], table[2:]
    rows = {r[0]: dict(zip(header, r)) for r in body}
    assert header[-4:] == ["answer", "Unknown", "Agree", "run"]
    assert rows["qwen2.5-vl-7b (generate)"]["Unknown"] == "37"
    assert rows["qwen2.5-vl-7b (generate)"]["Agree"] == "93.5"
    assert rows["qwen2.5-vl-7b"]["answer"] == "logits" and rows["qwen2.5-vl-7b"]["Unknown"] == "-"
    assert "Unknown: replies naming no option (scored wrong)" in md
    with (out / "report.csv").open() as f:
        csv_rows = {Path(r["run"]).name: r for r in csv.DictReader(f)}
    assert csv_rows["qwen-gen"]["n_unknown"] == "37"
    assert csv_rows["qwen-gen"]["answer_agreement"] == "93.45"
    assert csv_rows["qwen-logits"]["n_unknown"] == ""
    text = format_summary(generated)
    assert text.splitlines()[-1] == (
        "generated replies: 37 of 4000 Unknown (0.9%, scored wrong); the parsed letter is the "
        "first token's most probable letter in 93.5%"
    )
    # reports of runs that read logits only are unchanged: no answer columns
    only = write_runs(tmp_path / "only", {"qwen-logits": RUNS["qwen-cub"]})
    assert main(["report", str(only), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    assert "Unknown" not in (tmp_path / "o" / "report.md").read_text()


def test_runs_of_other_question_sets_are_told_apart(tmp_path):
    """Two question sets of one taxonomy (random and similar distractors): a questions column,
    and each set ranked on its own; one label for two sets (another --limit) gets their hashes."""
    from hierzoo.report import format_markdown, load_runs, report_table

    def run(model, questions, digest, hca, seed):
        s = fake_summary(model, "cub200", CUB, [0.9, 0.8, 0.7, 0.6], hca, seed=seed)
        s["questions"] = questions
        s["provenance"]["identity"] = {"questions": digest}
        return s

    runs = {
        "a-random": run("model-a", "cub200-random", "aa" * 32, 0.50, 1),
        "b-similar": run("model-b", "cub200-similar", "bb" * 32, 0.30, 2),
        "c-random": run("model-c", "cub200-random", "aa" * 32, 0.60, 3),
    }
    rows = report_table(load_runs([write_runs(tmp_path / "runs", runs)]))
    assert [(r["model"], r["questions"]) for r in rows] == [
        ("model-c", "cub200-random"),
        ("model-a", "cub200-random"),
        ("model-b", "cub200-similar"),
    ]
    assert "| model | taxonomy | questions | task |" in format_markdown(rows)
    same = {k: dict(v, questions="cub200-random") for k, v in runs.items()}
    rows = report_table(load_runs([write_runs(tmp_path / "same-label", same)]))
    assert sorted(r["questions"] for r in rows) == [
        "cub200-random #aaaaaa",
        "cub200-random #aaaaaa",
        "cub200-random #bbbbbb",
    ]
    one = {k: v for k, v in runs.items() if k != "b-similar"}
    assert all(
        "questions" not in r for r in report_table(load_runs([write_runs(tmp_path / "one", one)]))
    )


def test_a_terminal_that_cannot_show_a_name_gets_it_escaped(tmp_path):
    """Under an ASCII-only output (PYTHONIOENCODING=ascii, the C locale) a model name it cannot
    encode is printed escaped; the command does not fail."""
    import os

    runs = {
        "r\u00fc": fake_summary("\u6a21\u578b-\u00fc", "cub200", CUB, [0.9, 0.8, 0.7, 0.6], 0.5)
    }
    root = write_runs(tmp_path / "runs", runs)
    done = subprocess.run(
        [sys.executable, "-m", "hierzoo", "report", str(root), "--out", str(tmp_path / "rep")]
        + ["--no-plots"],
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"\\u6a21\\u578b-\\xfc" in done.stdout
    assert "\u6a21\u578b-\u00fc" in (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
