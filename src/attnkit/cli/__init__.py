"""The ``attnkit`` command line. Each subcommand lives in its own module of this folder."""

from __future__ import annotations

import argparse
import sys

from ..errors import AttentionError
from . import g2p, viz

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnkit", description="Every kind of attention, tested and visible.")
    sub = parser.add_subparsers(dest="command", required=True)
    tour = sub.add_parser("tour", help="run every kind of attention on one small example and print its weights")
    tour.add_argument("--section", action="append", help="only these sections (repeatable); default: all")
    tour.add_argument("--list", action="store_true", help="list the sections and exit")
    tour.add_argument("--plot", metavar="DIR", help="also save every weight table as a heatmap PNG in DIR")
    bench = sub.add_parser("bench", help="time and memory of each kind of attention against its baselines")
    bench.add_argument("--quick", action="store_true", help="smaller runs that finish in a few minutes")
    bench.add_argument("--only", action="append", help="only these cases (repeatable); default: all")
    bench.add_argument("--out", default="bench-results", help="folder for bench.md and bench.json")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    train = sub.add_parser("train", help="train a model on a real dataset").add_subparsers(dest="task", required=True)
    g2p.add_train_parser(train)
    g2p.add_eval_parser(sub)
    g2p.add_pronounce_parser(sub)
    viz.add_viz_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "tour":
            from .tour import run

            return run(sections=args.section, list_only=args.list, plot_dir=args.plot)
        if args.command == "bench":
            from pathlib import Path

            from ..bench import run as bench
            from ..bench.cases import CASES

            unknown = [c for c in args.only or [] if c not in CASES]
            if unknown:
                raise AttentionError(f"--only {unknown[0]!r} is unknown; expected one of {list(CASES)}")
            bench(only=args.only, quick=args.quick, out=Path(args.out), memory=not args.no_memory)
            print(f"results: {Path(args.out) / 'bench.md'}, {Path(args.out) / 'bench.json'}")
            return 0
        if args.command == "train":
            return g2p.train(args)
        if args.command == "eval":
            return g2p.evaluate(args)
        if args.command == "pronounce":
            return g2p.pronounce(args)
        if args.command == "viz":
            return viz.viz(args)
    except AttentionError as err:  # bad input: one line, no traceback
        print(f"attnkit: error: {err}", file=sys.stderr)
        return 2
    return 1
