"""The ``hierzoo`` command line: ``hierzoo <command> ...`` or ``python -m hierzoo <command>``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from hierzoo import __version__


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
        "--taxonomy", help="bundled name or file: encode names through it and add path consistency"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per file instead of a table"
    )
    p.add_argument("--ci", action="store_true", help="add bootstrap 95%% confidence intervals")
    p.set_defaults(func=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    from hierzoo.metrics import format_left_out, read_result_columns, round_floats, score_results
    from hierzoo.report import format_table

    taxonomy = None
    if args.taxonomy:
        from hierzoo import load_taxonomy

        taxonomy = load_taxonomy(args.taxonomy)
    rows = []
    for path in args.results:
        summary = score_results(
            read_result_columns(path), keep_root=args.keep_root, taxonomy=taxonomy, ci=args.ci
        )
        if args.json:
            print(json.dumps(round_floats({"file": path, **summary}), allow_nan=False))
        rows.append((path, summary))
    if not args.json:
        print(format_table(rows))
        print("(percent of scored samples)")
        for path, summary in rows:
            for line in format_left_out(summary):
                print(f"{path}: {line}")
    return 0


def _add_taxonomy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("taxonomy", help="list the bundled taxonomies or describe one")
    p.add_argument("name", nargs="?", help="bundled name or file")
    p.set_defaults(func=_cmd_taxonomy)


def _cmd_taxonomy(args: argparse.Namespace) -> int:
    from hierzoo import bundled_taxonomies, load_taxonomy

    names = [args.name] if args.name else bundled_taxonomies()
    print(f"{'taxonomy':<20} {'leaves':>7} {'depth':>5}  nodes per level / ranks")
    for name in names:
        tax = load_taxonomy(name)
        ranks = f"  ({', '.join(tax.ranks)})" if tax.ranks else ""
        sizes = " / ".join(map(str, tax.level_sizes))
        print(f"{tax.name:<20} {tax.n_leaves:>7} {tax.depth:>5}  {sizes}{ranks}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="run a model on a question set (resumable; torchrun shards it)",
        description="Answer a four-choice question set (or predict paths) with a model and score "
        "it. "
        "Results go to --out: predictions.jsonl (paper format, appended batch by batch), "
        "summary.json. "
        "Run again with the same --out to resume after a crash.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="zoo name (`hierzoo models`), hf-hub:org/repo, or a model directory",
    )
    p.add_argument("--out", required=True, help="run directory")
    src = p.add_argument_group("questions")
    src.add_argument(
        "--questions",
        help="question file (.jsonl), or a bundled set: cub200-random, cub200-similar",
    )
    src.add_argument("--image-root", help="remap recorded image paths to files under this folder")
    src.add_argument("--taxonomy", help="the bundled taxonomy (or file) the questions come from")
    src.add_argument(
        "--images",
        help="instead of --questions: images in an ImageFolder layout (one folder per leaf)",
    )
    src.add_argument(
        "--labels", help="with --images: a CSV of image,leaf instead of the folder layout"
    )
    src.add_argument("--distractors", choices=["random", "similar"], default="random")
    src.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed of built questions and of option shuffling (42, as the paper)",
    )
    src.add_argument("--limit", type=int, help="only the first N samples")
    how = p.add_argument_group("protocol")
    how.add_argument(
        "--task",
        choices=["questions", "path"],
        default="questions",
        help="four-choice questions, or predict_path over the whole taxonomy",
    )
    how.add_argument(
        "--strategy",
        choices=["independent", "topdown", "joint", "marginal"],
        default="joint",
        help="predict_path strategy for --task path",
    )
    how.add_argument("--protocol", choices=["paper"], default="paper")
    how.add_argument(
        "--prompt-variant",
        type=int,
        choices=range(5),
        metavar="K",
        help="the paper's prompt variant 0-4",
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
        choices=["image", "text"],
        default="image",
        help="text: no image, the question names the leaf",
    )
    how.add_argument(
        "--template",
        action="append",
        dest="templates",
        help="CLIP prompt template with {} (repeatable)",
    )
    run = p.add_argument_group("running")
    run.add_argument("--batch-size", type=int)
    run.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the first GPU if any)")
    run.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    run.add_argument(
        "--num-workers",
        type=int,
        help="image decoding workers (with --decode-on-device: threads reading the files)",
    )
    run.add_argument(
        "--device-map",
        help="vision LLMs larger than one GPU: a transformers device_map such as auto",
    )
    run.add_argument(
        "--decode-on-device",
        action="store_true",
        help="CLIP models: decode JPEGs on the GPU (nvJPEG)",
    )
    run.add_argument(
        "--worker-decode",
        choices=["pil", "tensor"],
        help="CLIP models: how workers decode and resize: PIL "
        "(default, the paper's pixels) or torchvision + torch (about 3x less CPU per image, "
        "pixels within a few grey levels)",
    )
    run.add_argument(
        "--no-batched-vision-attention",
        dest="batched_vision_attention",
        action="store_false",
        help="Qwen-VL: keep transformers' per-window attention loop in the vision tower",
    )
    run.add_argument(
        "--retry-errors", action="store_true", help="redo samples recorded with an error"
    )
    run.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's own)")
    run.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from hierzoo.report import format_summary
    from hierzoo.runner import EvalConfig, RunError, run_eval

    cfg = EvalConfig(
        model=args.model,
        out=args.out,
        questions=args.questions,
        image_root=args.image_root,
        taxonomy=args.taxonomy,
        images=args.images,
        labels=args.labels,
        distractors=args.distractors,
        seed=args.seed,
        task=args.task,
        strategy=args.strategy,
        protocol=args.protocol,
        prompt_variant=args.prompt_variant,
        keep_option_order=args.keep_option_order,
        circular=args.circular,
        mode=args.mode,
        templates=args.templates,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        num_workers=args.num_workers,
        limit=args.limit,
        retry_errors=args.retry_errors,
        progress=not args.no_progress,
        threads=args.threads,
        model_kwargs={
            k: v
            for k, v in (
                ("device_map", args.device_map),
                ("decode_on_device", args.decode_on_device or None),
                ("worker_decode", args.worker_decode),
            )
            if v
        }
        | ({} if args.batched_vision_attention else {"batched_vision_attention": False}),
    )
    try:
        summary = run_eval(cfg)
    except RunError as e:
        print(f"hierzoo eval: error: {e}", file=sys.stderr)
        return 2
    if not summary:  # a rank other than 0
        return 0
    print(format_summary(summary))
    print(f"results: {args.out}/predictions.jsonl, {args.out}/summary.json")
    if summary["n"] == 0:
        print(
            "hierzoo eval: every sample failed; see the error field of predictions.jsonl",
            file=sys.stderr,
        )
        return 1
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--family", help="only one family (clip, vlm, openclip, qwen2.5-vl, ...)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from hierzoo.models._registry import ZOO, list_models

    names = list_models(args.family)
    if args.json:
        print(json.dumps([asdict(ZOO[n]) for n in names], indent=2))
        return 0
    rows = [(n, ZOO[n].family, ZOO[n].params, ZOO[n].hub_id) for n in names]
    widths = [
        max(len(r[i]) for r in rows + [("name", "family", "size", "hub id")]) for i in range(4)
    ]
    for r in [("name", "family", "size", "hub id"), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="compare eval runs: a table (Markdown, CSV) and plots",
        description="Read the summary.json of `hierzoo eval` run directories (or of every run "
        "directory one level under a folder) and write report.md, report.csv and three plots: "
        "HCA against leaf accuracy, accuracy per level, and where paths first break.",
    )
    p.add_argument("runs", nargs="+", metavar="DIR", help="run directory, or a folder of them")
    p.add_argument(
        "--out", default="hierzoo-report", help="report directory (default ./hierzoo-report)"
    )
    p.add_argument("--no-plots", action="store_true", help="only the tables (no matplotlib needed)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hierzoo.report import load_runs, report_table, write_csv, write_markdown, write_plots

    runs = load_runs(args.runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = report_table(runs)
    written = [write_markdown(rows, out / "report.md"), write_csv(rows, out / "report.csv")]
    print(written[0].read_text(), end="")
    if not args.no_plots:
        try:
            written += write_plots(runs, out)
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
    p.add_argument("--out", default="hierzoo-demo", help="demo directory (default ./hierzoo-demo)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hierzoo.demo import REAL_COMMAND, run_demo
    from hierzoo.report import format_summary, load_runs, report_table, write_csv, write_markdown

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
        "(1/4)^4 = 0.4%. Nothing here measures a real model.\nWith a real model and the CUB-200 "
        "images:\n  " + REAL_COMMAND
    )
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="throughput of a model: end to end and forward only, a batch-size sweep",
        description="Time answer() on synthetic JPEG photos (decoding included): images/s, "
        "questions/s, the "
        "forward passes alone, latency per batch (median, p90), peak memory and achieved FLOP/s. "
        "--random-weights builds the zoo model's real architecture without downloading.",
    )
    p.add_argument("model", help="zoo name, hf-hub:org/repo or a model directory")
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
    p.add_argument("--images", type=int, default=256, help="timed images (question-set entries)")
    p.add_argument("--levels", type=int, default=4, help="questions per image")
    p.add_argument(
        "--batch-size", default=None, help="one size or a comma list to sweep, e.g. 64,128,256"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--num-workers",
        type=int,
        help="image decoding workers (with --decode-on-device: threads reading the files)",
    )
    p.add_argument(
        "--decode-on-device", action="store_true", help="CLIP models: decode JPEGs on the GPU"
    )
    p.add_argument(
        "--worker-decode",
        choices=["pil", "tensor"],
        default="pil",
        help="CLIP models: workers decode and resize with PIL, or with torchvision + torch",
    )
    p.add_argument(
        "--no-batched-vision-attention",
        dest="batched_vision_attention",
        action="store_false",
        help="Qwen-VL: keep transformers' per-window attention loop in the vision tower",
    )
    p.add_argument("--image-size", default="500x375", help="synthetic photo size WxH")
    p.add_argument(
        "--baseline", action="store_true", help="also time the paper's per-question loop"
    )
    p.add_argument("--baseline-images", type=int, default=8)
    p.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's own)")
    p.add_argument("--json", help="write the record to this file")
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="profile one batch at the best batch size with torch.profiler: "
        "its op table goes to FILE, the top ops into the record (and FILE.trace.json with --trace)",
    )
    p.add_argument("--trace", action="store_true", help="with --profile: also write a Chrome trace")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from hierzoo.bench import BenchConfig, format_bench, run_bench, write_record

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sizes = [int(x) for x in args.batch_size.split(",")] if args.batch_size else [None]
    w, h = (int(x) for x in args.image_size.lower().split("x"))
    cfg = BenchConfig(
        model=args.model,
        random_weights=args.random_weights,
        size=args.size,
        images=args.images,
        levels=args.levels,
        batch_sizes=sizes,
        device=args.device,
        baseline=args.baseline,
        baseline_images=args.baseline_images,
        image_size=(w, h),
        num_workers=args.num_workers,
        decode_on_device=args.decode_on_device,
        worker_decode=args.worker_decode,
        batched_vision_attention=args.batched_vision_attention,
        profile=args.profile,
        trace=args.trace,
    )
    record = run_bench(cfg)
    print(format_bench(record))
    if args.json:
        print(f"wrote {write_record(record, args.json)}")
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
        required=True,
        help="question file (.jsonl), or a bundled set: cub200-random, cub200-similar",
    )
    p.add_argument("--out", required=True, help="output file, .json (a list) or .jsonl")
    p.add_argument(
        "--format",
        choices=["qwen", "llava", "sharegpt"],
        default="qwen",
        help="qwen: messages with content lists; llava: image + conversations; sharegpt: "
        "LLaMA-Factory's",
    )
    p.add_argument(
        "--mode",
        choices=["image", "text"],
        default="image",
        help="text: no image, the question names the leaf",
    )
    p.add_argument(
        "--image-root",
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
        help="model family whose paper default variant to use (qwen2.5-vl, internvl ...)",
    )
    p.add_argument(
        "--seed", type=int, default=42, help="seed of the option shuffling (42, as the paper)"
    )
    p.add_argument("--keep-option-order", action="store_true", help="keep the file's option order")
    p.add_argument("--limit", type=int, help="only the first N entries")
    p.set_defaults(func=_cmd_export_sft)


def _cmd_export_sft(args: argparse.Namespace) -> int:
    from hierzoo import prompts
    from hierzoo.sft import export_sft
    from hierzoo.tasks import read_questions, validate_questions

    questions = read_questions(args.questions, image_root=args.image_root)[: args.limit]
    key = None
    if args.taxonomy:
        from hierzoo import load_taxonomy

        tax = load_taxonomy(args.taxonomy)
        validate_questions(questions, tax)
        key = tax.name if tax.name in prompts.taxonomies() else None
        if key is None:
            print(
                f"prompts: the generic wording ({args.taxonomy} is not one of the paper's "
                "taxonomies)"
            )
    missing = "skip" if args.skip_missing else ("error" if args.image_root else "recorded")
    done = export_sft(
        questions,
        args.out,
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
        help="linear probes per taxonomy level on a model's features (vision, projector, LLM "
        "layers)",
        description="Extract features of your images at one or more sites of a model (resumable "
        "shards under "
        "--out/features), fit a linear probe per taxonomy level on a held-out split by image, and "
        "compare with "
        "the model's own zero-shot answers on the same images. Writes probe.json and "
        "probe_levels.png to --out "
        "and prints a table. Sites: CLIP image, image:raw, layer:K; vision LLMs vision, "
        "projector, llm:K, "
        "llm:K:answer (K a layer, negative from the end). See docs/probing.md.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="zoo name (`hierzoo models`), hf-hub:org/repo, or a model directory",
    )
    p.add_argument("--taxonomy", required=True, help="bundled name or file")
    p.add_argument(
        "--images",
        help="images in an ImageFolder layout (one folder per leaf), or the root of --labels",
    )
    p.add_argument("--labels", help="a CSV of image,leaf instead of the folder layout")
    p.add_argument(
        "--where",
        action="append",
        required=True,
        metavar="SITE",
        help="feature site (repeatable, or a comma list), e.g. vision,projector,llm:-1",
    )
    p.add_argument(
        "--out", required=True, help="run directory (a rerun resumes the feature extraction)"
    )
    p.add_argument(
        "--text",
        action="store_true",
        help="probe the taxonomy's leaf names instead of images (sites: text for CLIP; llm:K, "
        "llm:K:answer "
        "for vision LLMs); split by name, levels above the leaves",
    )
    p.add_argument(
        "--test-size", type=float, default=0.3, help="share of images held out (default 0.3)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the split and of built questions (default 0)"
    )
    p.add_argument(
        "--zero-shot",
        choices=["auto", "path", "questions", "none"],
        default="auto",
        help="the model's own answers: predict_path over all nodes, or four-choice questions "
        "(auto: path for CLIP, questions for vision LLMs)",
    )
    p.add_argument("--l2", type=float, default=1e-4, help="probe weight decay (default 1e-4)")
    p.add_argument(
        "--max-iter", type=int, default=500, help="probe L-BFGS iterations at most (default 500)"
    )
    p.add_argument(
        "--shard-size", type=int, default=1024, help="images per feature shard (default 1024)"
    )
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the first GPU if any)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's own)")
    p.add_argument(
        "--no-plot", action="store_true", help="no probe_levels.png (no matplotlib needed)"
    )
    p.add_argument("--no-progress", action="store_true")
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

    cfg = ProbeConfig(
        model=args.model,
        taxonomy=args.taxonomy,
        out=args.out,
        where=args.where,
        images=args.images,
        labels=args.labels,
        test_size=args.test_size,
        seed=args.seed,
        zero_shot=args.zero_shot,
        l2=args.l2,
        max_iter=args.max_iter,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        limit=args.limit,
        threads=args.threads,
        progress=not args.no_progress,
        text=args.text,
    )
    try:
        result = run_probe(cfg)
    except ProbeError as e:
        print(f"hierzoo probe: error: {e}", file=sys.stderr)
        return 2
    print(format_probe_table(result))
    written = [Path(args.out) / "probe.json"]
    if not args.no_plot:
        written.append(plot_probe_levels(result, Path(args.out) / "probe_levels.png"))
    print(f"written: {', '.join(map(str, written))}")
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
    parser = argparse.ArgumentParser(
        prog="hierzoo",
        description="Ask vision models what they see at every level of a taxonomy, and measure "
        "whether their answers form one consistent path.",
    )
    parser.add_argument("--version", action="version", version=f"hierzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"hierzoo {args.command}: error: {e}", file=sys.stderr)
        return 2
