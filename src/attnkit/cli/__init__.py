"""The ``attnkit`` command line. Each subcommand lives in its own module of this folder."""

from __future__ import annotations

import argparse
import sys

from ..errors import AttentionError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnkit", description="Every kind of attention, tested and visible.")
    sub = parser.add_subparsers(dest="command", required=True)
    tour = sub.add_parser("tour", help="run every kind of attention on one small example and print its weights")
    tour.add_argument("--section", action="append", help="only these sections (repeatable); default: all")
    tour.add_argument("--list", action="store_true", help="list the sections and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "tour":
            from .tour import run

            return run(sections=args.section, list_only=args.list)
    except AttentionError as err:  # bad input: one line, no traceback
        print(f"attnkit: error: {err}", file=sys.stderr)
        return 2
    return 1
