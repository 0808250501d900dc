"""The ``attnkit`` command line. Each subcommand lives in its own module of this folder."""

from __future__ import annotations

import argparse
import sys

from ..errors import AttentionError
from . import classify, g2p, viz

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
    train = sub.add_parser("train", help="train a model on a real dataset").add_subparsers(
        dest="trainee", required=True
    )
    g2p.add_train_parser(train)
    classify.add_train_parser(train)
    _add_eval_parser(sub)
    g2p.add_pronounce_parser(sub)
    viz.add_viz_parser(sub)
    classify.add_explain_parser(sub)
    return parser


def _add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score a checkpoint on its dataset's test split (G2P: WER/PER; classifiers: accuracy, F1, MAP)",
    )
    p.add_argument(
        "checkpoint", nargs="?", help="a .safetensors checkpoint or a run folder (default: the shipped G2P model)"
    )
    p.add_argument("--split", default="test", help="test (default), valid or train")
    p.add_argument("--beam", type=int, help="G2P only: beam width; 1 = greedy (default 5)")
    p.add_argument("--limit", type=int, help="only the first N examples of the split")
    p.add_argument("--json", help="also write the figures to this JSON file")


EVALUATORS = {"g2p": g2p.evaluate, "classify": classify.evaluate}  # a checkpoint's task name -> its eval


def _evaluate(args) -> int:
    """``attnkit eval``: the evaluator of the checkpoint's task (``meta["task"]["name"]``)."""
    from pathlib import Path

    from ..train import checkpoint

    name = "g2p"  # no checkpoint: the shipped G2P model
    if args.checkpoint is not None:
        path = Path(args.checkpoint)
        path = path / "best.safetensors" if path.is_dir() else path
        name = (checkpoint.read_meta(path).get("task") or {}).get("name")
        if name not in EVALUATORS:
            raise AttentionError(
                f"checkpoint {str(path)!r} holds a {name!r} model; attnkit eval knows {sorted(EVALUATORS)}"
            )
    return EVALUATORS[name](args)


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
            return {"g2p": g2p.train, "classify": classify.train}[args.trainee](args)
        if args.command == "eval":
            return _evaluate(args)
        if args.command == "pronounce":
            return g2p.pronounce(args)
        if args.command == "viz":
            return viz.viz(args)
        if args.command == "explain":
            return classify.explain(args)
    except AttentionError as err:  # bad input: one line, no traceback
        print(f"attnkit: error: {err}", file=sys.stderr)
        return 2
    return 1
