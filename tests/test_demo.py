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
    # running it again resumes: nothing is redone, the summary of the run that did the work stays
    before = (out / "run" / "summary.json").read_text()
    assert main(["demo", "--out", str(out)]) == 0
    assert (out / "run" / "summary.json").read_text() == before
    assert "40 of 40 samples already done" in capsys.readouterr().err


def test_the_hint_for_real_images_names_a_folder_that_works(tmp_path):
    """The demo's closing hint: unpack CUB_200_2011.tgz into /data and pass --image-root
    /data/CUB_200_2011. Built here (under tmp_path instead of /data) with the one image the
    hint names, the bundled question set finds that image from the folder the hint passes, and
    from the folder above it."""
    from hierzoo.demo import CUB_FIRST_IMAGE, CUB_ROOT, REAL_COMMAND, REAL_HINT
    from hierzoo.tasks import read_questions

    assert f"--image-root {CUB_ROOT} " in REAL_COMMAND and REAL_COMMAND in REAL_HINT
    assert f"{CUB_ROOT}/{CUB_FIRST_IMAGE}" in REAL_HINT and "/.." not in REAL_HINT
    unpacked = tmp_path / CUB_ROOT.lstrip("/")
    image = unpacked / CUB_FIRST_IMAGE
    image.parent.mkdir(parents=True)
    image.write_bytes(b"jpeg")
    for root in (unpacked, unpacked.parent):
        first = read_questions("cub200-similar", image_root=root)[0]
        assert first.path is not None and first.path.resolve() == image.resolve()
