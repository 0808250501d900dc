"""Command-line options shared by the subcommands: one flag per dataclass field."""

from __future__ import annotations

import argparse
import dataclasses

__all__ = [
    "add_fields",
    "add_shared_fields",
    "check_model_flags",
    "fit",
    "flag",
    "fresh_run_folder",
    "given",
    "resumed_run",
]


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


def resumed_run(out, changed: dict, task_name: str) -> dict:
    """The metadata of the run in ``out`` that ``--resume`` continues; flags that would change its
    configuration (``changed``, name -> value) and a run of another task are errors."""
    from ..errors import AttentionError
    from ..train import checkpoint

    if out is None:
        raise AttentionError("--resume needs --out, the folder of the run to continue")
    if changed:
        raise AttentionError(
            f"--resume continues with the run's own configuration; drop {', '.join(flag(n) for n in changed)}"
        )
    path = out / "last.safetensors"
    meta = checkpoint.read_meta(path)
    found = (meta.get("task") or {}).get("name")
    if found != task_name:
        raise AttentionError(f"{str(path)!r} is not a {task_name} run (task {found!r})")
    return meta


def check_model_flags(model: str, fields: dict[str, set[str]], model_given: dict) -> None:
    """``model`` is known and every model flag given is one of its config's fields."""
    from ..errors import AttentionError

    if model not in fields:
        raise AttentionError(f"--model {model!r} is unknown; expected one of {list(fields)}")
    foreign = sorted(set(model_given) - fields[model])
    if foreign:
        raise AttentionError(f"{flag(foreign[0])} does not apply to --model {model}")


def fresh_run_folder(out) -> None:
    """A new run may not write over another run's checkpoints."""
    from ..errors import AttentionError

    if (out / "last.safetensors").exists():
        raise AttentionError(f"{str(out)!r} already holds a run; add --resume to continue it or choose another --out")


def fit(trainer, out, resume: bool, summary: str, hint: str) -> int:
    """Print ``summary``, train (or resume), then say where the best model is."""
    params = sum(p.numel() for p in trainer.model.parameters())
    print(f"{summary}: {params:,} parameters -> {out}")
    state = trainer.fit(resume=resume)
    metric = trainer.task.metric
    print(f"done after {state['epoch']} epochs, {state['elapsed']:.0f} s; best validation {metric} {state['best']:.2f}")
    best = out / "best.safetensors"
    print(f"best model: {best}   ({hint.format(best=best)})")
    return 0
