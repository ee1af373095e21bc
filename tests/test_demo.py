from __future__ import annotations

import json

from hierzoo.cli import main


def test_demo_runs_end_to_end_offline(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "random weights" in text and "chance" in text and "hierzoo eval --model bioclip2" in text
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["n"] == 40 and summary["taxonomy"] == "cub200"
    assert len((out / "run" / "predictions.jsonl").read_text().splitlines()) == 40
    for name in (
        "report.md",
        "report.csv",
        "hca_vs_leaf.png",
        "level_accuracy.png",
        "first_error.png",
    ):
        assert (out / "report" / name).stat().st_size > 100
    # running it again resumes: nothing is redone
    assert main(["demo", "--out", str(out)]) == 0
    assert (
        json.loads((out / "run" / "summary.json").read_text())["provenance"]["images_this_run"] == 0
    )
