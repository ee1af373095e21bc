"""hierzoo eval: end to end on a tiny model, resume after SIGKILL, bad inputs, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cub_images import write_cub_images
from PIL import Image

from hierzoo.cli import main
from hierzoo.metrics import read_results, score_results
from hierzoo.models.tiny_clip import build_tiny_openclip
from hierzoo.tasks import read_questions

N = 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model = build_tiny_openclip(root / "model", seed=3)
    rng = np.random.default_rng(0)
    write_cub_images(root, N, rng=rng)  # the folder's images below go on drawing from rng
    folder = root / "folder"
    for i, leaf in enumerate(["Laysan Albatross", "Sooty Albatross", "Common Raven"]):
        (folder / leaf).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                folder / leaf / f"{i}{j}.jpg"
            )
    return {"root": root, "model": str(model), "images": str(root / "data"), "folder": str(folder)}


def _args(setup, out, *extra):
    return [
        "eval",
        "--model",
        setup["model"],
        "--questions",
        "cub200-similar",
        "--image-root",
        setup["images"],
        "--taxonomy",
        "cub200",
        "--limit",
        str(N),
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_eval_end_to_end(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(setup, out, "--batch-size", "5")) == 0
    rows = _lines(out / "predictions.jsonl")
    assert [r["sample"] for r in rows] == list(range(N))
    for r in rows:
        for k in range(1, 5):
            assert r[f"predicted_level{k}"] in r[f"choices_level{k}"].values()
            assert set(r[f"probs_level{k}"]) == set(r[f"choices_level{k}"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == N and summary["n_errors"] == 0
    assert set(summary["metrics"]) >= {
        "hca",
        "leaf_acc",
        "por",
        "strict_por",
        "tor",
        "hf1",
        "consistency",
        "level_acc",
    }
    assert set(summary["metrics"]["hca"]) == {"value", "low", "high"}
    prov = summary["provenance"]
    assert (
        prov["model_class"] == "OpenClipClassifier"
        and prov["seed"] == 42
        and prov["versions"]["torch"]
    )
    assert prov["questions_per_second"] > 0 and prov["device"].startswith("cpu")
    rescored = score_results(
        read_results(out / "predictions.jsonl"),
        taxonomy=__import__("hierzoo").load_taxonomy("cub200"),
    )
    assert rescored["hca"] == pytest.approx(summary["metrics"]["hca"]["value"])
    assert "HCA" in capsys.readouterr().out


def test_resume_after_sigkill_and_torn_line(setup, tmp_path):
    """The run blocks after its third batch (tests/gated.py), so it is killed mid-run however
    fast or loaded the machine."""
    from gated import gated_command

    out = tmp_path / "run"
    cmd = gated_command(tmp_path, _args(setup, out, "--batch-size", "1"), after=3)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    preds = out / "predictions.jsonl"
    try:
        while proc.poll() is None:  # a poll, not a time limit: it stops when the lines are there
            if preds.exists() and preds.read_text().count("\n") >= 3:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.wait() == -signal.SIGKILL
    before = _lines(preds)
    assert 3 <= len(before) < N
    with open(preds, "a") as f:
        f.write('{"sample": 99, "image": "torn')  # a write cut short
    assert main(_args(setup, out)) == 0
    rows = _lines(preds)
    assert [r["sample"] for r in rows] == list(range(N))
    assert before and all(r in rows for r in before)  # finished lines are kept as they were
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["images_this_run"] == N - len(before)
    # a finished run resumed does nothing and changes nothing: the summary keeps the
    # provenance of the run that did the work
    before_summary = (out / "summary.json").read_text()
    assert main(_args(setup, out)) == 0
    assert _lines(preds) == rows
    assert (out / "summary.json").read_text() == before_summary


def test_bad_images_are_recorded_and_the_run_goes_on(setup, tmp_path, capsys):
    images = tmp_path / "imgs"
    import shutil

    shutil.copytree(setup["images"], images)
    files = sorted(images.rglob("*.jpg"))
    files[0].unlink()
    files[1].write_bytes(b"")
    files[2].write_bytes(b"garbage")
    out = tmp_path / "run"
    args = _args(setup, out)
    args[args.index("--image-root") + 1] = str(images)
    assert main(args) == 0
    rows = _lines(out / "predictions.jsonl")
    errors = [r for r in rows if "error" in r]
    assert len(errors) == 3 and len(rows) == N
    assert json.loads((out / "summary.json").read_text())["n_errors"] == 3
    # a wrong root stops before the model loads, naming a path tried and the flag, and claims
    # nothing: the same --out then takes the right root
    out2 = tmp_path / "all-bad"
    args = _args(setup, out2)
    args[args.index("--image-root") + 1] = str(tmp_path / "nowhere")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--image-root" in err and "Black_Footed_Albatross_0001_796111.jpg" in err
    assert not out2.exists()
    assert main(_args(setup, out2)) == 0


def test_bad_inputs_fail_before_any_work(setup, tmp_path, capsys):
    qs = [
        json.loads(x)
        for x in (
            Path(__file__).parent.parent / "hierzoo/data/questions/CUB200_with_similar_choice.jsonl"
        )
        .read_text()
        .splitlines()[:3]
    ]
    bad = dict(qs[0], choices_level2=["alcidae", "laridae", "corvidae", "sternidae"])
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(bad) + "\n")
    code = main(
        [
            "eval",
            "--model",
            setup["model"],
            "--questions",
            str(f),
            "--out",
            str(tmp_path / "o1"),
            "--no-progress",
        ]
    )
    assert (
        code == 2 and "'diomedeidae' of level 2 is not among its options" in capsys.readouterr().err
    )
    odd = dict(qs[0], choices_level3=["stercorarius", "phoebastria", "fregata", "not-a-genus"])
    f.write_text(json.dumps(odd) + "\n")
    code = main(
        [
            "eval",
            "--model",
            setup["model"],
            "--questions",
            str(f),
            "--taxonomy",
            "cub200",
            "--out",
            str(tmp_path / "o2"),
            "--no-progress",
        ]
    )
    assert code == 2 and "['not-a-genus']" in capsys.readouterr().err
    # a level left out above a given one: refused before the model loads, both ways it is written
    args = ["eval", "--model", setup["model"], "--questions", str(f), "--taxonomy", "cub200"]
    for dropped, says in [
        (("level3",), "question 1 (image '/projectnb"),
        (("level3", "choices_level3"), "bad.jsonl:2: level3 and choices_level3 are missing, but"),
    ]:
        gap = {k: v for k, v in qs[1].items() if k not in dropped}
        f.write_text(json.dumps(qs[0]) + "\n" + json.dumps(gap) + "\n")
        code = main([*args, "--out", str(tmp_path / "o4"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and says in err and "level4" in err, err
        assert not (tmp_path / "o4").exists()
    code = main(
        [
            "eval",
            "--model",
            "bioclip3",
            "--questions",
            "cub200-similar",
            "--limit",
            "2",
            "--out",
            str(tmp_path / "o3"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "bioclip3" in err and "bioclip2" in err
    assert not (tmp_path / "o3" / "predictions.jsonl").exists()


def test_eval_says_which_level_it_left_out_and_how_to_keep_it(setup, tmp_path, capsys):
    """A question file of one order, without --taxonomy: level 1 is the same in every row and is
    left out as the root; the terminal says so and names both ways to keep it."""
    lines = (
        (Path(__file__).parent.parent / "hierzoo/data/questions/CUB200_with_similar_choice.jsonl")
        .read_text()
        .splitlines()[:3]
    )
    f = tmp_path / "albatrosses.jsonl"
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    args = ["eval", "--model", setup["model"], "--questions", str(f), "--out", str(out)]
    assert main([*args, "--image-root", setup["images"], "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "left out level1 (level 1): every scored row has the same ground truth" in printed
    assert f"give --taxonomy NAME, or score with `hierzoo score {out}/predictions.jsonl " in printed
    keep = json.loads((out / "summary.json").read_text())["left_out"]
    assert [e["level"] for e in keep] == [1]


def test_flags_the_task_would_ignore_are_refused(setup, tmp_path, capsys):
    """A flag of four-choice questions with --task path, or --strategy without it, would change
    nothing: refused before any work, naming the flag and both ways out."""
    out = tmp_path / "run"
    path = ("--task", "path")
    for extra, flag in [
        (("--strategy", "topdown"), "--strategy topdown"),
        ((*path, "--circular"), "--circular"),
        ((*path, "--keep-option-order"), "--keep-option-order"),
        ((*path, "--prompt-variant", "2"), "--prompt-variant 2"),
        ((*path, "--answer", "generate"), "--answer generate"),
    ]:
        assert main(_args(setup, out, *extra)) == 2
        err = capsys.readouterr().err
        assert flag in err and "drop" in err and not out.exists()
    assert main(_args(setup, out, *path, "--strategy", "topdown")) == 0


def test_resume_refuses_other_settings(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(setup, out, "--limit", "4")) == 0
    assert main(_args(setup, out, "--limit", "4", "--seed", "7")) == 2
    assert "seed: 42 -> 7" in capsys.readouterr().err


def test_questions_built_from_an_image_folder(setup, tmp_path):
    out = tmp_path / "run"
    args = [
        "eval",
        "--model",
        setup["model"],
        "--taxonomy",
        "cub200",
        "--images",
        setup["folder"],
        "--distractors",
        "similar",
        "--seed",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    built = read_questions(out / "questions.jsonl")
    assert len(built) == 9 and {q.label for q in built} == {
        "Laysan Albatross",
        "Sooty Albatross",
        "Common Raven",
    }
    assert len(_lines(out / "predictions.jsonl")) == 9
    path_out = tmp_path / "paths"
    args = [
        "eval",
        "--model",
        setup["model"],
        "--taxonomy",
        "cub200",
        "--images",
        setup["folder"],
        "--task",
        "path",
        "--strategy",
        "marginal",
        "--out",
        str(path_out),
        "--no-progress",
    ]
    assert main(args) == 0
    rows = _lines(path_out / "predictions.jsonl")
    assert all(r["consistent"] and len(r["predicted_path"]) == 4 for r in rows)
    summary = json.loads((path_out / "summary.json").read_text())
    assert summary["task"] == "path" and summary["metrics"]["consistency"]["value"] == 100.0


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(setup, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "hierzoo"]
    subprocess.run(base + _args(setup, one), env=env, check=True, capture_output=True)
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "hierzoo",
    ]
    res = subprocess.run(run + _args(setup, two), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (one / "predictions.jsonl").read_text() == (two / "predictions.jsonl").read_text()
    assert not list(two.glob("predictions.rank*"))
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s1["metrics"] == s2["metrics"] and s2["provenance"]["world_size"] == 2


def _join_as(rank: int, port: int) -> None:
    """What torchrun tells rank ``rank`` of two (gloo on 127.0.0.1:``port``)."""
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _run_as(rank: int, args: list[str], log: str) -> None:
    """Run the command as this rank, leave the process group, and write its exit status to
    ``log.rank{rank}``."""
    import torch.distributed as dist

    try:
        code = main(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    Path(f"{log}.rank{rank}").write_text(str(code))


def _two_ranks(worker, args: list[str], tmp_path: Path) -> list[str]:
    """``worker(rank, port, args, log)`` in two spawned processes; their exit statuses."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = str(tmp_path / "code")
    mp.spawn(worker, args=(port, args, log), nprocs=2, join=True)
    return [Path(f"{log}.rank{r}").read_text() for r in (0, 1)]


def _late_rank(rank: int, port: int, args: list[str], log: str) -> None:
    """One rank of a two-process run in which rank 1 reads what is done only once rank 0 has
    either written results or stopped at a later barrier than the one rank 1 just passed: the
    order of a loaded machine, made certain. Rank 1 waits on events, not on a clock."""
    import hierzoo.runner as runner

    _join_as(rank, port)
    out = Path(args[args.index("--out") + 1])
    entered, passed = out.parent / "rank0-barriers", [0]
    real_barrier, real_collect = runner.barrier, runner.collect_done

    def barrier(d):
        if rank == 0:
            n = int(entered.read_text()) + 1 if entered.exists() else 1
            tmp = entered.with_suffix(".tmp")
            tmp.write_text(str(n))
            tmp.replace(entered)  # whole, never read half written by the other rank
        real_barrier(d)
        passed[0] += 1

    def collect_done(folder, repair, run=None):
        shard = folder / "predictions.rank0.jsonl"
        while rank == 1 and passed[0]:
            if shard.exists() and shard.stat().st_size:
                break  # rank 0 wrote before this rank read
            if entered.exists() and int(entered.read_text()) > passed[0]:
                break  # rank 0 waits for this rank at a later barrier
            time.sleep(0.01)
        return real_collect(folder, repair, run)

    runner.barrier, runner.collect_done = barrier, collect_done
    _run_as(rank, args, log)


def test_sharded_run_splits_work_every_rank_agrees_on(setup, tmp_path):
    """A rank that reads what is done after another rank wrote its first results still takes
    its own share: no sample is left out and the run finishes (a late rank once split a shorter
    list, so every other sample of one rank was never run)."""
    out = tmp_path / "run" / "out"
    out.parent.mkdir()
    assert _two_ranks(_late_rank, _args(setup, out), tmp_path) == ["0", "0"]
    assert [r["sample"] for r in _lines(out / "predictions.jsonl")] == list(range(N))


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from hierzoo.models.tiny import build_tiny_qwen2_5_vl

    return str(build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen") / "model"))


def _vlm_args(setup, vlm_dir, out, *extra):
    args = _args(setup, out, "--limit", "6", *extra)
    args[args.index("--model") + 1] = vlm_dir
    return args


def _unmerged_rank(rank: int, port: int, args: list[str], log: str) -> None:
    """One rank of a two-process rerun of a finished but unmerged run, in which rank 1 reads
    the rank shards only once rank 0 has either merged them away or stopped to agree with the
    other ranks on what is left: the order of a loaded machine, made certain."""
    import hierzoo.rundir as rundir
    import hierzoo.runner as runner

    _join_as(rank, port)
    agreeing = Path(args[args.index("--out") + 1]).parent / "rank0-agrees"
    real_sum, real_read = runner.sum_across, rundir.read_done

    def sum_across(d, values):
        if rank == 0:
            agreeing.touch()
        return real_sum(d, values)

    def read_done(path, *a, **k):
        while rank == 1 and ".rank" in path.name and path.exists() and not agreeing.exists():
            time.sleep(0.01)
        return real_read(path, *a, **k)

    runner.sum_across, rundir.read_done = sum_across, read_done
    _run_as(rank, args, log)


def test_ranks_agree_that_a_finished_run_has_nothing_to_do(setup, tmp_path):
    """A run whose samples are all done but whose rank shards were never merged (killed just
    before the merge), rerun on two ranks: no rank reads the folder while rank 0 merges it, and
    both take the 'nothing to run' way (a late rank once saw the shards gone, went on to work
    alone and the run failed)."""
    out = tmp_path / "run" / "out"
    assert main(_args(setup, out)) == 0
    rows = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(rows[:8]))
    (out / "predictions.rank0.jsonl").write_text("".join(rows[8:16]))
    (out / "predictions.rank1.jsonl").write_text("".join(rows[16:]))
    (out / "summary.json").unlink()
    assert _two_ranks(_unmerged_rank, _args(setup, out), tmp_path) == ["0", "0"]
    assert (out / "predictions.jsonl").read_text() == "".join(rows)
    assert not list(out.glob("predictions.rank*")) and (out / "summary.json").exists()


def test_vision_llm_resumed_run_equals_a_fresh_one(setup, vlm_dir, tmp_path):
    """Option orders come from one seeded generator over the whole set, so a run resumed on
    the remaining samples asks exactly what a fresh run asks."""
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    assert main(_vlm_args(setup, vlm_dir, fresh)) == 0
    assert main(_vlm_args(setup, vlm_dir, resumed)) == 0
    preds = resumed / "predictions.jsonl"
    preds.write_text("".join(preds.read_text().splitlines(keepends=True)[:2]))
    (resumed / "summary.json").unlink()
    assert main(_vlm_args(setup, vlm_dir, resumed)) == 0
    assert preds.read_text() == (fresh / "predictions.jsonl").read_text()
    rows = _lines(preds)
    asked = [list(r["choices_level1"].values()) for r in rows]
    from hierzoo.tasks import read_questions as rq

    original = [q.choices[0] for q in rq("cub200-similar")[:6]]
    assert asked != original and all(sorted(a) == sorted(o) for a, o in zip(asked, original))
    kept = tmp_path / "kept"
    assert main(_vlm_args(setup, vlm_dir, kept, "--keep-option-order")) == 0
    assert [
        list(r["choices_level1"].values()) for r in _lines(kept / "predictions.jsonl")
    ] == original


def test_vision_llm_text_mode_records_the_named_leaf_as_given(setup, vlm_dir, tmp_path):
    out = tmp_path / "text"
    assert main(_vlm_args(setup, vlm_dir, out, "--mode", "text")) == 0
    rows = _lines(out / "predictions.jsonl")
    assert all(
        r["predicted_level4_given"] and r["predicted_level4"] == r["ground_truth_level4"]
        for r in rows
    )
    assert all("probs_level4" not in r and "probs_level3" in r for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["leaf_acc"]["value"] == 100.0 and summary["mode"] == "text"


def test_vision_llm_generated_answers_are_recorded_and_counted(setup, vlm_dir, tmp_path):
    from hierzoo.runner import generated_answer_stats

    out = tmp_path / "generate"
    assert main(_vlm_args(setup, vlm_dir, out, "--answer", "generate")) == 0
    rows = _lines(out / "predictions.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    unknown = agree = 0
    for r in rows:
        for k in range(1, 5):
            reply, letter = r[f"prediction_level{k}"], r[f"predicted_level{k}_letter"]
            first = next((c for c in "ABCD" if c in reply), "Unknown")  # the paper's rule
            assert letter == first
            name = r[f"choices_level{k}"].get(letter, "Unknown")
            assert r[f"predicted_level{k}"] == name
            unknown += letter == "Unknown"
            probs = r[f"probs_level{k}"]
            agree += letter == max(probs, key=probs.get)
    assert summary["answer"] == "generate" and summary["n_answers"] == 4 * len(rows)
    assert summary["n_unknown"] == unknown == sum(summary["n_unknown_per_level"].values())
    assert summary["answer_agreement"] == round(100 * agree / summary["n_answers"], 2)
    assert summary == {**summary, **generated_answer_stats(rows)}
    ident = json.loads((out / "run.json").read_text())["identity"]
    assert ident["answer"] == "generate" and ident["max_new_tokens"] == 10
    # the same run asked for logits has no replies; the letter probabilities are the same
    logits = tmp_path / "logits"
    assert main(_vlm_args(setup, vlm_dir, logits)) == 0
    plain = _lines(logits / "predictions.jsonl")
    assert not any(k.startswith("prediction_level") for r in plain for k in r)
    assert [r["probs_level2"] for r in plain] == [r["probs_level2"] for r in rows]
    assert "n_unknown" not in json.loads((logits / "summary.json").read_text())


def test_max_new_tokens_is_part_of_the_run(setup, vlm_dir, tmp_path, capsys):
    out = tmp_path / "short"
    assert (
        main(_vlm_args(setup, vlm_dir, out, "--answer", "generate", "--max-new-tokens", "1")) == 0
    )
    ident = json.loads((out / "run.json").read_text())["identity"]
    assert ident["max_new_tokens"] == 1
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(vlm_dir)
    for r in _lines(out / "predictions.jsonl"):
        for k in range(1, 5):
            assert len(tok(r[f"prediction_level{k}"], add_special_tokens=False)["input_ids"]) <= 1
    capsys.readouterr()
    args = _vlm_args(setup, vlm_dir, out, "--answer", "generate", "--max-new-tokens", "2")
    assert main(args) == 2
    assert "max_new_tokens" in capsys.readouterr().err
    assert main(_vlm_args(setup, vlm_dir, tmp_path / "x", "--max-new-tokens", "3")) == 2
    err = capsys.readouterr().err
    assert "--max-new-tokens 3 limits generated replies; add --answer generate" in err
    assert not (tmp_path / "x").exists()


def test_dry_run_prints_requests_and_writes_nothing(setup, vlm_dir, tmp_path, capsys):
    out = tmp_path / "dry"
    args = _vlm_args(setup, vlm_dir, out, "--answer", "generate", "--dry-run", "5")
    assert main(args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert not out.exists()
    assert [(r["sample"], r["level"]) for r in lines] == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1)]
    for r in lines:
        assert r["max_new_tokens"] == 10 and r["letters"] == "ABCD"
        assert r["text"].startswith("<|im_start|>system\n") and r["text"].endswith("assistant\n")
        (image,) = r["images"]
        assert image["tiles"] == 1 and image["tokens"] > 0 and len(image["size"]) == 2
    # the options in the run's order: the dry run shows what the run asks
    run = tmp_path / "run"
    assert main(_vlm_args(setup, vlm_dir, run, "--answer", "generate")) == 0
    first = _lines(run / "predictions.jsonl")[0]
    for r in lines[:4]:
        options = "\n".join(f"{c}. {o}" for c, o in first[f"choices_level{r['level']}"].items())
        assert options in r["text"]
    capsys.readouterr()
    assert main(_args(setup, tmp_path / "clip", "--dry-run", "2")) == 2
    err = capsys.readouterr().err
    assert "cannot describe their requests (--dry-run)" in err and not (tmp_path / "clip").exists()
    assert main(_vlm_args(setup, vlm_dir, out, "--task", "path", "--dry-run", "2")) == 2
    assert "--task path asks none" in capsys.readouterr().err


def test_unknown_answers_score_as_wrong(setup):
    """The paper's "Unknown" (no option letter in a reply) is wrong at its level, with and
    without the taxonomy, as the paper's metric (string mismatch) has it."""
    q = read_questions("cub200-similar")[0]
    right = {"image": q.image, "label": q.label}
    for k, answer in enumerate(q.answers, start=1):
        right[f"ground_truth_level{k}"] = answer
        right[f"predicted_level{k}"] = answer
    unknown = {**right, "predicted_level2": "Unknown", "predicted_level2_letter": "Unknown"}
    from hierzoo import load_taxonomy

    for taxonomy in (load_taxonomy("cub200"), None):
        scores = score_results([right, unknown], taxonomy=taxonomy)
        # (without a taxonomy one shared first level reads as the root and is not scored)
        acc = dict(zip(scores["levels"], (round(a, 6) for a in scores["level_acc"])))
        assert acc.pop(scores["levels"][-3]) == 50.0 and set(acc.values()) == {100.0}
        assert scores["hca"] == 50.0


def test_generated_answer_stats_count_replies_unknowns_and_agreement():
    from hierzoo.runner import generated_answer_stats

    def level(k, reply, letter, probs):
        return {
            f"prediction_level{k}": reply,
            f"predicted_level{k}_letter": letter,
            f"probs_level{k}": dict(zip("ABCD", probs)),
        }

    rows = [
        {
            **level(1, "B", "B", [0.1, 0.6, 0.2, 0.1]),
            **level(2, "Answer: C", "A", [0.1, 0.2, 0.6, 0.1]),
        },
        {**level(1, "c", "Unknown", [0.7, 0.1, 0.1, 0.1]), **level(2, "D", "D", [0.4, 0, 0, 0.4])},
        {"error": "unreadable", **level(1, "A", "A", [1, 0, 0, 0])},
        {
            **level(2, "A", "A", [0.25] * 4),
            "predicted_level3": "given",
            "predicted_level3_given": True,
        },
    ]
    stats = generated_answer_stats(rows)
    # agree: row 0 level 1 (B); row 3 level 2 (a four-way tie goes to A); not: "Answer: C" read
    # as A against C, Unknown, and D against a tie A/D that goes to A
    assert stats == {
        "answer": "generate",
        "n_answers": 5,
        "n_unknown": 1,
        "n_unknown_per_level": {"level1": 1, "level2": 0},
        "answer_agreement": 40.0,
    }
    assert generated_answer_stats([])["answer_agreement"] is None
    # replies without the first token's probabilities (a server that returns none): no
    # agreement to measure, not 0%; a reply without them is left out of the share
    bare = [{k: v for k, v in row.items() if not k.startswith("probs_")} for row in rows]
    assert generated_answer_stats(bare)["answer_agreement"] is None
    assert generated_answer_stats([*rows, *bare])["answer_agreement"] == 40.0


def test_image_processing_flag_reaches_the_model_and_the_identity(setup, vlm_dir, tmp_path, capsys):
    """`--image-processing checkpoint` is the model's option: recorded in run.json, and a rerun
    under the default (`paper`) is refused naming it, before anything more is written."""
    out = tmp_path / "run"
    assert main(_vlm_args(setup, vlm_dir, out, "--image-processing", "checkpoint")) == 0
    ident = json.loads((out / "run.json").read_text())["identity"]
    assert ident["image_processing"] == "checkpoint"
    assert ident["options"]["image_processing"] == "checkpoint"
    before = (out / "predictions.jsonl").read_text()
    capsys.readouterr()
    assert main(_vlm_args(setup, vlm_dir, out)) == 2
    assert "image_processing" in capsys.readouterr().err
    assert (out / "predictions.jsonl").read_text() == before
    with pytest.raises(SystemExit) as e:  # argparse names the choices
        main(_args(setup, tmp_path / "x", "--image-processing", "nope"))
    assert e.value.code == 2 and "checkpoint" in capsys.readouterr().err
