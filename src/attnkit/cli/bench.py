"""``attnkit bench``: the cases of :mod:`attnkit.bench` (and, with ``--only train``, the training
and decoding benchmark of :mod:`attnkit.bench.train`) into one folder. That training benchmark
alone has its own command line, :mod:`attnkit.cli.train_bench`.
"""

from __future__ import annotations

import argparse

from ..errors import AttentionError
from .options import check_folder

__all__ = ["add_bench_parser", "bench"]


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
