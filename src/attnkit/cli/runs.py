"""Run management of ``attnkit train``: one run folder per training, held while it trains; a new run
or a resumed one (``--resume``); the training itself and what it prints (:func:`fit`).

:func:`train_run` is the skeleton every ``attnkit train TASK`` shares; a task says what is its own in a
:class:`RunPlan` (the flags a resumed run refuses, how its task is rebuilt from a checkpoint or built
for a new run, the line printed before training).
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .options import check_folder, flag

__all__ = ["RunPlan", "fit", "fresh_run_folder", "resumed_run", "resumed_train_config", "train_run"]


@dataclass(frozen=True)
class RunPlan:
    """What one ``attnkit train TASK`` does its own way; :func:`train_run` does the rest."""

    task: str  # the task's name in its checkpoints ("g2p", "classify"): a run of another task is refused
    changed: dict  # flags given that a resumed run's own configuration fixes (name -> value): refused with --resume
    read: Callable  # (meta, path) -> the task document of a resumed run's checkpoint (``G2PDoc.read``)
    resume: Callable  # (doc, out) -> the task of a resumed run; its AttentionError names the checkpoint
    new: Callable  # (out or None, claim) -> (task, TrainConfig, out) of a new run; calls claim(out) once out is known
    summary: Callable  # task -> the line printed before training
    hint: str  # what to do with the best model, "{best}" its path


def train_run(args, plan: Callable[[object], RunPlan]) -> int:
    """``attnkit train TASK``: in each process of the run (:func:`attnkit.train.distributed.run`),
    ``plan(args)``, then the run in ``args.out`` resumed (``--resume``, :func:`resumed_run`) or a new
    one (:func:`fresh_run_folder`, through the plan's ``claim``), trained by :func:`fit`. The run
    folder stays locked from the first look at it to the end."""
    from ..train import distributed

    with contextlib.ExitStack() as held:  # the run folder's lock, from the first look at it to the end
        return distributed.run(lambda device: _train(args, device, held, plan(args)), args.device)


def _train(args, device, held, plan: RunPlan) -> int:
    from ..errors import AttentionError
    from ..train import Trainer
    from ..train.checkpoint import CheckpointError

    out = Path(args.out) if args.out else None
    if args.resume:
        meta = resumed_run(out, plan.changed, plan.task, held)
        path = out / "last.safetensors"
        doc = plan.read(meta, path)
        try:
            task = plan.resume(doc, out)
        except AttentionError as err:
            raise CheckpointError(f"checkpoint {str(path)!r}: {err}") from None
        config = resumed_train_config(meta, path)
    else:
        task, config, out = plan.new(out, lambda folder: fresh_run_folder(folder, held))
    trainer = Trainer(task, config, out, progress=not args.no_progress, device=device)
    return fit(trainer, out, args.resume, plan.summary(task), plan.hint, trust_unchecked=args.trust_unchecked)


def resumed_run(out, changed: dict, task_name: str, held) -> dict:
    """The metadata of the run in ``out`` that ``--resume`` continues; flags that would change its
    configuration (``changed``, name -> value) and a run of another task are errors. The folder is
    held (:func:`attnkit.train.trainer.run_lock`) until the ``contextlib.ExitStack`` ``held`` closes."""
    from ..errors import AttentionError
    from ..train import checkpoint
    from ..train.trainer import run_lock

    if out is None:
        raise AttentionError("--resume needs --out, the folder of the run to continue")
    if changed:
        raise AttentionError(
            f"--resume continues with the run's own configuration; drop {', '.join(flag(n) for n in changed)}"
        )
    held.enter_context(run_lock(out, "--out"))  # another training of this folder is refused here
    path = out / "last.safetensors"
    meta = checkpoint.read_meta(path)
    found = checkpoint.task_name(meta)
    if found != task_name:
        raise AttentionError(f"{str(path)!r} is not a {task_name} run (task {found!r})")
    return meta


def resumed_train_config(meta: dict, path):
    """The TrainConfig of a resumed run's metadata, checked field by field."""
    from ..errors import AttentionError
    from ..train import TrainConfig, checkpoint, config_from_dict

    try:
        return config_from_dict(TrainConfig, meta.get("train"), "train")
    except AttentionError as err:
        raise checkpoint.CheckpointError(f"checkpoint {str(path)!r}: {err}") from None


def fresh_run_folder(out, held) -> None:
    """A new run may not write over another run's checkpoints, nor into a file, nor into a folder
    another training holds; ``out`` is held (:func:`attnkit.train.trainer.run_lock`) from here until
    the ``contextlib.ExitStack`` ``held`` closes, so that two runs started at once cannot both pass."""
    from ..errors import AttentionError
    from ..train.trainer import run_lock

    check_folder(out, "--out")
    held.enter_context(run_lock(out, "--out"))
    if (out / "last.safetensors").exists():
        raise AttentionError(f"{str(out)!r} already holds a run; add --resume to continue it or choose another --out")


def fit(trainer, out, resume: bool, summary: str, hint: str, trust_unchecked: bool = False) -> int:
    """Print ``summary``, train (or resume, from a checkpoint without a checksum too with
    ``trust_unchecked``), then say where the best model is. In a distributed run only rank 0 speaks."""
    main = trainer.rank == 0
    params = sum(p.numel() for p in trainer.model.parameters())
    cfg = trainer.config
    how = [] if trainer.world == 1 else [f"{trainer.world} processes"]
    how += [] if cfg.precision == "fp32" else [cfg.precision]
    how += [] if cfg.batch_tokens is None else [f"batches of <= {cfg.batch_tokens} tokens"]
    if main:
        print(f"{summary}: {params:,} parameters -> {out}{''.join(f', {h}' for h in how)}")
    try:
        state = trainer.fit(resume=resume, trust_unchecked=trust_unchecked)
    except KeyboardInterrupt:  # Ctrl-C: where the run can be picked up, in one line
        if main:
            print(_interrupted(trainer, out), file=sys.stderr)
        return 130
    if not main:
        return 0
    metric = trainer.task.metric
    print(f"done after {state['epoch']} epochs, {state['elapsed']:.0f} s; best validation {metric} {state['best']:.2f}")
    best = out / "best.safetensors"
    print(f"best model: {best}   ({hint.format(best=best)})")
    return 0


def _interrupted(trainer, out) -> str:
    from ..errors import AttentionError
    from ..train import checkpoint

    last = Path(out) / "last.safetensors"
    try:  # what is on disk, even if the interrupt came between the rename and the bookkeeping
        step = checkpoint.read_meta(last)["progress"]["step"]
    except (AttentionError, KeyError, TypeError):
        step = None
    if step is None:
        return "attnkit: interrupted before the first checkpoint; nothing to resume (run the command again)"
    command = f"attnkit train {trainer.task.describe()['name']} --out {shlex.quote(str(out))} --resume"
    return f"attnkit: interrupted; the last checkpoint is {last} (step {step}); continue with: {command}"
