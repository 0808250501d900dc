"""One training loop for every attnkit task: seeded, resumable, with early stopping.

A *task* supplies the data and the objective; the trainer owns everything else:

- ``task.batches(epoch, generator, batch_size, batch_tokens=None) -> list`` the epoch's batches, a
  pure function of the generator (seeded from ``seed`` and ``epoch``), so a resumed run sees the same
  batches; with ``batch_tokens``, batches of similar lengths whose padded size stays within it;
- ``task.loss(model, batch, config) -> (loss, count)``: the mean loss and how many items (tokens)
  it averages over, for the throughput column;
- ``task.validate(model) -> dict`` of metrics, one of which is ``task.metric``
  (``task.higher_is_better`` says which way is better);
- ``task.weight(batch) -> int``: what the loss of ``batch`` is a mean over (target tokens,
  examples), so that processes of a distributed run weigh their parts of a batch exactly;
- ``task.describe() -> dict``: the JSON config a checkpoint carries to rebuild task and model;
- ``task.build() -> nn.Module``: a freshly initialised model.

Files in ``out``: ``last.safetensors`` (model, optimizer, RNG and progress: what ``resume`` reads),
written every ``checkpoint_every`` steps and after every epoch; ``best.safetensors`` (the model at
its best validation score, with its config: what evaluation and inference read);
``config.json`` and ``history.json`` (one record per epoch), for people; with ``keep_epochs`` N,
``epoch-K.safetensors`` (the weights after epoch K, in ``best``'s form) for the last N epochs, for
checkpoint averaging (:func:`attnkit.train.checkpoint.average`); ``run.lock`` while a training holds
the folder (:func:`run_lock`: one training per folder at a time).

Under ``torchrun`` (:mod:`attnkit.train.distributed`) every process runs this loop on its share of
each global batch inside ``DistributedDataParallel``; rank 0 alone validates, writes the files and
draws the progress bar. ``config.precision`` runs the forward passes (training and validation) under
``torch.autocast`` (:mod:`attnkit.train.precision`).
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
from . import checkpoint, distributed, precision
from .runlock import LOCK as LOCK  # re-exported
from .runlock import run_lock
from .schema import check_value, from_dict

__all__ = ["FILES", "LOCK", "Progress", "TrainConfig", "Trainer", "config_from_dict", "epoch_file", "run_lock"]

FILES = ["last.safetensors", "best.safetensors", "config.json", "history.json"]  # what a run writes in its folder
# AdamW moves every weight by about lr a step whatever its gradient's size (the update is divided by
# the gradient's running RMS), so lr is in the units of the weights, which start near 1/sqrt(fan-in)
# (0.06 for 256 inputs): past 1 each step throws every weight many times its size and nothing is
# learnt (usual values are 1e-4 to 1e-2), and 1e308 overflowed the optimizer's arithmetic
MAX_LR = 1.0
MAX_SEED = 2**32 - 1  # seed x 1,000,003 + epoch seeds each epoch's batch order, and must fit in 64 bits
TRAIN_LOSS_STEPS = 50  # an epoch's train_loss in history.json: the mean loss of the run's latest 50 steps


@dataclass
class TrainConfig:
    epochs: int = 20  # passes over the training data, at most
    batch_size: int = 256  # examples per step
    lr: float = 2e-3  # peak learning rate of Adam, at most MAX_LR
    warmup_steps: int = 400  # linear warm-up, then cosine decay to 0 at the last step
    weight_decay: float = 0.0  # AdamW's decoupled weight decay; lr x weight_decay < 1
    clip_norm: float = 1.0  # gradient norm clipping
    label_smoothing: float = 0.1  # for the tasks' cross-entropy
    patience: int = 5  # stop after this many epochs without a better validation score
    checkpoint_every: int = 200  # steps between checkpoints (and one after every epoch)
    seed: int = 0  # model initialisation, batch order and dropout all follow from it
    precision: str = "fp32"  # fp32, or mixed: bf16 (CPU, CUDA) or fp16 (CUDA, loss-scaled); weights stay fp32
    batch_tokens: int | None = None  # instead of batch_size: padded tokens per batch, batches of similar lengths
    keep_epochs: int = 0  # keep the weights after each of the last N epochs (epoch-K.safetensors), for averaging

    def __post_init__(self):
        kinds = get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            check_value(value, kinds[f.name], f.name)
            if value is None or isinstance(value, str):
                continue
            if f.name in ("warmup_steps", "weight_decay", "label_smoothing", "seed", "keep_epochs"):
                if value < 0:
                    raise AttentionError(f"{f.name} must be >= 0, got {value!r}")
            elif value <= 0:
                raise AttentionError(f"{f.name} must be > 0, got {value!r}")
        if self.label_smoothing >= 1:
            raise AttentionError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.lr > MAX_LR:
            raise AttentionError(
                f"lr must be <= {MAX_LR:g}, got {self.lr!r} (AdamW moves every weight by about lr a step; "
                "usual values are 1e-4 to 1e-2)"
            )
        if self.lr * self.weight_decay >= 1:
            raise AttentionError(
                f"weight_decay x lr must be < 1, got {self.weight_decay!r} x {self.lr!r} (AdamW scales every "
                "weight by 1 - lr x weight_decay a step: at 1 or more it zeroes them or flips their sign)"
            )
        if self.seed > MAX_SEED:
            raise AttentionError(f"seed must be in 0..{MAX_SEED}, got {self.seed!r}")
        precision.check(self.precision, "cuda")  # a known name; whether it runs here is the Trainer's check


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
    world_size: int = 1  # processes that took the latest steps (torchrun's WORLD_SIZE)
    recent_losses: list[float] = field(default_factory=list)  # the latest TRAIN_LOSS_STEPS steps' losses

    def __post_init__(self):
        for name in ("epoch", "batch", "step", "bad_epochs"):
            if getattr(self, name) < 0:
                raise AttentionError(f"progress.{name} must be >= 0, got {getattr(self, name)}")
        if self.world_size < 1:
            raise AttentionError(f"progress.world_size must be >= 1, got {self.world_size}")


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
    weights too. ``device``: where it trains (default the CPU). In a process group of several
    processes (:func:`attnkit.train.distributed.init`), the model is wrapped in
    ``DistributedDataParallel`` and each process takes its share of every batch."""

    def __init__(self, task, config: TrainConfig, out: str | Path, *, progress: bool = True, device=None):
        self.task, self.config, self.out = task, config, Path(out)
        self.device = torch.device(device or "cpu")
        precision.check(config.precision, self.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.progress = progress and self.rank == 0
        torch.manual_seed(config.seed)
        self.model = model = task.build().to(self.device)  # the model itself: what checkpoints hold
        self.net = model  # what the training steps call: the model, or its DistributedDataParallel wrapper
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=ids)
            if self.rank > 0:  # each process its own dropout draws; rank 0 those of a single process
                torch.manual_seed(_rank_seed(config.seed, 0, self.rank))
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = precision.scaler(config.precision, self.device)
        self.state = asdict(Progress(world_size=self.world))
        self.losses: list[float] = []  # training loss of every step taken by this process (of the whole batch)
        self.saved_step: int | None = None  # the step of the last.safetensors on disk, once there is one

    # -- checkpoints -------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"task": self.task.describe(), "train": asdict(self.config)}

    def _rng_states(self) -> dict[str, torch.Tensor]:
        """Every process's torch RNG state (``rng.torch`` for rank 0, ``rng.torch.R`` for rank R),
        gathered to rank 0, and rank 0's CUDA one when it trains on CUDA."""
        own = torch.get_rng_state()
        states = [own]
        if self.world > 1:
            states = [None] * self.world
            torch.distributed.all_gather_object(states, own)
        out = {"rng.torch" if r == 0 else f"rng.torch.{r}": s for r, s in enumerate(states)}
        if self.device.type == "cuda":
            out["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return out

    def _save_last(self) -> None:
        rng = self._rng_states()  # every process takes part; rank 0 writes
        if self.rank != 0:
            self.saved_step = self.state["step"]
            return
        opt_tensors, opt_meta = checkpoint.optimizer_tensors(self.optimizer)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(opt_tensors)
        tensors.update(rng)
        meta = {**self.describe(), "progress": self.state, "optimizer": opt_meta}
        if self.scaler.is_enabled():
            meta["scaler"] = self.scaler.state_dict()
        checkpoint.save(self.out / "last.safetensors", tensors, meta)
        self.saved_step = self.state["step"]

    def _save_weights(self, name: str) -> None:
        """The model's weights with the run's config: what evaluation and inference read."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        meta = {**self.describe(), "progress": {k: v for k, v in self.state.items() if k not in _RESUME_ONLY}}
        checkpoint.save(self.out / name, tensors, meta)

    def _keep_epoch(self) -> None:
        """``epoch-K.safetensors`` for this epoch K; those older than the last ``keep_epochs`` go."""
        n = self.config.keep_epochs
        epoch = self.state["epoch"]  # epochs finished, this one included
        self._save_weights(epoch_file(epoch))
        for old in self.out.glob("epoch-*.safetensors"):
            k = old.name[len("epoch-") : -len(".safetensors")]
            if k.isdigit() and int(k) <= epoch - n:
                old.unlink(missing_ok=True)

    def _resume(self, trust_unchecked: bool) -> None:
        path = self.out / "last.safetensors"
        tensors, meta = checkpoint.load(path, trust_unchecked=trust_unchecked)
        try:
            train = from_dict(TrainConfig, meta.get("train"), "train")  # older runs: the new fields' defaults
        except AttentionError as err:
            raise checkpoint.CheckpointError(f"checkpoint {str(path)!r}: {err}") from None
        if meta.get("task") != self.task.describe() or train != self.config:
            raise AttentionError(f"checkpoint {str(path)!r} was written for another configuration; see its config.json")
        progress = from_dict(Progress, meta.get("progress"), f"checkpoint {str(path)!r}: progress")
        checkpoint.load_model(self.model, tensors, path)
        try:
            checkpoint.load_optimizer(self.optimizer, tensors, meta["optimizer"])
            own = tensors.get("rng.torch" if self.rank == 0 else f"rng.torch.{self.rank}")
            if own is not None and progress.world_size == self.world:
                torch.set_rng_state(own)
            else:  # another world size: this process's draws start afresh from the seed and the step
                torch.manual_seed(_rank_seed(self.config.seed, progress.step, self.rank))
            if self.device.type == "cuda" and "rng.cuda" in tensors:
                torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
            if self.scaler.is_enabled() and "scaler" in meta:
                self.scaler.load_state_dict(meta["scaler"])
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
            raise checkpoint.CheckpointError(
                f"checkpoint {str(path)!r} does not hold a resumable optimizer and RNG state ({type(err).__name__}: {err})"
            ) from None
        self.state = asdict(progress)
        self.state["world_size"] = self.world
        self.saved_step = self.state["step"]

    # -- the loop ----------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list:
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        if self.config.batch_tokens is None:
            return self.task.batches(epoch, generator, self.config.batch_size)
        return self.task.batches(epoch, generator, self.config.batch_size, batch_tokens=self.config.batch_tokens)

    def _better(self, score: float) -> bool:
        best = self.state["best"]
        if best is None:
            return True
        return score > best if self.task.higher_is_better else score < best

    def fit(self, *, resume: bool = False, max_steps: int | None = None, trust_unchecked: bool = False) -> dict:
        """Train until ``config.epochs`` or early stopping (or ``max_steps`` more steps, for tests);
        returns the final progress record. ``trust_unchecked``: resume from a ``last.safetensors``
        without a checksum (:func:`attnkit.train.checkpoint.load`); what the run writes has one.
        The run folder is held (:func:`run_lock`) while it trains."""
        with run_lock(self.out):
            return self._fit(resume, max_steps, trust_unchecked)

    def _fit(self, resume: bool, max_steps: int | None, trust_unchecked: bool) -> dict:
        cfg = self.config
        if self.rank == 0:
            checkpoint.remove_temporaries(self.out, [*FILES, "epoch-*.safetensors"])  # what writes killed before their rename left
        if resume:
            self._resume(trust_unchecked)
        if self.rank == 0:  # for people: the configuration, and how many processes train it now
            checkpoint.write_json(self.out / "config.json", {**self.describe(), "world_size": self.world})
        steps_per_epoch = len(self._epoch_batches(0))
        total = cfg.epochs * steps_per_epoch
        taken = 0
        with _Progress(self.progress, total, self.state["step"], log=self.rank == 0) as bar:
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
        part, share = distributed.shard(batch, self._weigh, self.rank, self.world)
        part = _to(part, self.device)
        with precision.autocast(self.config.precision, self.device):
            loss, count = self.task.loss(self.net, part, self.config)
        if self.world > 1:  # the whole batch's loss and tokens; DDP averages the gradients over the world
            shown = torch.stack([loss.detach().float() * share, torch.tensor(float(count), device=loss.device)])
            torch.distributed.all_reduce(shown)
            whole, count = shown[0], int(shown[1].item())
            loss = loss * (share * self.world)
        else:
            whole = loss.detach()
        if not torch.isfinite(whole):
            raise self._diverged("loss", whole.item(), lr)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        if not self.scaler.is_enabled() and not torch.isfinite(norm):  # fp16's scaler skips such steps itself
            raise self._diverged("gradient", norm.item(), lr)  # before the step writes it into the weights
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.losses.append(whole.item())
        recent = self.state["recent_losses"]
        recent.append(self.losses[-1])
        del recent[:-TRAIN_LOSS_STEPS]
        return self.losses[-1], count

    def _diverged(self, what: str, value: float, lr: float) -> AttentionError:
        """The error of a step whose loss or gradient is not finite, naming its likely cause."""
        return AttentionError(
            f"training {what} became {value} at step {self.state['step']}: the learning rate (--lr "
            f"{self.config.lr:g}, {lr:.3g} at this step) is likely too high; lower --lr or lengthen --warmup-steps"
        )

    def _weigh(self, batch) -> int:
        weigh = getattr(self.task, "weight", None)
        return weigh(batch) if weigh is not None else distributed._count(batch)

    def _validate(self) -> dict:
        """Rank 0 validates (under the run's precision); the other processes receive its metrics."""
        metrics = None
        if self.rank == 0:
            with torch.no_grad(), precision.autocast(self.config.precision, self.device):
                metrics = self.task.validate(self.model)
        if self.world > 1:
            box = [metrics]
            torch.distributed.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics

    def _end_epoch(self, bar) -> None:
        started = time.perf_counter()
        self.model.eval()
        metrics = self._validate()
        score = metrics[self.task.metric]
        record = {"epoch": self.state["epoch"] + 1, "step": self.state["step"], **metrics}
        recent = self.state["recent_losses"]  # in last.safetensors, so that a resumed run's history is the same
        record["train_loss"] = sum(recent) / max(1, len(recent))
        improved = self._better(score)
        if improved:
            self.state["best"], self.state["bad_epochs"] = score, 0
            if self.rank == 0:
                self._save_weights("best.safetensors")
        else:
            self.state["bad_epochs"] += 1
        self.state["history"].append(record)
        self.state["epoch"] += 1
        self.state["batch"] = 0
        self.state["elapsed"] += time.perf_counter() - started
        record["elapsed_s"] = round(self.state["elapsed"], 1)
        if self.config.keep_epochs and self.rank == 0:
            self._keep_epoch()
        self._save_last()
        if self.rank == 0:
            checkpoint.write_json(self.out / "history.json", self.state["history"])
        bar.log(record, improved)


_RESUME_ONLY = ("history", "recent_losses")  # progress that last.safetensors keeps and the weights' files do not


def epoch_file(epoch: int) -> str:
    """The name of the weights kept after ``epoch`` (``keep_epochs``)."""
    return f"epoch-{epoch:03d}.safetensors"


def _rank_seed(seed: int, step: int, rank: int) -> int:
    """The seed of a process's dropout draws where no saved state continues them."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % 2**63


def _to(batch, device: torch.device):
    """``batch`` (tensors in nested tuples and lists) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(x, device) for x in batch)
    return batch


class _Progress:
    """A rich progress bar with loss, tokens/s and ETA; silent when ``enabled`` is False."""

    def __init__(self, enabled: bool, total: int, completed: int, log: bool = True):
        self.enabled, self.total, self.completed, self.logs = enabled, total, completed, log
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
        if not self.logs:  # a distributed run's other processes: rank 0 says it
            return
        if self.enabled:
            self.bar.console.print(shown, soft_wrap=True)
        else:
            print(shown, flush=True)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
