"""Command-line options shared by the subcommands: one flag per dataclass field."""

from __future__ import annotations

import argparse
import dataclasses

__all__ = ["add_fields", "add_shared_fields", "flag", "given"]


def flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def add_fields(parser, cls, skip=()) -> None:
    """A flag for each field of the dataclass ``cls`` (default None: "not given"), unless skipped
    or already there."""
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name in {a.dest for a in parser._actions}:
            continue
        kind = type(f.default)
        if kind is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(
                flag(f.name), type=kind, default=None, metavar=f.name.upper(), help=f"default {f.default}"
            )


def add_shared_fields(parser, configs: dict[str, type], skip=()) -> None:
    """A flag for each field of the dataclasses ``configs`` (name -> class), once per field name,
    whose help says which names take it and with what default, e.g. ``rnn, han: 128; cnn: 64``."""
    defaults: dict[str, dict] = {}
    for name, cls in configs.items():
        for f in dataclasses.fields(cls):
            if f.name not in skip and f.default is not dataclasses.MISSING:
                defaults.setdefault(f.name, {}).setdefault(f.default, []).append(name)
    for field_name, by_default in defaults.items():
        kind = type(next(iter(by_default)))
        shown = "; ".join(f"{', '.join(names)}: {default}" for default, names in by_default.items())
        if kind is bool:
            parser.add_argument(flag(field_name), action=argparse.BooleanOptionalAction, default=None, help=shown)
        else:
            parser.add_argument(flag(field_name), type=kind, default=None, metavar=field_name.upper(), help=shown)


def given(args, names) -> dict:
    """The fields among ``names`` that the command line set."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
