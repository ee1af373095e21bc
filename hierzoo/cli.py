"""The ``hierzoo`` command line: ``hierzoo <command> ...`` or ``python -m hierzoo <command> ...``."""

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
    from hierzoo.metrics import read_results, score_results
    from hierzoo.report import format_table

    taxonomy = None
    if args.taxonomy:
        from hierzoo import load_taxonomy

        taxonomy = load_taxonomy(args.taxonomy)
    rows = []
    for path in args.results:
        summary = score_results(
            read_results(path), keep_root=args.keep_root, taxonomy=taxonomy, ci=args.ci
        )
        if args.json:
            print(json.dumps({"file": path, **summary}))
        rows.append((path, summary))
    if not args.json:
        print(format_table(rows))
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


COMMANDS = [_add_score, _add_taxonomy]


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
