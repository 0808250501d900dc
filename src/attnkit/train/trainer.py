"""One training loop for every attnkit task: seeded, resumable, with early stopping.

A *task* supplies the data and the objective; the trainer owns everything else:

- ``task.batches(epoch, generator, batch_size) -> list`` the epoch's batches, a pure function of
  the generator (seeded from ``seed`` and ``epoch``), so a resumed run sees the same batches;
- ``task.loss(model, batch, config) -> (loss, count)``: the mean loss and how many items (tokens)
  it averages over, for the throughput column;
- ``task.validate(model) -> dict`` of metrics, one of which is ``task.metric``
  (``task.higher_is_better`` says which way is better);
- ``task.describe() -> dict``: the JSON config a checkpoint carries to rebuild task and model;
- ``task.build() -> nn.Module``: a freshly initialised model.

Files in ``out``: ``last.safetensors`` (model, optimizer, RNG and progress: what ``resume`` reads),
written every ``checkpoint_every`` steps and after every epoch; ``best.safetensors`` (the model at
its best validation score, with its config: what evaluation and inference read);
``config.json`` and ``history.json`` (one record per epoch), for people.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import get_type_hints

import torch
from torch import nn

from ..errors import AttentionError
from . import checkpoint
from .schema import check_value, from_dict

__all__ = ["FILES", "Progress", "TrainConfig", "Trainer", "config_from_dict"]

FILES = ["last.safetensors", "best.safetensors", "config.json", "history.json"]  # what a run writes in its folder


@dataclass
class TrainConfig:
    epochs: int = 20  # passes over the training data, at most
    batch_size: int = 256  # examples per step
    lr: float = 2e-3  # peak learning rate of Adam
    warmup_steps: int = 400  # linear warm-up, then cosine decay to 0 at the last step
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    clip_norm: float = 1.0  # gradient norm clipping
    label_smoothing: float = 0.1  # for the tasks' cross-entropy
    patience: int = 5  # stop after this many epochs without a better validation score
    checkpoint_every: int = 200  # steps between checkpoints (and one after every epoch)
    seed: int = 0  # model initialisation, batch order and dropout all follow from it

    def __post_init__(self):
        kinds = get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            check_value(value, kinds[f.name], f.name)
            if f.name in ("warmup_steps", "weight_decay", "label_smoothing", "seed"):
                if value < 0:
                    raise AttentionError(f"{f.name} must be >= 0, got {value!r}")
            elif value <= 0:
                raise AttentionError(f"{f.name} must be > 0, got {value!r}")
        if self.label_smoothing >= 1:
            raise AttentionError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")


@dataclass
class Progress:
    """Where a run stands: what ``last.safetensors`` records and ``resume`` continues from."""

    epoch: int = 0  # epochs finished
    batch: int = 0  # batches of the current epoch done
    step: int = 0  # optimizer steps taken
    best: float | None = None  # the best validation score so far
    bad_epochs: int = 0  # epochs since the best one
    elapsed: float = 0.0  # seconds of training and validation
    history: list[dict] = field(default_factory=list)  # one record per epoch

    def __post_init__(self):
        for name in ("epoch", "batch", "step", "bad_epochs"):
            if getattr(self, name) < 0:
                raise AttentionError(f"progress.{name} must be >= 0, got {getattr(self, name)}")


def config_from_dict(cls, doc: dict, what: str):
    """Build the dataclass ``cls`` from ``doc``; unknown keys, missing keys and values of the wrong
    type are an error that names the field (:func:`attnkit.train.schema.from_dict`)."""
    return from_dict(cls, doc, what)


def _lr(config: TrainConfig, step: int, total: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Train ``task.build()``'s model on ``task`` into the folder ``out``; ``fit(resume=True)``
    continues a killed run from ``out/last.safetensors`` exactly: same batches, same dropout draws,
    same next-step loss. The model is built right after seeding, so ``seed`` fixes its initial
    weights too."""

    def __init__(self, task, config: TrainConfig, out: str | Path, *, progress: bool = True):
        self.task, self.config, self.out = task, config, Path(out)
        self.progress = progress
        torch.manual_seed(config.seed)
        self.model = model = task.build()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.state = asdict(Progress())
        self.losses: list[float] = []  # training loss of every step taken by this process
        self.saved_step: int | None = None  # the step of the last.safetensors on disk, once there is one

    # -- checkpoints -------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"task": self.task.describe(), "train": asdict(self.config)}

    def _save_last(self) -> None:
        opt_tensors, opt_meta = checkpoint.optimizer_tensors(self.optimizer)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {**self.describe(), "progress": self.state, "optimizer": opt_meta}
        checkpoint.save(self.out / "last.safetensors", tensors, meta)
        self.saved_step = self.state["step"]

    def _save_best(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        meta = {**self.describe(), "progress": {k: v for k, v in self.state.items() if k != "history"}}
        checkpoint.save(self.out / "best.safetensors", tensors, meta)

    def _resume(self) -> None:
        path = self.out / "last.safetensors"
        tensors, meta = checkpoint.load(path)
        if meta.get("task") != self.task.describe() or meta.get("train") != asdict(self.config):
            raise AttentionError(f"checkpoint {str(path)!r} was written for another configuration; see its config.json")
        progress = from_dict(Progress, meta.get("progress"), f"checkpoint {str(path)!r}: progress")
        checkpoint.load_model(self.model, tensors, path)
        try:
            checkpoint.load_optimizer(self.optimizer, tensors, meta["optimizer"])
            torch.set_rng_state(tensors["rng.torch"])
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
            raise checkpoint.CheckpointError(
                f"checkpoint {str(path)!r} does not hold a resumable optimizer and RNG state ({type(err).__name__}: {err})"
            ) from None
        self.state = asdict(progress)
        self.saved_step = self.state["step"]

    # -- the loop ----------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list:
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return self.task.batches(epoch, generator, self.config.batch_size)

    def _better(self, score: float) -> bool:
        best = self.state["best"]
        if best is None:
            return True
        return score > best if self.task.higher_is_better else score < best

    def fit(self, *, resume: bool = False, max_steps: int | None = None) -> dict:
        """Train until ``config.epochs`` or early stopping (or ``max_steps`` more steps, for tests);
        returns the final progress record."""
        cfg = self.config
        checkpoint.remove_temporaries(self.out, FILES)  # what writes killed before their rename left
        if resume:
            self._resume()
        else:
            checkpoint.write_json(self.out / "config.json", self.describe())
        steps_per_epoch = len(self._epoch_batches(0))
        total = cfg.epochs * steps_per_epoch
        taken = 0
        with _Progress(self.progress, total, self.state["step"]) as bar:
            while self.state["epoch"] < cfg.epochs and self.state["bad_epochs"] < cfg.patience:
                batches = self._epoch_batches(self.state["epoch"])
                self.model.train()
                while self.state["batch"] < len(batches):
                    if max_steps is not None and taken >= max_steps:
                        return self.state
                    started = time.perf_counter()
                    loss, count = self._step(batches[self.state["batch"]], total)
                    self.state["batch"] += 1
                    self.state["step"] += 1
                    self.state["elapsed"] += time.perf_counter() - started
                    taken += 1
                    bar.advance(loss, count, time.perf_counter() - started, self.state["epoch"])
                    if self.state["step"] % cfg.checkpoint_every == 0:
                        self._save_last()
                self._end_epoch(bar)
        return self.state

    def _step(self, batch, total: int) -> tuple[float, int]:
        lr = _lr(self.config, self.state["step"], total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, count = self.task.loss(self.model, batch, self.config)
        if not torch.isfinite(loss):
            raise AttentionError(f"training loss became {loss.item()} at step {self.state['step']}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.optimizer.step()
        self.losses.append(loss.item())
        return self.losses[-1], count

    def _end_epoch(self, bar) -> None:
        started = time.perf_counter()
        self.model.eval()
        metrics = self.task.validate(self.model)
        score = metrics[self.task.metric]
        record = {"epoch": self.state["epoch"] + 1, "step": self.state["step"], **metrics}
        record["train_loss"] = sum(self.losses[-50:]) / max(1, len(self.losses[-50:]))
        improved = self._better(score)
        if improved:
            self.state["best"], self.state["bad_epochs"] = score, 0
            self._save_best()
        else:
            self.state["bad_epochs"] += 1
        self.state["history"].append(record)
        self.state["epoch"] += 1
        self.state["batch"] = 0
        self.state["elapsed"] += time.perf_counter() - started
        record["elapsed_s"] = round(self.state["elapsed"], 1)
        self._save_last()
        checkpoint.write_json(self.out / "history.json", self.state["history"])
        bar.log(record, improved)


class _Progress:
    """A rich progress bar with loss, tokens/s and ETA; silent when ``enabled`` is False."""

    def __init__(self, enabled: bool, total: int, completed: int):
        self.enabled, self.total, self.completed = enabled, total, completed
        self.tokens, self.seconds = 0, 0.0

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.3f}  {task.fields[speed]:,.0f} tok/s"),
                TimeRemainingColumn(),
            )
            self.bar.start()
            self.id = self.bar.add_task(
                "train", total=self.total, completed=self.completed, epoch=1, loss=float("nan"), speed=0.0
            )
        return self

    def advance(self, loss: float, count: int, seconds: float, epoch: int) -> None:
        self.tokens, self.seconds = self.tokens + count, self.seconds + seconds
        if self.enabled:
            speed = self.tokens / max(self.seconds, 1e-9)
            self.bar.update(self.id, advance=1, loss=loss, speed=speed, epoch=epoch + 1)

    def log(self, record: dict, improved: bool) -> None:
        shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        shown += "  (best)" if improved else ""
        if self.enabled:
            self.bar.console.print(shown, soft_wrap=True)
        else:
            print(shown, flush=True)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
