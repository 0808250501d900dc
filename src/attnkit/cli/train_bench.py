"""``python -m attnkit.cli.train_bench run|merge|peak``: the training and decoding benchmark of
:mod:`attnkit.bench.train` alone, some kinds at a time (``run``), the runs' reports joined
(``merge``), and one phase's peak memory measured in a fresh process (``peak``, internal:
:func:`attnkit.bench.train.peak` starts it). Not imported by :mod:`attnkit.cli`, so that ``-m``
runs it as a fresh module.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

__all__ = ["train_main"]


def _train_parser() -> argparse.ArgumentParser:
    from ..bench import train

    parser = argparse.ArgumentParser(prog="python -m attnkit.cli.train_bench", description=train.__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="measure some kinds; write OUT/STEM.json and .md")
    go.add_argument("--kind", action="append", choices=train.KINDS, help="repeatable; default: every kind")
    go.add_argument("--contender", action="append", choices=train.CONTENDERS, help="repeatable; default: all")
    go.add_argument("--quick", action="store_true", help="fewer steps and words")
    go.add_argument("--mode", action="append", choices=("quiet", "contended"), help="default: both")
    go.add_argument("--contended-no-decode", action="append", default=[], choices=train.CONTENDERS,
                    help="do not time this contender's decoding under contention (repeatable)")  # fmt: skip
    go.add_argument("--no-memory", action="store_true")
    go.add_argument("--profile", action="store_true", help="profile attnkit's and plain's train steps")
    go.add_argument("--out", type=Path, default=Path("bench-results"))
    go.add_argument("--stem", default="train")
    join = sub.add_parser("merge", help="merge the JSON reports of several runs into OUT/STEM.json and .md")
    join.add_argument("reports", nargs="+", type=Path)
    join.add_argument("--out", type=Path, required=True)
    join.add_argument("--stem", default="results")
    one = sub.add_parser("peak", help="(internal) peak memory of one phase in this process")
    one.add_argument("kind")
    one.add_argument("contender")
    one.add_argument("phase", choices=("train", "beam"))
    one.add_argument("settings")
    return parser


def train_main(argv: Sequence[str] | None = None) -> None:
    """``python -m attnkit.cli.train_bench run|merge|peak`` (see ``--help``)."""
    from ..bench import train

    args = _train_parser().parse_args(argv)
    if args.command == "peak":
        settings = train.settings_from(json.loads(args.settings))
        print(json.dumps(train.peak_here(args.kind, args.contender, args.phase, settings)))
    elif args.command == "merge":
        train.write(train.merge([json.loads(p.read_text()) for p in args.reports]), args.out, args.stem)
    else:
        report = train.run(
            args.kind or train.KINDS,
            args.contender or train.CONTENDERS,
            replace(train.QUICK if args.quick else train.Settings(), contended_no_decode=args.contended_no_decode),
            modes=args.mode or ("quiet", "contended"),
            memory=not args.no_memory,
            profile_contenders=("attnkit", "plain") if args.profile else (),
        )
        train.write(report, args.out, args.stem)


if __name__ == "__main__":
    train_main()
