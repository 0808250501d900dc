"""``attnkit experiment NAME [--quick] [--out DIR]``: check one of the notes' claims by experiment;
``attnkit experiment --list`` names them."""

from __future__ import annotations

from ..errors import AttentionError

__all__ = ["add_experiment_parser", "experiment"]


def add_experiment_parser(sub) -> None:
    p = sub.add_parser(
        "experiment",
        help="check a claim of the notes by experiment: a picture, a JSON of every number, a report, a verdict",
    )
    p.add_argument("name", nargs="?", help="the experiment (see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments and their claims, and exit")
    p.add_argument("--quick", action="store_true", help="a reduced size that finishes within 10 minutes on 2 cores")
    p.add_argument("--out", help="folder for NAME.png, NAME.json and NAME.md (default experiments/NAME)")


def experiment(args) -> int:
    from ..experiments import EXPERIMENTS
    from .options import check_folder, check_pictures

    if args.list:
        width = max(map(len, EXPERIMENTS))
        for name, e in EXPERIMENTS.items():
            print(f"{name:<{width}}  {e.claim}")
        return 0
    if args.name is None:
        raise AttentionError(f"experiment needs a NAME, one of {sorted(EXPERIMENTS)} (or --list)")
    if args.name not in EXPERIMENTS:
        raise AttentionError(f"experiment {args.name!r} is unknown; expected one of {sorted(EXPERIMENTS)}")
    chosen = EXPERIMENTS[args.name]
    out = check_folder(args.out or f"experiments/{args.name}", "--out")
    check_pictures(f"experiment {args.name}")  # the picture is drawn last: fail before the work
    config = chosen.quick if args.quick else chosen.config()
    size = "quick" if args.quick else "full"
    print(f"{args.name} ({size}): {chosen.claim}")
    verdict = chosen.run(config, out)
    print(f"verdict: {verdict}")
    print(f"results: {out / (args.name + '.md')}, {out / (args.name + '.json')}, {out / (args.name + '.png')}")
    return 0
