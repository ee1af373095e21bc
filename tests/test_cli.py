"""The ``hierzoo`` command line as a user meets it: one meaning per flag across commands, a help
line for every option, old spellings that still work, and one-line errors that name the value."""

from __future__ import annotations

import argparse

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
    from hierzoo.models.base import STRATEGIES
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
