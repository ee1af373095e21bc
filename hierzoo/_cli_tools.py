"""The ``hierzoo`` commands for measuring and exporting beside evaluation: ``bench`` (speed),
``export-sft`` (fine-tuning sets) and ``probe`` (linear probes on model features); the parser
in :mod:`hierzoo.cli` registers them."""

from __future__ import annotations

import argparse
import json
import sys

from hierzoo import _cli_options as opt


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        parents=[opt.model_options(), opt.device_options(), opt.pipeline_options()],
        help="throughput of a model: end to end and forward only, a batch-size sweep",
        description="Time answer() on synthetic JPEG photos, or on a folder of yours (decoding "
        "included): images/s, questions/s, the forward passes alone, latency per batch (median, "
        "p90), peak memory and achieved FLOP/s on a GPU. --random-weights builds the zoo model's "
        "real architecture without downloading.",
    )
    p.add_argument(
        "model_arg",
        nargs="?",
        metavar="MODEL",
        help=argparse.SUPPRESS,  # the old spelling of --model MODEL
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="the real architecture with random weights (no download)",
    )
    p.add_argument(
        "--size",
        choices=["real", "tiny"],
        default="real",
        help="with --random-weights: tiny is a toy-size twin",
    )
    p.add_argument(
        "--n-images",
        metavar="N",
        type=opt.positive_int,
        default=256,
        help="timed images (question-set entries; default 256)",
    )
    p.add_argument(
        "--images",
        metavar="DIR",
        action=opt.ImagesOrOldCount,
        help="a folder of images to time instead of synthetic photos (searched recursively, "
        "repeated when it holds fewer than --n-images + 16)",
    )
    p.add_argument(
        "--levels",
        metavar="L",
        type=opt.positive_int,
        default=4,
        help="questions per image (default 4)",
    )
    p.add_argument(
        "--batch-size",
        type=opt.batch_sizes,
        dest="batch_sizes",
        metavar="N[,N...]",
        help="one batch size, or a comma list to sweep, e.g. 64,128,256 (default: the model's)",
    )
    p.add_argument(
        "--image-size",
        metavar="WxH",
        type=opt.image_size,
        default=(500, 375),
        help="synthetic photo size WxH (default 500x375)",
    )
    p.add_argument(
        "--baseline", action="store_true", help="also time the paper's per-question loop"
    )
    p.add_argument(
        "--baseline-images",
        metavar="N",
        type=opt.positive_int,
        default=8,
        help="images the paper's loop is timed on, with --baseline (default 8)",
    )
    p.add_argument("--record", metavar="FILE", help="write the record (JSON) to this file")
    p.add_argument(
        "--json", action="store_true", help="print the record as JSON instead of the table"
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="profile one batch at the best batch size with torch.profiler: "
        "its op table goes to FILE, the top ops into the record (and FILE.trace.json with --trace)",
    )
    p.add_argument("--trace", action="store_true", help="with --profile: also write a Chrome trace")
    p.set_defaults(func=_cmd_bench, check=_check_bench)


def _check_bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.model_arg:
        if args.model:
            parser.error(f"give the model once: --model {args.model}, not also {args.model_arg}")
        opt.deprecation(parser, "the positional MODEL", "--model MODEL")
        args.model = args.model_arg
    if not args.model:
        parser.error("the following arguments are required: --model")
    if args.trace and not args.profile:
        parser.error("--trace writes the trace of --profile FILE: give --profile too")
    if args.size == "tiny" and not args.random_weights:
        parser.error("--size tiny builds a toy-size twin with random weights: add --random-weights")


def _cmd_bench(args: argparse.Namespace) -> int:
    from hierzoo.bench import BenchConfig, format_bench, run_bench, write_record

    for flag, path in (("--record", args.record), ("--profile", args.profile)):
        if path:
            opt.check_output_file(path, flag)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    record = run_bench(opt.config_from(BenchConfig, args))
    if args.json:
        from hierzoo.tables import tidy

        print(json.dumps(tidy(record), indent=2))
    else:
        print(format_bench(record))
    if args.record:
        print(
            f"wrote {write_record(record, args.record)}",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 0


def _add_export_sft(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-sft",
        help="write a question set as supervised fine-tuning conversations (Qwen-VL, LLaVA, "
        "ShareGPT)",
        description="One training conversation per asked level: the paper's system message, the "
        "user turn "
        "(image, question, lettered options, instruction; the strings hierzoo eval asks) and the "
        "answer "
        "letter. Options are shuffled by the paper's seeded generator unless --keep-option-order. "
        "The output is a JSON list (.json) or JSON Lines (.jsonl).",
    )
    p.add_argument(
        "--questions",
        metavar="FILE",
        required=True,
        help="question file (.jsonl), or a bundled set: cub200-random, cub200-similar",
    )
    p.add_argument(
        "--output", metavar="FILE", help="output file, .json (a list) or .jsonl (required)"
    )
    opt.deprecated_flag(p, "--out", "--output FILE", dest="output", metavar="FILE")
    p.add_argument(
        "--format",
        choices=["qwen", "llava", "sharegpt"],
        default="qwen",
        help="qwen: messages with content lists; llava: image + conversations; sharegpt: "
        "LLaMA-Factory's",
    )
    p.add_argument(
        "--mode",
        choices=opt.LazyChoices("hierzoo.prompts", "MODES"),
        default="image",
        help="text: no image, the question names the leaf",
    )
    p.add_argument(
        "--image-root",
        metavar="DIR",
        help="remap recorded image paths to files under this folder (each must exist)",
    )
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="leave out entries whose image is not found (else: an error with --image-root, the "
        "recorded path without)",
    )
    p.add_argument(
        "--taxonomy",
        metavar="NAME",
        help="the taxonomy of the questions: its prompts, and validation of every option",
    )
    p.add_argument(
        "--prompt-variant",
        type=int,
        choices=range(5),
        metavar="K",
        help="the paper's prompt variant 0-4",
    )
    p.add_argument(
        "--family",
        metavar="FAMILY",
        help="model family whose paper default variant to use (qwen2.5-vl, internvl ...)",
    )
    opt.seed_option(p, "the option shuffling")
    p.add_argument("--keep-option-order", action="store_true", help="keep the file's option order")
    p.add_argument("--limit", metavar="N", type=opt.positive_int, help="only the first N entries")
    p.set_defaults(func=_cmd_export_sft, check=_check_export_sft)


def _check_export_sft(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.output:
        parser.error("the following arguments are required: --output")
    from hierzoo.models._registry import check_family

    try:
        check_family(args.family)
    except ValueError as e:
        parser.error(str(e))


def _cmd_export_sft(args: argparse.Namespace) -> int:
    from hierzoo import prompts
    from hierzoo.sft import export_sft
    from hierzoo.tasks import read_questions, validate_questions

    questions = read_questions(args.questions, image_root=args.image_root)[: args.limit]
    n_test = sum(q.split == "test" for q in questions)
    if n_test:
        print(
            f"hierzoo export-sft: warning: {n_test} of {len(questions)} entries are from the test "
            "split (split: test); a model fine-tuned on them is contaminated for the benchmark "
            "that asks them (the paper's CUB-200 sets are test questions): export training "
            "questions instead",
            file=sys.stderr,
        )
    key = None
    given = args.taxonomy
    if given is None:  # a bundled set knows its taxonomy, as hierzoo eval reads it
        from hierzoo.tasks import bundled_question_taxonomy

        given = bundled_question_taxonomy(args.questions)
    if given:
        from hierzoo import load_taxonomy

        tax = load_taxonomy(given)
        validate_questions(questions, tax)
        key = tax.name if tax.name in prompts.taxonomies() else None
        if key is None:
            print(f"prompts: the generic wording ({given} is not one of the paper's taxonomies)")
    missing = "skip" if args.skip_missing else ("error" if args.image_root else "recorded")
    done = export_sft(
        questions,
        args.output,
        format=args.format,
        mode=args.mode,
        taxonomy=key,
        prompt_variant=args.prompt_variant,
        family=args.family,
        shuffle_options=not args.keep_option_order,
        seed=args.seed,
        missing_images=missing,
    )
    order = (
        f"options shuffled (seed {done.seed})"
        if done.seed is not None
        else "options in the file's order"
    )
    print(
        f"wrote {done.n_conversations} {done.format} conversations ({done.mode} mode) from "
        f"{done.n_entries} "
        f"entries to {done.path}; prompt variant {done.prompt_variant}, {order}"
        + (f"; {done.n_skipped} entries skipped (image not found)" if done.n_skipped else "")
    )
    if not done.n_conversations:
        print("hierzoo export-sft: no conversation was written", file=sys.stderr)
        return 1
    return 0


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        parents=[opt.model_options(), opt.device_options(), opt.run_options()],
        help="linear probes per taxonomy level on a model's features (vision, projector, LLM "
        "layers)",
        description="Extract features of your images at one or more sites of a model (resumable "
        "shards under --out/features), fit a linear probe per taxonomy level on a held-out split "
        "by image, and compare with the model's own zero-shot answers on the same images. Writes "
        "probe.json and probe_levels.png to --out and prints a table. Sites: CLIP image, "
        "image:raw, layer:K; vision LLMs vision, projector, llm:K, llm:K:answer (K a layer, "
        "negative from the end). See docs/probing.md.",
    )
    opt.require(p, "--model")
    p.add_argument("--taxonomy", metavar="NAME", required=True, help="bundled name or file")
    p.add_argument(
        "--images",
        metavar="DIR",
        help="a folder of images in an ImageFolder layout (one folder per leaf), or the folder "
        "the --labels paths are relative to",
    )
    p.add_argument(
        "--labels",
        metavar="CSV",
        help="a CSV of image,leaf instead of the folder layout; relative image paths are "
        "relative to --images when given, else to the CSV's folder",
    )
    p.add_argument(
        "--where",
        action="append",
        required=True,
        metavar="SITE",
        help="feature site (repeatable, or a comma list), e.g. vision,projector,llm:-1",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        required=True,
        help="run directory (a rerun resumes the feature extraction)",
    )
    p.add_argument(
        "--text",
        action="store_true",
        help="probe the taxonomy's leaf names instead of images (sites: text for CLIP; llm:K, "
        "llm:K:answer for vision LLMs); split by name, levels above the leaves",
    )
    p.add_argument(
        "--test-size",
        metavar="F",
        type=opt.fraction,
        default=0.3,
        help="share of images held out, in (0, 1) (default 0.3)",
    )
    opt.seed_option(p, "the split and of built questions")
    p.add_argument(
        "--zero-shot",
        choices=["auto", "path", "questions", "none"],
        default="auto",
        help="the model's own answers: predict_path over all nodes, or four-choice questions "
        "(auto: path for CLIP, questions for vision LLMs)",
    )
    p.add_argument(
        "--l2",
        metavar="F",
        type=opt.non_negative_float,
        default=1e-4,
        help="probe weight decay (default 1e-4)",
    )
    p.add_argument(
        "--max-iter",
        metavar="N",
        type=opt.positive_int,
        default=500,
        help="probe L-BFGS iterations at most (default 500)",
    )
    p.add_argument(
        "--shard-size",
        metavar="N",
        type=opt.positive_int,
        default=1024,
        help="images per feature shard (default 1024)",
    )
    p.add_argument("--limit", metavar="N", type=opt.positive_int, help="only the first N images")
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help="extract again the feature shards that hold images that failed (fixed since); "
        "without it a rerun keeps them as failed",
    )
    opt.no_plots_option(p, "probe_levels.png")
    p.set_defaults(func=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hierzoo.probe import (
        ProbeConfig,
        ProbeError,
        format_probe_table,
        plot_probe_levels,
        run_probe,
    )

    opt.check_output_dir(args.out, "--out")
    try:
        result = run_probe(opt.config_from(ProbeConfig, args))
    except ProbeError as e:
        print(f"hierzoo probe: error: {e}", file=sys.stderr)
        return 2
    print(format_probe_table(result))
    written = [Path(args.out) / "probe.json"]
    if not args.no_plots:
        written.append(plot_probe_levels(result, Path(args.out) / "probe_levels.png"))
    print(f"written: {', '.join(map(str, written))}")
    return 0
