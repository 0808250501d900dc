"""The ``attnkit`` command line. Each subcommand lives in its own module of this folder.

Every failure is one line on stderr and a non-zero exit, never a traceback: ``attnkit: error: ...``
and exit 2 for bad input (flags, texts, checkpoints), exit 1 for the file system (a full disk, a
read-only folder), exit 130 for Ctrl-C. ``ATTNKIT_DEBUG=1`` lets the traceback through, for
developers.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

from ..errors import AttentionError
from . import bench, classify, experiment, export, g2p, viz
from .options import BEAM_HELP, add_trust_flag, beam_width, check_new_file, count

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the command line's one-line form."""

    def error(self, message: str):
        command = self.prog.removeprefix("attnkit").strip()  # "pronounce", "train g2p"; "" for attnkit itself
        where = f"{command}: " if command else ""
        self.exit(2, f"attnkit: error: {where}{message} (see {self.prog} --help)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("attnkit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attnkit", description="Every kind of attention, tested and visible.")
    parser.add_argument("--version", action="version", version=f"attnkit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    tour = sub.add_parser("tour", help="run every kind of attention on one small example and print its weights")
    tour.add_argument("--section", action="append", help="only these sections (repeatable); default: all")
    tour.add_argument("--list", action="store_true", help="list the sections and exit")
    tour.add_argument("--plot", metavar="DIR", help="also save every weight table as a heatmap PNG in DIR")
    bench.add_bench_parser(sub)
    train = sub.add_parser("train", help="train a model on a real dataset").add_subparsers(
        dest="trainee", required=True
    )
    g2p.add_train_parser(train)
    classify.add_train_parser(train)
    _add_eval_parser(sub)
    g2p.add_pronounce_parser(sub)
    viz.add_viz_parser(sub)
    classify.add_explain_parser(sub)
    experiment.add_experiment_parser(sub)
    export.add_export_parser(sub)
    return parser


def _add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score a checkpoint on its dataset's test split (G2P: WER/PER; classifiers: accuracy, F1, MAP)",
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="a .safetensors checkpoint, a run folder, or a shipped G2P model: fast (default) or accurate",
    )
    p.add_argument("--split", default="test", help="test (default), valid or train")
    p.add_argument("--beam", type=beam_width, help=f"G2P only: {BEAM_HELP}")
    p.add_argument(
        "--limit",
        type=count,
        help="only N examples of the split (G2P: spread over the alphabetical split; classifiers: the first N)",
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--precision", default="fp32", help="fp32 (default) or bf16 (mixed precision on CPU or CUDA)")
    add_trust_flag(p)


EVALUATORS = {"g2p": g2p.evaluate, "classify": classify.evaluate}  # a checkpoint's task name -> its eval


def _evaluate(args) -> int:
    """``attnkit eval``: the evaluator of the checkpoint's task (``meta["task"]["name"]``)."""
    from pathlib import Path

    from ..train import checkpoint

    if args.json:
        check_new_file(args.json, "--json")  # before minutes of decoding, not after
    name = "g2p"  # no checkpoint, or a shipped G2P model's name
    if args.checkpoint is not None and args.checkpoint not in ("fast", "accurate"):
        path = Path(args.checkpoint)
        path = path / "best.safetensors" if path.is_dir() else path
        name = checkpoint.task_name(checkpoint.read_meta(path))
        if name not in EVALUATORS:
            raise AttentionError(
                f"checkpoint {str(path)!r} holds a {name!r} model; attnkit eval knows {sorted(EVALUATORS)}"
            )
    return EVALUATORS[name](args)


def main(argv: list[str] | None = None) -> int:
    """Run ``attnkit argv``; returns the exit status (argparse's own exits too, e.g. 0 for --help)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as done:  # --help, or a flag argparse rejected (already one line on stderr)
        return done.code if isinstance(done.code, int) else 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line
            return _run(args)
    except AttentionError as err:  # bad input, checkpoints included: one line, no traceback
        return _fail(err, f"attnkit: error: {err}", 2)
    except OSError as err:  # the file system: a full disk, a read-only folder, a name too long
        return _fail(err, f"attnkit: error: {_os_message(err)}", 1)
    except KeyboardInterrupt as err:  # Ctrl-C outside training (training says where to resume)
        return _fail(err, "attnkit: interrupted", 130)
    except (MemoryError, RuntimeError) as err:  # the machine's memory: a model or batch too big for it
        memory = _memory_message(err)
        if memory is None:
            raise
        return _fail(err, f"attnkit: error: {memory}", 1)


def _memory_message(err: BaseException) -> str | None:
    """One line for an allocation the machine could not make (torch's CPU allocator, a CUDA
    out-of-memory, Python's MemoryError), None for any other error (a bug: its traceback shows)."""
    text = str(err)
    cpu = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", text)
    if isinstance(err, MemoryError) or cpu or "out of memory" in text.lower():
        asked = f" ({int(cpu[1]):,} bytes at once)" if cpu else ""
        return (
            f"out of memory{asked}: the model, batch or beam needs more memory than this machine has free; "
            "make it smaller (e.g. --hidden-dim, --layers, --batch-size, --beam) or free memory"
        )
    return None


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning (e.g. a precision fallback) as one line on stderr, like the errors: no source line."""
    print(f"attnkit: warning: {message}", file=sys.stderr if file is None else file)


def _fail(err: BaseException, line: str, status: int) -> int:
    if os.environ.get("ATTNKIT_DEBUG"):
        raise err
    print(line, file=sys.stderr)
    return status


def _os_message(err: OSError) -> str:
    """``No space left on device: 'runs/x/last.safetensors'``: what failed and on which file."""
    what = err.strerror or str(err) or type(err).__name__
    if err.filename is None:
        return what
    where = repr(str(err.filename))
    if err.filename2 is not None:
        where += f" -> {str(err.filename2)!r}"
    return f"{what}: {where}"


def _run(args) -> int:
    if args.command == "tour":
        from .tour import run

        return run(sections=args.section, list_only=args.list, plot_dir=args.plot)
    if args.command == "bench":
        return bench.bench(args)
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
    if args.command == "experiment":
        return experiment.experiment(args)
    if args.command == "export":
        return export.export(args)
    return 1
