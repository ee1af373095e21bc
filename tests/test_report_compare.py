"""hierzoo report: a vision LLM's text-mode run next to its LLM's run on the same questions
(synthetic summary.json files)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_report import CUB, _md_rows, _png_size, fake_summary, write_runs

from hierzoo.cli import main
from hierzoo.report import PairError, comparison_table, load_runs, pair_runs

Q1, Q2 = "a" * 64, "b" * 64


def text_run(model: str, level_acc, hca, questions=Q1, mode="text", seed=0, **identity) -> dict:
    s = fake_summary(model, "cub200", CUB, level_acc, hca, seed=seed)
    s["mode"] = mode
    s["model_label"] = Path(model).name
    s["provenance"]["identity"] = {
        "questions": questions,
        "taxonomy": "cub200:0123456789abcdef",
        "task": "questions",
        "answer": "logits",
        "circular": False,
        "mode": mode,
        **identity,
    }
    return s


RUNS = {
    "qwen-vl-text": text_run("qwen2.5-vl-7b", [0.80, 0.60, 0.50, 1.0], 0.30, seed=1),
    "qwen-llm": text_run("qwen2.5-7b-instruct", [0.90, 0.75, 0.70, 1.0], 0.52, seed=2),
    "qwen-llm-other-questions": text_run(
        "qwen2.5-7b-instruct", [0.9, 0.7, 0.6, 1.0], 0.4, questions=Q2
    ),
    "qwen-llm-generated": text_run(
        "qwen2.5-7b-instruct", [0.9, 0.7, 0.6, 1.0], 0.4, answer="generate"
    ),
    "qwen-base": text_run("qwen2.5-7b", [0.85, 0.7, 0.6, 1.0], 0.45, seed=3),
    "qwen-vl-image": text_run("qwen2.5-vl-7b", [0.9, 0.8, 0.7, 0.6], 0.35, mode="image"),
    "llava-text": text_run("llava-hf/llava-onevision-qwen2-7b-ov-hf", [0.7, 0.5, 0.4, 1.0], 0.2),
    "qwen2-llm": text_run("qwen2-7b-instruct", [0.85, 0.65, 0.55, 1.0], 0.35, seed=4),
    "my-vlm": text_run("/models/my-vlm", [0.6, 0.5, 0.4, 1.0], 0.15, seed=5),
    "my-llm": text_run("/models/my-llm", [0.7, 0.6, 0.5, 1.0], 0.25, seed=6),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_runs(tmp_path_factory.mktemp("pairs"), RUNS)


def _names(pairs) -> list[tuple[str, str]]:
    return [(Path(v["run_dir"]).name, Path(m["run_dir"]).name) for v, m in pairs]


def test_zoo_models_pair_by_their_base_llm(root):
    runs = load_runs([root])
    assert sorted(_names(pair_runs(runs))) == [
        ("llava-text", "qwen2-llm"),  # run by its hub id: still the zoo's llava-ov-7b
        ("qwen-vl-text", "qwen-llm"),  # not the other questions, answers, base model, image run
    ]


def test_explicit_pairs_for_models_outside_the_zoo(root):
    runs = load_runs([root / "qwen-vl-text", root / "qwen-llm"])
    pairs = pair_runs(runs, [(root / "my-vlm", root / "my-llm" / "summary.json")])
    assert _names(pairs) == [("my-vlm", "my-llm"), ("qwen-vl-text", "qwen-llm")]
    with pytest.raises(PairError, match="question sets .* differ"):
        pair_runs(runs, [(root / "qwen-vl-text", root / "qwen-llm-other-questions")])
    with pytest.raises(PairError, match="qwen-vl-image was run in image mode"):
        pair_runs(runs, [(root / "qwen-vl-image", root / "qwen-llm")])
    with pytest.raises(PairError, match="answer differ"):
        pair_runs(runs, [(root / "qwen-vl-text", root / "qwen-llm-generated")])
    bare = dict(RUNS["my-llm"], provenance={})
    write_runs(root.parent / "bare", {"bare": bare})
    with pytest.raises(PairError, match="records no run identity"):
        pair_runs(runs, [(root / "my-vlm", root.parent / "bare" / "bare")])


def test_a_pair_names_one_run_on_each_side(root):
    runs = load_runs([root / "my-vlm"])
    with pytest.raises(PairError, match="the same run on both sides"):
        pair_runs(runs, [(root / "my-vlm", root / "my-vlm" / "summary.json")])
    with pytest.raises(PairError, match="is not a run directory"):
        pair_runs(runs, [(root / "my-vlm", root)])  # a folder of runs


def test_unfinished_runs_are_named_not_dropped(root, tmp_path):
    folder = write_runs(tmp_path / "runs", {"done": RUNS["my-vlm"]})
    (folder / "half").mkdir()
    (folder / "half" / "run.json").write_text("{}")
    with pytest.warns(UserWarning, match=r"half: an unfinished run \(no summary.json\) is left"):
        assert [Path(r["run_dir"]).name for r in load_runs([folder])] == ["done"]
    with pytest.raises(FileNotFoundError, match=r"half: an unfinished run"):
        load_runs([folder / "half"])


def test_the_comparison_rows_are_the_runs_and_their_difference(root):
    runs = load_runs([root / "qwen-vl-text", root / "qwen-llm"])
    rows = comparison_table(pair_runs(runs))
    assert [r["role"] for r in rows] == ["vlm", "llm", "difference"]
    vlm, llm = RUNS["qwen-vl-text"]["metrics"], RUNS["qwen-llm"]["metrics"]
    assert (
        rows[0]["model"] == "qwen2.5-vl-7b (text)"
        and rows[1]["model"] == "qwen2.5-7b-instruct (text)"
    )
    for key in ("hca", "leaf_acc", "por", "strict_por"):
        assert rows[0][key] == vlm[key]["value"] and rows[1][key] == llm[key]["value"]
        assert rows[2][key] == pytest.approx(vlm[key]["value"] - llm[key]["value"])
    for level, a, b in zip(CUB, vlm["level_acc"], llm["level_acc"]):
        assert rows[2][f"acc_{level}"] == pytest.approx(a["value"] - b["value"])
    assert rows[2]["acc_genus"] == pytest.approx(50.0 - 70.0)


def test_report_writes_the_comparison(root, tmp_path, capsys):
    out = tmp_path / "report"
    pair = f"{root / 'my-vlm'}={root / 'my-llm'}"
    assert main(["report", str(root), "--out", str(out), "--pair", pair]) == 0
    md = (out / "report.md").read_text()
    assert "## Vision LLMs and their LLMs, text mode" in md
    section = md[md.index("## Vision LLMs and their LLMs") :]
    table = _md_rows(section)
    assert table[0] == ["model", "n", "HCA", "Leaf", "POR", "S-POR", *CUB]
    body = {r[0]: r for r in table[2:]}
    assert body["qwen2.5-vl-7b (text)"][2] == "30.0"
    assert len(table[2:]) == 9  # three pairs, three rows each
    diffs = [r[2] for r in table[2:] if r[0].startswith("difference")]
    assert diffs == ["-10.0", "-15.0", "-22.0"]  # the explicit pair first, then the zoo's
    with open(out / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {r["role"] for r in rows} == {"vlm", "llm", "difference"}
    w, h = _png_size(out / "vlm_vs_llm.png")
    assert w > 600 and h > 200
    assert "vlm_vs_llm.png" in capsys.readouterr().out


def test_report_refuses_a_pair_it_cannot_compare(root, tmp_path, capsys):
    bad = f"{root / 'qwen-vl-text'}={root / 'qwen-llm-other-questions'}"
    assert main(["report", str(root), "--out", str(tmp_path / "r"), "--pair", bad]) == 2
    assert "question sets" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", str(root), "--pair", "only-one-run"])
    assert "VLM_RUN=LLM_RUN" in capsys.readouterr().err


def test_no_pairs_no_comparison(tmp_path):
    root = write_runs(tmp_path / "runs", {"a": RUNS["qwen-llm"], "b": RUNS["qwen-base"]})
    out = tmp_path / "report"
    assert main(["report", str(root), "--out", str(out), "--no-plots"]) == 0
    assert "Vision LLMs and their LLMs" not in (out / "report.md").read_text()
    assert not (out / "comparison.csv").exists()
    json.loads((root / "a" / "summary.json").read_text())  # the inputs are left as they were
