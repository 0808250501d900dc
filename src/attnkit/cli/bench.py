"""The benchmarks' command lines: ``attnkit bench`` and ``python -m attnkit.bench.train``.

``attnkit bench`` runs the cases of :mod:`attnkit.bench` (and, with ``--only train``, the training
and decoding benchmark of :mod:`attnkit.bench.train`) into one folder. ``python -m
attnkit.bench.train`` (:func:`train_main`) runs that training benchmark alone, some kinds at a time
(``run``), joins the runs' reports (``merge``), and measures one phase's peak memory in a fresh
process (``peak``, internal: :func:`attnkit.bench.train.peak` starts it).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import AttentionError
from .options import check_folder

__all__ = ["add_bench_parser", "bench", "train_main"]


def add_bench_parser(sub) -> None:
    """``attnkit bench``'s flags, on the ``sub`` subparsers of ``attnkit``."""
    bench = sub.add_parser(
        "bench",
        help="time and memory of each kind of attention against its baselines",
        epilog=_bench_cases(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--quick", action="store_true", help="smaller runs that finish in a few minutes")
    bench.add_argument(
        "--only",
        action="append",
        metavar="CASE",
        help="only these cases (repeatable; listed below); default: all but train",
    )
    bench.add_argument("--out", default="bench-results", help="folder for bench.md and bench.json")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    bench.add_argument(
        "--no-contended", action="store_true", help="skip the runs with a competing CPU-bound load (quiet only)"
    )


def _bench_cases() -> str:
    """The cases ``bench --only`` takes, one line each: its name and its function's first docstring line."""
    from ..bench.cases import CASES

    about = {name: (make.__doc__ or "").strip().splitlines()[0] for name, make in CASES.items()}
    about["train"] = "training and decoding speed of each G2P model kind (train.md, train.json; not run by default)"
    width = max(map(len, about)) + 1
    return "cases:\n" + "\n".join(f"  {name + ':':<{width}}  {line}" for name, line in about.items())


def bench(args) -> int:
    """``attnkit bench``: check ``--only`` and ``--out``, run the cases, say where the results are."""
    from ..bench import run
    from ..bench.cases import CASES

    unknown = [c for c in args.only or [] if c not in CASES and c != "train"]
    if unknown:
        raise AttentionError(f"--only {unknown[0]!r} is unknown; expected one of {[*CASES, 'train']}")
    out = check_folder(args.out, "--out")
    modes = ("quiet",) if args.no_contended else ("quiet", "contended")
    run(only=args.only, quick=args.quick, out=out, memory=not args.no_memory, modes=modes)
    extra = ", train.md, train.json" if "train" in (args.only or []) else ""
    print(f"results: {out / 'bench.md'}, {out / 'bench.json'}{extra}")
    return 0


def _train_parser() -> argparse.ArgumentParser:
    from ..bench import train

    parser = argparse.ArgumentParser(prog="python -m attnkit.bench.train", description=train.__doc__.split("\n")[0])
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
    """``python -m attnkit.bench.train run|merge|peak`` (see ``--help``)."""
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
