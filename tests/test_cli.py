"""The ``hierzoo`` command line as a user meets it: one meaning per flag across commands, a help
line for every option, old spellings that still work, and one-line errors that name the value."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hierzoo import _cli_options as opt
from hierzoo.cli import build_parser, main, parse_args


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options a user is shown (deprecated spellings are hidden and tested below)."""
    return [
        a
        for a in p._actions
        if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"
    ]


# What each flag whose value is a plain string means. A new string flag must be added here,
# and must not reuse a flag that means something else in another command.
STRING_KINDS = {
    "--model": "model",
    "--out": "folder",
    "--images": "folder",
    "--image-root": "folder",
    "--labels": "CSV file",
    "--questions": "question set",
    "--taxonomy": "taxonomy",
    "--family": "model family",
    "--where": "feature site",
    "--device-map": "device map",
    "--record": "file",
    "--profile": "file",
    "--output": "file",
}

# the flags issue 12 found with two meanings, and the one meaning each has now
CONTESTED = {
    "--model": "model",
    "--images": "folder",
    "--json": "switch",
    "--out": "folder",
    "--no-plots": "switch",
    "--seed": "integer",
    "--batch-size": "batch size",
}


def _kind(flag: str, action: argparse.Action) -> str:
    if action.nargs == 0:
        return "switch"
    declared = getattr(action, "kind", None) or getattr(action.type, "kind", None)
    if declared:
        return declared
    if action.choices is not None:
        return "one of " + ",".join(map(str, action.choices))
    assert action.type is None, f"{flag}: a typed option must declare its kind"
    assert flag in STRING_KINDS, f"{flag}: add what its value means to STRING_KINDS"
    return STRING_KINDS[flag]


def test_every_option_of_every_command_has_a_help_line():
    missing = [
        f"hierzoo {name} {a.option_strings[0]}"
        for name, p in _commands().items()
        for a in _options(p)
        if not (a.help and a.help.strip())
    ]
    assert missing == []
    assert all(p.description or p.format_help() for p in _commands().values())


def test_no_flag_has_two_meanings_across_commands():
    kinds: dict[str, dict[str, str]] = {}
    for name, p in _commands().items():
        for a in _options(p):
            for flag in a.option_strings:
                if flag.startswith("--"):
                    kinds.setdefault(flag, {})[name] = _kind(flag, a)
    two = {f: by for f, by in kinds.items() if len(set(by.values())) > 1}
    assert two == {}
    for flag, kind in CONTESTED.items():
        assert set(kinds[flag].values()) == {kind}, (flag, kinds[flag])
    # the commands each contested flag appears in (so the check above is not vacuous)
    assert {"eval", "probe", "bench"} <= set(kinds["--model"]) and len(kinds["--images"]) == 3
    assert {"score", "models", "bench"} <= set(kinds["--json"])
    assert {"eval", "probe", "report", "demo"} <= set(kinds["--out"])
    assert {"report", "probe"} <= set(kinds["--no-plots"])


def test_seed_defaults_to_42_in_every_command():
    defaults = {
        name: a.default
        for name, p in _commands().items()
        for a in _options(p)
        if "--seed" in a.option_strings
    }
    assert defaults == {"eval": 42, "export-sft": 42, "probe": 42}


def test_choices_come_from_the_constants_they_mirror():
    from hierzoo.models.outputs import STRATEGIES
    from hierzoo.prompts import MODES
    from hierzoo.runner import TASKS
    from hierzoo.tasks import DISTRACTORS

    ev = {a.option_strings[0]: a for a in _options(_commands()["eval"])}
    assert tuple(ev["--strategy"].choices) == STRATEGIES
    assert tuple(ev["--mode"].choices) == MODES
    assert tuple(ev["--task"].choices) == TASKS
    assert tuple(ev["--distractors"].choices) == DISTRACTORS
    assert tuple(ev["--dtype"].choices) == opt.DTYPES


def test_configs_are_built_from_the_namespace_by_field_name():
    from hierzoo.bench import BenchConfig
    from hierzoo.probe import ProbeConfig

    args = parse_args(
        ["probe", "--model", "m", "--taxonomy", "cub200", "--where", "image", "--out", "o"]
        + ["--test-size", "0.25", "--batch-size", "3", "--no-progress"]
    )
    cfg = opt.config_from(ProbeConfig, args)
    assert (cfg.test_size, cfg.batch_size, cfg.progress, cfg.seed) == (0.25, 3, False, 42)
    assert cfg.where == ["image"] and cfg.dtype is None  # not given: the dataclass's default
    bench = opt.config_from(
        BenchConfig, parse_args(["bench", "--model", "m", "--batch-size", "4,8", "--n-images", "9"])
    )
    assert (bench.batch_sizes, bench.n_images, bench.worker_decode) == ([4, 8], 9, "pil")


B = ["bench", "--model", "m"]
P = ["probe", "--model", "m", "--taxonomy", "t", "--where", "image", "--out", "o"]


@pytest.mark.parametrize(
    ("argv", "expect", "new"),
    [
        (["bench", "bioclip2"], {"model": "bioclip2"}, "--model MODEL"),
        ([*B, "--images", "6"], {"n_images": 6, "images": None}, "--n-images"),
        ([*B, "--json", "r.json"], {"record": "r.json", "json": False}, "--record"),
        ([*B, "--json=r.json"], {"record": "r.json", "json": False}, "--record"),
        ([*P, "--no-plot"], {"no_plots": True}, "--no-plots"),
        (["report", "runs", "--no-plot"], {"no_plots": True}, "--no-plots"),
        (["export-sft", "--questions", "q", "--out", "x.jsonl"], {"output": "x.jsonl"}, "--output"),
    ],
)
def test_old_spellings_still_parse_and_warn_once(argv, expect, new, capsys):
    args = parse_args(argv)
    assert {k: getattr(args, k) for k in expect} == expect
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "deprecated" in err[0] and f"use {new}" in err[0], err


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        ([*B, "--images", "photos"], {"images": "photos", "n_images": 256}),
        ([*B, "--json"], {"json": True, "record": None}),
        ([*B, "--json", "--record", "r.json"], {"json": True, "record": "r.json"}),
        (["export-sft", "--questions", "q", "--output", "x.json"], {"output": "x.json"}),
    ],
)
def test_new_spellings_do_not_warn(argv, expect, capsys):
    args = parse_args(argv)
    assert {k: getattr(args, k) for k in expect} == expect
    assert capsys.readouterr().err == ""


def test_a_command_without_its_required_file_says_which(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["export-sft", "--questions", "q.jsonl"])
    assert e.value.code == 2 and "--output" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["bench", "m", "--model", "m"])  # the model twice
    assert "give the model once" in capsys.readouterr().err


EVAL = ["eval", "--model", "m", "--out", "o"]


@pytest.mark.parametrize(
    ("argv", "flag", "value"),
    [
        (EVAL, "--batch-size", "0"),
        (EVAL, "--batch-size", "two"),
        (EVAL, "--limit", "0"),
        (EVAL, "--threads", "-2"),
        (EVAL, "--num-workers", "-1"),
        (EVAL, "--seed", "4.5"),
        (P, "--test-size", "1.5"),
        (P, "--test-size", "0"),
        (P, "--l2", "-1"),
        (P, "--l2", "nan"),
        (P, "--max-iter", "0"),
        (P, "--shard-size", "-8"),
        (B, "--n-images", "0"),
        (B, "--images", "-3"),
        (B, "--batch-size", "8,0"),
        (B, "--levels", "0"),
        (B, "--baseline-images", "0"),
        (B, "--image-size", "500"),
        (["export-sft", "--questions", "q", "--output", "x.json"], "--limit", "-1"),
    ],
)
def test_bad_numbers_are_refused_at_parse_time_naming_the_value(argv, flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert len(err.strip().splitlines()) == 1 and f"{value!r}" in err and flag in err, err


@pytest.mark.parametrize(
    ("template", "says"),
    [("a {} {}", "has 2 '{}'"), ("{oops}", "{oops}"), ("a photo of a {", "not valid")],
)
def test_a_template_with_a_bad_placeholder_is_refused(template, says, capsys):
    with pytest.raises(SystemExit) as e:
        main([*EVAL, "--template", template])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert repr(template) in err and says in err and "'{}' once" in err and "{rank}" in err


def test_good_templates_pass():
    args = parse_args([*EVAL, "--template", "a photo of the {rank} {}.", "--template", "{}"])
    assert args.templates == ["a photo of the {rank} {}.", "{}"]


def test_a_device_torch_does_not_know_is_named_with_the_valid_forms(capsys):
    with pytest.raises(SystemExit) as e:
        main([*EVAL, "--device", "gpu0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "'gpu0'" in err and "cuda:N" in err and "model" not in err
    assert parse_args([*EVAL, "--device", "cuda:1"]).device == "cuda:1"  # parsing needs no GPU


# ----------------------------------------------------------------------------- as a process
def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _hierzoo(*argv: str) -> list[str]:
    return [sys.executable, "-m", "hierzoo", *argv]


def test_models_does_not_import_torch():
    code = (
        "import sys\n"
        "from hierzoo.cli import main\n"
        "assert main(['models', '--family', 'clip']) == 0\n"
        "assert main(['models', '--json']) == 0\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_env()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "no torch"
    assert "bioclip2" in done.stdout


@pytest.mark.parametrize("argv", [["models", "--json"], ["models"], ["taxonomy"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(argv):
    """``hierzoo models --json | head``: the reader has gone before anything is written."""
    proc = subprocess.Popen(
        _hierzoo(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    proc.stdout.close()  # the reader stops reading before the command writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert err == "", err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """SIGINT during ``hierzoo eval``: one line saying how to resume, no traceback; the rerun
    resumes. The run blocks after its first batch (tests/gated.py), so the signal lands mid-run
    however fast or loaded the machine."""
    from gated import gated_command
    from PIL import Image

    from hierzoo.models.tiny_clip import build_tiny_openclip

    model = build_tiny_openclip(tmp_path / "model", seed=1)
    rng = np.random.default_rng(0)
    for leaf in ["Laysan Albatross", "Sooty Albatross", "Common Raven"]:
        (tmp_path / "images" / leaf).mkdir(parents=True)
        for j in range(6):
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / leaf / f"{j}.jpg")
    out = tmp_path / "run"
    argv = ["eval", "--model", str(model), "--taxonomy", "cub200", "--images"]
    argv += [str(tmp_path / "images"), "--out", str(out), "--batch-size", "1"]
    argv += ["--num-workers", "0", "--no-progress", "--device", "cpu"]
    proc = subprocess.Popen(
        gated_command(tmp_path, argv, after=1),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    preds = out / "predictions.jsonl"
    try:
        while proc.poll() is None and not (preds.exists() and preds.read_text().count("\n")):
            time.sleep(0.005)  # a poll, not a time limit: it stops when the process writes or ends
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)  # a hang guard only
    finally:
        if proc.poll() is None:  # the gated child never ends by itself
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == (
        "hierzoo eval: interrupted; rerun the same command to resume"
    )
    assert main(argv) == 0
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(lines) == 18 and not any("error" in r for r in lines)


def test_default_output_folders_are_ignored_by_git():
    """Every command's default --out (``hierzoo demo`` run in a clone writes ./hierzoo-demo)
    is in .gitignore."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    defaults = {
        a.default
        for p in _commands().values()
        for a in _options(p)
        if "--out" in a.option_strings and a.default
    }
    assert defaults == {"hierzoo-demo", "hierzoo-report"}
    for folder in defaults:
        done = subprocess.run(
            ["git", "check-ignore", "-q", f"{folder}/report.md"], cwd=root, timeout=300
        )
        assert done.returncode == 0, f"{folder}/ is not in .gitignore"


def test_export_sft_warns_when_the_source_is_the_test_split(tmp_path, capsys):
    from hierzoo.tasks import read_questions, write_questions

    out = tmp_path / "sft.jsonl"
    assert main(["export-sft", "--questions", "cub200-similar", "--limit", "3"] + [
        "--output", str(out)]) == 0  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 of 3 entries are from the test split" in err[0]
    assert "contaminated" in err[0] and len(out.read_text().splitlines()) == 12
    train = read_questions("cub200-similar")[:2]
    for q in train:
        q.split = "train"
    write_questions(train, tmp_path / "train.jsonl")
    assert main(["export-sft", "--questions", str(tmp_path / "train.jsonl")] + [
        "--output", str(out)]) == 0  # fmt: skip
    assert capsys.readouterr().err == ""


def test_json_the_cli_writes_has_no_float_noise(tmp_path):
    from hierzoo.bench import write_record
    from hierzoo.tables import tidy

    record = {"hca": 55.60000000000001, "rates": [0.1 + 0.2, 1 / 3], "n": 3, "name": "x"}
    assert tidy(record) == {"hca": 55.6, "rates": [0.3, 0.333333333333], "n": 3, "name": "x"}
    text = write_record(record, tmp_path / "r.json").read_text()
    assert "55.60000000000001" not in text and "0.30000000000000004" not in text
    back = json.loads(text)
    assert back["hca"] == 55.6 and back["rates"][1] == pytest.approx(1 / 3, rel=1e-11)
    with pytest.raises(ValueError):  # strict JSON: NaN is refused, not written
        write_record({"x": float("nan")}, tmp_path / "nan.json")


def test_output_folders_and_unreadable_summaries_are_named_before_any_work(tmp_path, capsys):
    """An --out that is a file or lies under one stops report, demo and probe before they do
    anything; a summary.json that is not UTF-8 is named."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_bytes(b"\xff\xfe{}")
    cases = [
        (["report", str(run), "--out", str(a_file)], f"--out '{a_file}' is a file"),
        (["demo", "--out", str(a_file / "demo")], "lies under"),
        (
            ["probe", "--model", "m", "--taxonomy", "cub200", "--where", "image"]
            + ["--images", str(tmp_path), "--out", str(a_file)],
            f"--out '{a_file}' is a file",
        ),
        (["report", str(run), "--out", str(tmp_path / "rep")], "not UTF-8 text"),
    ]
    for argv, says in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
