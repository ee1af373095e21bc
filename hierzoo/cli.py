"""The ``hierzoo`` command line: ``hierzoo <command> ...`` or ``python -m hierzoo <command>``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Sequence

from hierzoo import __version__
from hierzoo import _cli_options as opt
from hierzoo._cli_tools import _add_bench, _add_export_sft, _add_probe
from hierzoo.prompts import PROTOCOLS


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score result files in the paper's format",
        description="Score result files (a JSON list or JSON Lines with ground_truth_levelK / "
        "predicted_levelK per sample) with every hierarchical metric.",
    )
    p.add_argument("results", nargs="+", help="result files (.json or .jsonl)")
    p.add_argument(
        "--keep-root",
        action="store_true",
        help="keep a first level whose ground truth never varies",
    )
    p.add_argument(
        "--taxonomy",
        metavar="NAME",
        help="bundled name or file: encode names through it and add path consistency",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per file instead of a table"
    )
    p.add_argument("--ci", action="store_true", help="add bootstrap 95%% confidence intervals")
    p.add_argument(
        "--workers",
        type=opt.positive_int,
        metavar="N",
        help="processes that read a large file, each a part of it (default: the CPUs this "
        "process may use, at most 8; 1 reads in this process)",
    )
    p.set_defaults(func=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    from hierzoo.metrics import format_left_out, read_result_columns, round_floats, score_results
    from hierzoo.metrics.reading import available_cpus
    from hierzoo.report import format_table

    workers = args.workers or min(available_cpus(), 8)
    taxonomy = None
    if args.taxonomy:
        from hierzoo import load_taxonomy

        taxonomy = load_taxonomy(args.taxonomy)
    rows, failed = [], 0
    for path in args.results:
        try:
            summary = score_results(
                read_result_columns(path, workers=workers),
                keep_root=args.keep_root,
                taxonomy=taxonomy,
                ci=args.ci,
            )
        except (ValueError, OSError) as e:  # one bad file of several: say which, score the rest
            message = _message(e)
            if path not in message:
                message = f"{path}: {message}"
            print(f"hierzoo score: error: {message}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(round_floats({"file": path, **summary}), allow_nan=False))
        rows.append((path, summary))
    if rows and not args.json:
        print(format_table(rows))
        print("(percent of scored samples)")
        for path, summary in rows:
            for line in format_left_out(summary):
                print(f"{path}: {line}")
    return 2 if failed else 0


def _add_taxonomy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "taxonomy",
        help="list the bundled taxonomies or describe one",
        description="Without NAME, a table of the bundled taxonomies; with NAME, its source, "
        "leaves, depth, and per level the rank and the number of nodes.",
    )
    p.add_argument(
        "name", nargs="?", help="a bundled name or a taxonomy file (leave out to list them all)"
    )
    show = p.add_mutually_exclusive_group()
    show.add_argument(
        "--leaves",
        action="store_true",
        help="print the leaf labels, one per line (the leaf column of a --labels CSV)",
    )
    show.add_argument("--tree", action="store_true", help="print the taxonomy as an indented tree")
    p.add_argument(
        "--depth",
        type=opt.positive_int,
        metavar="N",
        help="with --tree: draw only the first N levels (a cut node shows its leaf count)",
    )
    p.set_defaults(func=_cmd_taxonomy)


def _cmd_taxonomy(args: argparse.Namespace) -> int:
    from hierzoo import bundled_taxonomies, load_taxonomy

    for flag, given in (("--leaves", args.leaves), ("--tree", args.tree)):
        if given and not args.name:
            raise ValueError(f"{flag} needs a taxonomy NAME: hierzoo taxonomy cub200 {flag}")
    if args.depth is not None and not args.tree:
        raise ValueError("--depth goes with --tree: hierzoo taxonomy NAME --tree --depth N")
    if args.name:
        tax = load_taxonomy(args.name)
        if args.leaves:
            print("\n".join(tax.labels))
        elif args.tree:
            print(tax.format_tree(args.depth))
        else:
            print(tax.describe())
        return 0
    from hierzoo.taxonomy import BUNDLED

    print(f"{'taxonomy':<20} {'leaves':>7} {'depth':>5}  nodes per level / ranks")
    for name in bundled_taxonomies():
        tax = load_taxonomy(name)
        ranks = f"  ({', '.join(tax.ranks)})" if tax.ranks else ""
        sizes = " / ".join(map(str, tax.level_sizes))
        origin = "" if BUNDLED[name].paper else "  [hierzoo's, not the paper's]"
        print(f"{tax.name:<20} {tax.n_leaves:>7} {tax.depth:>5}  {sizes}{ranks}{origin}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        parents=[
            opt.model_options(),
            opt.device_options(),
            opt.run_options(),
            opt.pipeline_options(),
        ],
        help="run a model on a question set (resumable; torchrun shards it)",
        description="Answer a four-choice question set (or predict paths) with a model and score "
        "it. Results go to --out: predictions.jsonl (paper format, appended batch by batch), "
        "summary.json. Run again with the same --out to resume after a crash.",
    )
    opt.require(p, "--model")
    p.add_argument("--out", metavar="DIR", required=True, help="run directory (a folder)")
    p.add_argument(
        "--retry-errors", action="store_true", help="redo samples recorded with an error"
    )
    p.add_argument(
        "--dry-run",
        metavar="N",
        type=opt.positive_int,
        help="print the first N requests the run would make (one JSON object per line: prompt, "
        "image sizes, tiles, tokens) and stop: loads the model's processor, not its weights; no "
        "forward pass, nothing written",
    )
    src = p.add_argument_group("questions")
    src.add_argument(
        "--questions",
        metavar="FILE",
        help="question file (.jsonl), or a bundled set: cub200-random, cub200-similar",
    )
    src.add_argument(
        "--image-root", metavar="DIR", help="remap recorded image paths to files under this folder"
    )
    src.add_argument(
        "--taxonomy", metavar="NAME", help="the bundled taxonomy (or file) the questions come from"
    )
    src.add_argument(
        "--images",
        metavar="DIR",
        help="instead of --questions: a folder of images, one sub-folder per leaf, or flat files "
        "named <Leaf_name>_<n>.jpg (Oxford-IIIT Pet: its annotations/list.txt is used if there)",
    )
    src.add_argument(
        "--labels",
        metavar="CSV",
        help="a CSV of image,leaf instead of the folder layout; relative image paths are "
        "relative to --images when given, else to the CSV's folder",
    )
    src.add_argument(
        "--distractors",
        choices=opt.LazyChoices("hierzoo.tasks", "DISTRACTORS"),
        default="random",
        help="with --images: the wrong options of built questions: random nodes of the level, "
        "or the nearest in the tree (similar)",
    )
    opt.seed_option(src, "built questions and of option shuffling")
    src.add_argument("--limit", metavar="N", type=opt.positive_int, help="only the first N samples")
    how = p.add_argument_group("protocol")
    how.add_argument(
        "--task",
        choices=opt.LazyChoices("hierzoo.runner", "TASKS"),
        default="questions",
        help="four-choice questions, or predict_path over the whole taxonomy",
    )
    how.add_argument(
        "--strategy",
        choices=opt.LazyChoices("hierzoo.models.outputs", "STRATEGIES"),
        default="joint",
        help="predict_path strategy for --task path",
    )
    how.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="paper",
        help="how questions are asked: paper (the paper's four-choice questions), cot, bio-cot, "
        "taxonomy-context, binary (the paper's prompting experiments), open (no options); a "
        "model refuses those its family does not answer under (docs/protocols.md)",
    )
    how.add_argument(
        "--prompt-variant",
        type=int,
        choices=range(5),
        metavar="K",
        help="the paper's prompt variant 0-4",
    )
    how.add_argument(
        "--answer",
        choices=opt.LazyChoices("hierzoo.prompts", "ANSWERS"),
        default="logits",
        help="vision LLMs: read the option letters' logits (logits, the default) or generate a "
        "reply and parse it by the paper's rule (generate, as the paper's scripts answer)",
    )
    how.add_argument(
        "--max-new-tokens",
        metavar="N",
        type=opt.positive_int,
        help="with --answer generate: the most tokens of a reply (default: the paper's, 5 or 10 "
        "by model, taxonomy and mode)",
    )
    how.add_argument(
        "--parse",
        choices=opt.LazyChoices("hierzoo.prompts", "PARSES"),
        default="paper",
        help="with --answer generate: read the reply's first option letter found anywhere (paper, "
        "the paper's rule) or its last option letter standing alone (last-letter: the final "
        "answer of a reasoned reply, e.g. --protocol cot --max-new-tokens 512)",
    )
    how.add_argument(
        "--keep-option-order",
        action="store_true",
        help="ask options in the file's order (no shuffling)",
    )
    how.add_argument(
        "--circular",
        action="store_true",
        help="ask every rotation of the options; right only if all are",
    )
    how.add_argument(
        "--mode",
        choices=opt.LazyChoices("hierzoo.prompts", "MODES"),
        default="image",
        help="text: no image, the question names the leaf",
    )
    how.add_argument(
        "--template",
        metavar="TEMPLATE",
        action="append",
        dest="templates",
        type=opt.template,
        help="CLIP prompt template with {} for the name and optionally {rank} (repeatable)",
    )
    p.add_argument(
        "--device-map",
        metavar="MAP",
        help="vision LLMs larger than one GPU: a transformers device_map such as auto",
    )
    p.add_argument(
        "--image-processing",
        choices=["paper", "checkpoint"],
        help="vision LLMs: prepare images as the paper's scripts did for the family (paper, the "
        "default) or with the checkpoint's processor alone (checkpoint); see docs/vlm.md",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the checkpoint's own modelling code (transformers' trust_remote_code): needed "
        "by models without a transformers class, such as InternLM2.5; only for code you trust",
    )
    api = p.add_argument_group("models behind an API (--model openai:MODEL)")
    api.add_argument(
        "--api-base",
        type=opt.api_base,
        metavar="URL",
        help="the chat-completions server's base URL, ending in /v1 (default OpenAI's, "
        "https://api.openai.com/v1)",
    )
    api.add_argument(
        "--api-key-env",
        type=opt.env_name,
        metavar="NAME",
        help="the environment variable that holds the API key (default OPENAI_API_KEY); the "
        "key itself is never written anywhere",
    )
    api.add_argument(
        "--concurrency",
        type=opt.positive_int,
        metavar="N",
        help="requests in flight (default 16)",
    )
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from hierzoo._io import dumps_line
    from hierzoo.report import format_summary
    from hierzoo.runner import EvalConfig, RunError, dry_run, retry_command, run_eval

    cfg = opt.config_from(
        EvalConfig,
        args,
        model_kwargs={
            k: v
            for k, v in (
                ("device_map", args.device_map),
                ("trust_remote_code", args.trust_remote_code or None),
                ("image_processing", args.image_processing),
                ("decode_on_device", args.decode_on_device or None),
                ("worker_decode", args.worker_decode),
                ("api_base", args.api_base),
                ("api_key_env", args.api_key_env),
                ("concurrency", args.concurrency),
            )
            if v
        }
        | ({} if args.batched_vision_attention else {"batched_vision_attention": False}),
    )
    try:
        if args.dry_run:
            for request in dry_run(cfg, args.dry_run):
                sys.stdout.write(dumps_line(request))
            return 0
        summary = run_eval(cfg)
    except RunError as e:
        print(f"hierzoo eval: error: {e}", file=sys.stderr)
        return 2
    if not summary:  # a rank other than 0
        return 0
    print(format_summary(summary))
    for entry in summary.get("left_out") or []:
        keep = f"score with `hierzoo score {args.out}/predictions.jsonl --keep-root`"
        if not summary.get("taxonomy"):
            keep = f"give --taxonomy NAME, or {keep}"
        print(
            f"left out {entry['name']} (level {entry['level']}): {entry['reason']}; to keep "
            f"it, {keep}"
        )
    print(f"results: {args.out}/predictions.jsonl, {args.out}/summary.json")
    n_errors = summary.get("n_errors") or 0
    if n_errors:
        total = summary["n"] + n_errors
        what = "every sample" if summary["n"] == 0 else f"{n_errors} of {total} samples"
        print(
            f"hierzoo eval: {what} failed (the error field of {args.out}/predictions.jsonl "
            f"says why). Once the cause is fixed, redo them with:\n  {retry_command(args.argv)}",
            file=sys.stderr,
        )
    return 1 if summary["n"] == 0 else 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument(
        "--family",
        metavar="FAMILY",
        help="only one model family (clip, vlm, llm, api, openclip, qwen2.5-vl, openai-chat, ...)",
    )
    p.add_argument("--json", action="store_true", help="print the specs as JSON instead of a table")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from hierzoo.models._registry import ZOO, list_models
    from hierzoo.tables import text_table, tidy

    names = list_models(args.family)
    if args.json:
        print(json.dumps(tidy([asdict(ZOO[n]) for n in names]), indent=2))
        return 0
    rows = [(n, ZOO[n].family, ZOO[n].params, ZOO[n].hub_id) for n in names]
    print("\n".join(text_table(["name", "family", "size", "hub id"], rows, left=4)))
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="compare eval runs: a table (Markdown, CSV) and plots",
        description="Read the summary.json of `hierzoo eval` run directories (or of every run "
        "directory one level under a folder) and write report.md, report.csv and three plots: "
        "HCA against leaf accuracy, accuracy per level, and where paths first break. A vision "
        "LLM's text-mode run and its LLM's run on the same questions are also compared "
        "(comparison.csv, vlm_vs_llm.png).",
    )
    p.add_argument("runs", nargs="+", metavar="DIR", help="run directory, or a folder of them")
    p.add_argument(
        "--out",
        metavar="DIR",
        default="hierzoo-report",
        help="report directory (default ./hierzoo-report)",
    )
    p.add_argument(
        "--pair",
        metavar="VLM_RUN=LLM_RUN",
        action="append",
        type=opt.run_pair,
        default=[],
        help="compare a vision LLM's text-mode run with its LLM's run (repeatable); zoo models "
        "are paired without it, by the vision LLM's base_llm",
    )
    opt.no_plots_option(p, "plots, only the tables")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hierzoo.report import (
        PairError,
        comparison_table,
        load_runs,
        pair_runs,
        report_table,
        write_comparison_csv,
        write_csv,
        write_markdown,
        write_plots,
    )

    opt.check_output_dir(args.out, "--out")
    runs = load_runs(args.runs)
    try:
        pairs = pair_runs(runs, args.pair)
    except (PairError, FileNotFoundError, ValueError) as e:
        print(f"hierzoo report: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = report_table(runs)
    comparison = comparison_table(pairs)
    written = [
        write_markdown(rows, out / "report.md", comparison),
        write_csv(rows, out / "report.csv"),
    ]
    if comparison:
        written.append(write_comparison_csv(comparison, out / "comparison.csv"))
    print(written[0].read_text(), end="")
    if not args.no_plots:
        try:
            written += write_plots(runs, out, pairs)
        except ImportError as e:
            print(f"written: {', '.join(map(str, written))}")
            raise ImportError(f"{e} (or pass --no-plots)") from None
    failed = [r["run_dir"] for r in runs if not r["metrics"]]
    if failed and not args.no_plots:
        print(f"not plotted (every sample failed): {', '.join(failed)}", file=sys.stderr)
    print(f"written: {', '.join(map(str, written))}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline offline on a tiny random-weight model (under a minute)",
        description="Build a tiny open_clip model with random weights and a small synthetic image "
        "set over "
        "CUB-200 leaves, run `hierzoo eval` (questions built from the taxonomy) and `hierzoo "
        "report`. "
        "Nothing is downloaded.",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="hierzoo-demo",
        help="demo directory (default ./hierzoo-demo)",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hierzoo.demo import REAL_HINT, run_demo
    from hierzoo.report import format_summary, load_runs, report_table, write_csv, write_markdown

    opt.check_output_dir(args.out, "--out")
    out = Path(args.out)
    summary = run_demo(out)
    print(format_summary(summary))
    runs = load_runs([out / "run"])
    rows = report_table(runs)
    (out / "report").mkdir(parents=True, exist_ok=True)
    written = [
        write_markdown(rows, out / "report" / "report.md"),
        write_csv(rows, out / "report" / "report.csv"),
    ]
    try:
        from hierzoo.report import write_plots

        written += write_plots(runs, out / "report")
    except ImportError as e:
        print(f"(plots skipped: {e})")
    print(
        f"\nwritten: {out / 'run'}/predictions.jsonl, {out / 'run'}/summary.json, "
        + ", ".join(map(str, written))
    )
    print(
        "\nThe demo model has random weights, so it answers at chance: about 1 in 4 per level, "
        "and HCA near "
        "(1/4)^4 = 0.4%. Nothing here measures a real model.\n" + REAL_HINT
    )
    return 0


COMMANDS = [
    _add_score,
    _add_taxonomy,
    _add_eval,
    _add_models,
    _add_report,
    _add_demo,
    _add_bench,
    _add_export_sft,
    _add_probe,
]


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(
        prog="hierzoo",
        description="Ask vision models what they see at every level of a taxonomy, and measure "
        "whether their answers form one consistent path.",
    )
    parser.add_argument("--version", action="version", version=f"hierzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for add in COMMANDS:
        add(sub)
    return parser


RESUMABLE = ("eval", "probe", "demo")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The namespace of a command line, old spellings translated (each with a warning on stderr)
    and each command's own checks made; a mistake exits with status 2 and one line."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(opt.old_spellings(argv))
    args.argv = argv
    if getattr(args, "check", None):
        args.check(opt.subparser(parser, args.command), args)
    return args


def _printable_streams() -> None:
    """A terminal or pipe that cannot encode every character (``PYTHONIOENCODING=ascii``, the C
    locale) prints a model or taxonomy name it cannot show as escapes, instead of failing."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="backslashreplace")


def _warning_line(command: str):
    """A ``warnings.showwarning`` that prints ``hierzoo CMD: warning: ...``, one line without
    the Python source around it."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{command}: warning: {message}", file=file or sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user mistakes end in one line on stderr and exit status 2, Ctrl-C in
    one line and 130, a closed output pipe (``hierzoo models --json | head``) quietly."""
    command = "hierzoo"
    _printable_streams()
    try:
        args = parse_args(argv)
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 2
        command = f"hierzoo {args.command}"
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line(command)
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except KeyboardInterrupt:
        resume = "; rerun the same command to resume" if command[8:] in RESUMABLE else ""
        print(f"\n{command}: interrupted{resume}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader stopped reading (head, less): stop writing, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status of a writer whose reader went away
    except (ValueError, ImportError, OSError) as e:
        print(f"{command}: error: {_message(e)}", file=sys.stderr)
        return 2


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)
