"""The run directory of hierzoo eval: a failed start claims nothing, a run's identity is what it
computes from, damaged lines are redone, one run at a time, strict JSON, clear errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from cub_images import write_cub_images
from PIL import Image

import hierzoo.runner
from hierzoo.cli import main
from hierzoo.models.tiny_clip import build_tiny_openclip
from hierzoo.rundir import PredictionWriter, RunError, RunLock, read_done
from hierzoo.tasks import read_questions

N = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rundir")
    model = build_tiny_openclip(root / "model", seed=3)
    other = build_tiny_openclip(root / "other", seed=4)
    write_cub_images(root, N)
    return {"root": root, "model": str(model), "other": str(other), "images": str(root / "data")}


def _args(setup, out, *extra, model=None, root=None):
    return [
        "eval",
        "--model",
        model or setup["model"],
        "--questions",
        "cub200-similar",
        "--image-root",
        root or setup["images"],
        "--limit",
        str(N),
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


def _exit_code(args):
    """main's exit status, whether a mistake is caught at parse time (SystemExit) or later."""
    try:
        return main(args)
    except SystemExit as e:
        return e.code


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _summary(out):
    return json.loads((Path(out) / "summary.json").read_text())


@pytest.mark.parametrize(
    "bad",
    [
        ["--model", "bioclp2"],
        ["--device", "gpu0"],
        ["--circular"],
        ["--template", "a {} {}"],
        ["--template", "{oops}"],
        ["--prompt-variant", "2"],
        ["--protocol", "binary"],
    ],
    ids=[
        "model-typo",
        "device",
        "circular-clip",
        "template-two-slots",
        "template-name",
        "variant",
        "protocol-clip",
    ],
)
def test_a_failed_start_claims_nothing(setup, tmp_path, capsys, bad):
    out = tmp_path / "run"
    args = _args(setup, out)
    if bad[0] == "--model":
        args[args.index("--model") + 1] = bad[1]
    elif bad[0] == "--device":
        args[args.index("--device") + 1] = bad[1]
    else:
        args += bad
    assert _exit_code(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 3 and "Traceback" not in err
    assert bad[-1] in err or bad[0].lstrip("-") in err.lower()
    assert not out.exists()  # nothing claimed: the corrected command runs in the same folder
    assert main(_args(setup, out)) == 0


def test_cuda_without_cuda_claims_nothing(setup, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    args = _args(setup, out)
    args[args.index("--device") + 1] = "cuda"
    assert main(args) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not out.exists()


def test_an_existing_folder_is_left_as_it_was(setup, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = _args(setup, out)
    args[args.index("--model") + 1] = "bioclp2"
    assert main(args) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def _labelled_folder(folder: Path, seed: int) -> Path:
    """Six random images under ``folder/img`` and ``folder/labels.csv`` naming their leaves."""
    (folder / "img").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    lines = ["image,leaf"]
    for i, leaf in enumerate(["Laysan Albatross", "Sooty Albatross", "Common Raven"] * 2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            folder / "img" / f"{i}.jpg"
        )
        lines.append(f"img/{i}.jpg,{leaf}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def _broken_copy(source: str | Path, to: Path) -> Path:
    """A copy of ``source`` in which no JPEG can be read."""
    shutil.copytree(source, to)
    for f in to.rglob("*.jpg"):
        f.write_bytes(b"not a jpeg")
    return to


def test_labels_csv_paths_are_relative_to_the_csv_folder(setup, tmp_path, capsys):
    folder = _labelled_folder(tmp_path / "mine", seed=1)
    base = ["eval", "--model", setup["model"], "--taxonomy", "cub200", "--no-progress"]
    base += ["--device", "cpu", "--labels", str(folder / "labels.csv")]
    assert main([*base, "--out", str(tmp_path / "ok")]) == 0
    assert _summary(tmp_path / "ok")["n"] == 6
    # --images names another root: none resolve, so it stops before the model loads
    out = tmp_path / "bad"
    assert main([*base, "--images", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--images" in err and "img/0.jpg" in err and not out.exists()


def test_a_rerun_with_the_right_root_redoes_a_failed_run(setup, tmp_path, capsys):
    broken = _broken_copy(setup["images"], tmp_path / "broken")
    out = tmp_path / "run"
    assert main(_args(setup, out, root=str(broken))) == 1
    err = capsys.readouterr().err
    assert "every sample failed" in err and "--retry-errors" in err
    assert main(_args(setup, out)) == 0  # only failed samples: redone under the new root
    assert _summary(out)["n"] == N and _summary(out)["n_errors"] == 0


def test_partial_errors_suggest_the_retry_line_and_it_works(setup, tmp_path, capsys):
    images = tmp_path / "imgs"
    shutil.copytree(setup["images"], images)
    files = sorted(images.rglob("*.jpg"))
    files[0].write_bytes(b"garbage")
    out = tmp_path / "run"
    assert main(_args(setup, out, root=str(images))) == 0
    err = capsys.readouterr().err
    assert f"1 of {N} samples failed" in err
    retry = err.split("redo them with:\n")[1].strip()
    assert retry.startswith("hierzoo eval") and retry.endswith("--retry-errors")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(files[0], format="JPEG")
    assert main(_args(setup, out, "--retry-errors", root=str(images))) == 0
    assert _summary(out)["n_errors"] == 0 and _summary(out)["provenance"]["images_this_run"] == 1


def test_a_retry_killed_before_its_summary_leaves_no_stale_summary(setup, tmp_path, capsys):
    """A ``--retry-errors`` run killed after its rows were written but before ``summary.json``:
    the next run has nothing to do and rebuilds the summary from the rows (the old one counted
    the errors that were since redone)."""
    images = tmp_path / "imgs"
    shutil.copytree(setup["images"], images)
    files = sorted(images.rglob("*.jpg"))
    files[0].write_bytes(b"garbage")
    out = tmp_path / "run"
    assert main(_args(setup, out, root=str(images))) == 0
    stale = (out / "summary.json").read_text()
    assert json.loads(stale)["n_errors"] == 1
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(files[0], format="JPEG")
    assert main(_args(setup, out, "--retry-errors", root=str(images))) == 0
    (out / "summary.json").write_text(stale)  # as if killed just before the summary
    capsys.readouterr()
    assert main(_args(setup, out, root=str(images))) == 0
    assert f"{N} of {N} samples already done" in capsys.readouterr().err
    assert _summary(out)["n_errors"] == 0 and _summary(out)["n"] == N


def test_a_reclaim_interrupted_after_its_rows_were_dropped_is_taken_again(setup, tmp_path):
    """Reclaiming a folder of failed samples drops them, then records the new settings; killed
    in between (the old settings, no rows), the same command reclaims it again."""
    broken = _broken_copy(setup["images"], tmp_path / "broken")
    out = tmp_path / "run"
    assert main(_args(setup, out, root=str(broken))) == 1
    (out / "predictions.jsonl").unlink()  # dropped; run.json still holds the broken root
    assert main(_args(setup, out)) == 0
    assert _summary(out)["n"] == N and _summary(out)["n_errors"] == 0


def test_a_reclaimed_folder_holds_the_question_set_it_ran(setup, tmp_path):
    """Questions built by the run (here from a labels file) are written again when a folder of
    failed samples is reclaimed under other settings: ``questions.jsonl`` is what was asked."""
    good = _labelled_folder(tmp_path / "good", seed=2)
    broken = _broken_copy(good, tmp_path / "broken")
    base = ["eval", "--model", setup["model"], "--taxonomy", "cub200", "--no-progress"]
    base += ["--device", "cpu", "--distractors", "similar"]
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    assert (
        main([*base, "--labels", str(broken / "labels.csv"), "--seed", "1", "--out", str(out)]) == 1
    )
    second = [*base, "--labels", str(good / "labels.csv"), "--seed", "2"]
    assert main([*second, "--out", str(out)]) == 0
    assert main([*second, "--out", str(fresh)]) == 0
    asked = (out / "questions.jsonl").read_text()
    assert asked == (fresh / "questions.jsonl").read_text() and str(broken) not in asked


def test_nothing_left_to_do_does_not_load_the_model(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(_args(setup, out)) == 0
    before = (out / "summary.json").read_text()

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(hierzoo.runner, "load_model", no_load)
    assert main(_args(setup, out)) == 0
    assert f"{N} of {N} samples already done" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before


# ----------------------------------------------------------------- a run's identity
def _refused(capsys, *words):
    err = capsys.readouterr().err
    return all(w in err for w in words) and "other settings" in err


def test_a_model_directory_replaced_in_place_is_another_model(setup, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(setup["model"], model)
    out = tmp_path / "run"
    assert main(_args(setup, out, model=str(model))) == 0
    shutil.rmtree(model)
    shutil.copytree(setup["other"], model)  # same path, other weights
    assert main(_args(setup, out, model=str(model))) == 2
    assert _refused(capsys, "model_content")
    assert len(_lines(out / "predictions.jsonl")) == N


def test_the_same_directory_written_differently_is_the_same_model(setup, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(_args(setup, out)) == 0
    monkeypatch.chdir(Path(setup["model"]).parent)
    relative = os.path.relpath(setup["model"]) + "/"
    assert main(_args(setup, out, model=relative)) == 0
    assert len(_lines(out / "predictions.jsonl")) == N
    # a copy elsewhere holds the same files: the same model
    copy = tmp_path / "copy"
    shutil.copytree(setup["model"], copy)
    assert main(_args(setup, out, model=str(copy))) == 0


def test_a_question_file_overwritten_in_place_is_another_question_set(setup, tmp_path, capsys):
    rows = [q.to_dict() for q in read_questions("cub200-similar")[: N + 2]]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows[:N]))
    out = tmp_path / "run"
    args = _args(setup, out)
    args[args.index("--questions") + 1] = str(qfile)
    assert main(args) == 0
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows[2:]))
    assert main(args) == 2
    assert _refused(capsys, "questions")


def test_another_image_root_is_another_run(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(setup, out)) == 0
    moved = tmp_path / "moved"
    shutil.copytree(setup["images"], moved)
    assert main(_args(setup, out, root=str(moved))) == 2
    assert _refused(capsys, "image_root")


@pytest.mark.parametrize(
    "extra", [["--dtype", "bfloat16"], ["--worker-decode", "tensor"]], ids=["dtype", "decode"]
)
def test_options_that_change_numbers_are_part_of_the_identity(setup, tmp_path, capsys, extra):
    out = tmp_path / "run"
    assert main(_args(setup, out)) == 0
    assert main(_args(setup, out, *extra)) == 2
    assert _refused(capsys, "dtype" if "--dtype" in extra else "worker_decode")


def test_a_folder_without_run_json_is_not_adopted_by_another_run(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(setup, out)) == 0
    (out / "run.json").unlink()
    assert main(_args(setup, out, model=setup["other"])) == 2
    assert "holds results of another run" in capsys.readouterr().err
    # the same run finds its own lines by their run id and resumes
    assert main(_args(setup, out)) == 0
    assert len(_lines(out / "predictions.jsonl")) == N


def test_a_damaged_run_json_is_warned_and_the_lines_decide(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(setup, out)) == 0
    (out / "run.json").write_text("{not json")
    assert main(_args(setup, out)) == 0
    err = capsys.readouterr().err
    assert "run.json is damaged" in err and "Traceback" not in err
    assert (
        json.loads((out / "run.json").read_text())["run"]
        == _lines(out / "predictions.jsonl")[0]["run"]
    )
    assert _summary(out)["provenance"]["images_this_run"] == 0


def test_a_bundled_question_set_knows_its_taxonomy(setup, tmp_path):
    out = tmp_path / "run"
    assert main(_args(setup, out)) == 0
    assert _summary(out)["taxonomy"] == "cub200"


# ----------------------------------------------------------------- lines, locks, files
def test_a_damaged_middle_line_costs_only_itself(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(setup, out)) == 0
    preds = out / "predictions.jsonl"
    lines = preds.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:20] + "\n"  # a line damaged in the middle of the file
    preds.write_text("".join(lines))
    assert main(_args(setup, out)) == 0
    assert "damaged line(s) [3]" in capsys.readouterr().err
    rows = _lines(preds)
    assert [r["sample"] for r in rows] == list(range(N))
    assert _summary(out)["provenance"]["images_this_run"] == 1


def test_read_done_keeps_every_valid_line(tmp_path):
    p = tmp_path / "p.jsonl"
    good = [json.dumps({"sample": i, "run": "r"}) + "\n" for i in range(5)]
    p.write_text(good[0] + good[1] + '{"sample": 2, "ru\n' + good[3] + "garbage\n" + good[4][:-1])
    done, bad = read_done(p, repair=True, run="r")
    assert sorted(done) == [0, 1, 3] and bad == [3, 5, 6]
    assert p.read_text() == good[0] + good[1] + good[3]
    with pytest.raises(RunError, match="another run"):
        read_done(p, repair=False, run="s")


def test_a_second_run_into_the_same_folder_is_refused_naming_the_holder(setup, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock = RunLock(out)
    lock.acquire()
    try:
        assert main(_args(setup, out)) == 2
        err = capsys.readouterr().err
        assert "in use by another hierzoo eval" in err and f"pid {os.getpid()}" in err
    finally:
        lock.release()
    assert main(_args(setup, out)) == 0
    assert not (out / ".lock").exists()


def test_predictions_are_strict_json_and_a_full_disk_says_what_was_kept(tmp_path):
    p = tmp_path / "p.jsonl"
    w = PredictionWriter(p)
    w.write([{"sample": 0, "image": "a.jpg", "label": "x", "probs_level1": {"A": float("nan")}}])
    w.close()
    row = json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert "non-finite" in row["error"] and row["sample"] == 0
    full = PredictionWriter(Path("/dev/full"))
    with pytest.raises(RunError, match="disk is full.*run the same command again"):
        full.write([{"sample": 0}])
    full.close()


def test_out_must_be_a_folder_that_can_be_written(setup, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(_args(setup, f)) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(_args(setup, f / "sub")) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err
