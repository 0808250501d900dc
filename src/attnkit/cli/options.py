"""Command-line options shared by the subcommands: one flag per dataclass field.

Run management (``resumed_run``, ``resumed_train_config``, ``fresh_run_folder``, ``fit``,
``train_run``) is in :mod:`attnkit.cli.runs`, which builds on this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import math
import os
import sys
from pathlib import Path

__all__ = [
    "BEAM_HELP",
    "IMAGE_SUFFIXES",
    "MAX_BEAM",
    "add_fields",
    "add_run_flags",
    "add_trust_flag",
    "add_shared_fields",
    "beam_width",
    "check_folder",
    "check_model_flags",
    "check_names",
    "check_new_file",
    "check_pictures",
    "count",
    "flag",
    "given",
    "number",
    "positive",
    "read_words",
    "train_config",
    "weight",
    "whole",
]

IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".pdf", ".gif", ".webp")


# -- numbers: argparse types that reject what would run on nothing (or on garbage) ------------------
def _at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}")
    return value


def positive(text: str) -> int:
    """A whole number >= 1 (``--limit``, sizes)."""
    return _at_least(text, 1)


MAX_BEAM = 100  # time and memory grow with the beam: a batch of 256 words decodes 256 x K prefixes
BEAM_HELP = (
    f"beam width, 1 to {MAX_BEAM}; 1 = greedy (default: the model's, 1 for the fast model, 3 for the accurate "
    f"one, 5 for a checkpoint that names none). Time and memory grow in proportion to it "
    f"(a batch of 256 words holds 256 x K prefixes), hence the bound"
)


def beam_width(text: str) -> int:
    """A beam width, 1 to :data:`MAX_BEAM` (``--beam``): refused before a model loads, not after
    it has run out of memory."""
    value = _at_least(text, 1)
    if value > MAX_BEAM:
        raise argparse.ArgumentTypeError(
            f"must be a whole number <= {MAX_BEAM}, got {text!r} (time and memory grow with the beam)"
        )
    return value


def whole(text: str) -> int:
    """A whole number >= 0 (a config's int fields; the config says where 0 is too small)."""
    return _at_least(text, 0)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def number(text: str) -> float:
    """A finite number >= 0 (a config's float fields: rates, dropout, decay; the config says where 0
    is too small)."""
    value = _float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def weight(text: str) -> float:
    """A number in (0, 1] (``--distil``: the share of a term in the loss)."""
    value = _float(text)
    if not 0 < value <= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


count = positive  # an alias that reads better for --limit N
_TYPES = {int: whole, float: number, str: str}


# -- files and folders: refused before minutes of work, not after -----------------------------------
def check_folder(path, option: str) -> Path:
    """``path`` can be a folder to write into: not an existing file, nor under one, and its nearest
    existing folder can be written."""
    from ..errors import AttentionError

    path = Path(path)
    _check_name_lengths(path, option)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"is under {str(p)!r}, a file"
                raise AttentionError(f"{option} {str(path)!r} {what}; {option} takes a folder")
            _check_writable(p)
            break
    return path


def check_new_file(path, option: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """``path`` can be a file to write: its folder exists, it is not a folder, its name fits the file
    system, and (with ``suffixes``) it ends in one of them."""
    from ..errors import AttentionError

    path = Path(path)
    _check_name_lengths(path, option)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise AttentionError(f"{option} {str(path)!r} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise AttentionError(f"{option} {str(path)!r} is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise AttentionError(f"{option} {str(path)!r}: the folder {str(folder)!r} {what}")
    _check_writable(folder)
    return path


def _check_writable(folder: Path) -> None:
    """The file system's own error (exit 1), before the work rather than after it."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))


def check_names(path, option: str) -> Path:
    """Every name in ``path`` fits the file system (a file that is written later, in a folder that
    may not exist yet)."""
    path = Path(path)
    _check_name_lengths(path, option)
    return path


def _check_name_lengths(path: Path, option: str) -> None:
    from ..errors import AttentionError

    try:
        limit = os.pathconf(next((p for p in path.parents if p.is_dir()), Path(".")), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX, or the system does not say
        limit = 255
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise AttentionError(
                f"{option}: the name {part[:24]!r}... is {len(os.fsencode(part))} bytes long; "
                f"this file system allows {limit}"
            )


def check_pictures(option: str) -> None:
    """The ``viz`` extra is there before any work is done."""
    from ..errors import AttentionError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise AttentionError(f"{option}: pictures need matplotlib: pip install 'attnkit[viz]'") from None


def flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def add_fields(parser, cls, skip=()) -> None:
    """A flag for each field of the dataclass ``cls`` (default None: "not given"), unless skipped
    or already there. A field whose default is None (``int | None``) takes a whole number >= 1."""
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name in {a.dest for a in parser._actions}:
            continue
        if f.default is None:
            parser.add_argument(flag(f.name), type=positive, default=None, metavar=f.name.upper(), help="default none")
            continue
        kind = type(f.default)
        if kind is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(
                flag(f.name), type=_TYPES[kind], default=None, metavar=f.name.upper(), help=f"default {f.default}"
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
            parser.add_argument(
                flag(field_name), type=_TYPES[kind], default=None, metavar=field_name.upper(), help=shown
            )


def add_run_flags(parser) -> None:
    """Where a training run computes: ``--device``; ``--precision`` and ``--batch-tokens`` are
    TrainConfig fields (their help is here, the flags come with the config's)."""
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) or cuda; under torchrun, cuda means cuda:LOCAL_RANK and NCCL, cpu means gloo",
    )


def add_trust_flag(parser) -> None:
    """``--trust-unchecked``, on every command that loads a checkpoint."""
    parser.add_argument(
        "--trust-unchecked",
        action="store_true",
        help="load checkpoints that carry no checksum (files of older attnkit too): only files you trust",
    )


def train_config(args, names):
    """The TrainConfig of a new run from the flags (bad numbers before the data is read)."""
    from ..errors import AttentionError
    from ..train import TrainConfig

    fields = given(args, names)
    if "batch_tokens" in fields and "batch_size" in fields:
        raise AttentionError("--batch-tokens replaces --batch-size (batches by token budget); give one of them")
    return TrainConfig(**fields)


def read_words(source: str) -> list[tuple[str, int]]:
    """The words of a file (``-``: standard input), whitespace-separated, with their line numbers."""
    from ..errors import AttentionError

    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            path = Path(source)
            if path.is_dir():
                raise AttentionError(f"--file {source!r} is a folder; give a file of words")
            text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        where = "standard input" if source == "-" else repr(source)
        raise AttentionError(f"{where} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    return [(w, n) for n, line in enumerate(text.splitlines(), 1) for w in line.split()]


def given(args, names) -> dict:
    """The fields among ``names`` that the command line set."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def check_model_flags(model: str, fields: dict[str, set[str]], model_given: dict) -> None:
    """``model`` is known and every model flag given is one of its config's fields."""
    from ..errors import AttentionError

    if model not in fields:
        raise AttentionError(f"--model {model!r} is unknown; expected one of {list(fields)}")
    foreign = sorted(set(model_given) - fields[model])
    if foreign:
        raise AttentionError(f"{flag(foreign[0])} does not apply to --model {model}")
