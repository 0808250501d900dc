"""G2P models trained and inspected for experiments: what every experiment that trains on CMUdict
shares (scaling now; bottleneck, parameters and hard / soft / local can use the same calls).

- :func:`train`: a G2P model trained by the project's :class:`~attnkit.train.Trainer` for a fixed
  number of epochs (no early stopping: the curves are the result), with its per-epoch history.
- :func:`attention_sharpness`: how peaked a trained model's attention is, every head and every
  step, teacher-forced on validation words one at a time (:func:`attention_rows`).
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..core.stats import sharpness

__all__ = ["Run", "TrainSize", "attention_rows", "attention_sharpness", "train", "trainer"]


@dataclass
class TrainSize:
    """How much and how long a model trains; the rest of :class:`~attnkit.train.TrainConfig` keeps
    its defaults."""

    limit: int | None  # training words; None: the whole training split
    valid_limit: int  # validation words decoded (greedy) after each epoch
    epochs: int  # every epoch runs
    batch_size: int  # words per step
    lr: float  # peak learning rate
    warmup_steps: int  # linear warm-up steps
    seed: int  # weights, batch order and dropout
    phrases: int | None = None  # train on this many phrases instead of words (``limit`` must be None)
    max_words: int = 8  # words per phrase, 1..max_words (with phrases only)


class Run(NamedTuple):
    """A trained model, its task and one record per epoch (``epoch``, ``wer``, ``train_loss``, ...)."""

    model: nn.Module
    task: object  # the G2PTask
    history: list[dict]

    def curve(self, key: str) -> list[float]:
        """``key`` of every epoch's record, in order."""
        return [r[key] for r in self.history]


def trainer(kind: str, model_config: dict, size: TrainSize, work: Path, *, reverse: bool = False):
    """The :class:`~attnkit.train.Trainer` of a G2P model of ``kind`` ("rnn" or "transformer") with
    ``model_config``, writing into the folder ``work``. ``reverse``: every spelling, training and
    validation, is read backwards (a task whose alignment is the anti-diagonal)."""
    from ..tasks.g2p import G2PTask
    from ..train import TrainConfig, Trainer

    config = TrainConfig(
        epochs=size.epochs,
        batch_size=size.batch_size,
        lr=size.lr,
        warmup_steps=size.warmup_steps,
        patience=size.epochs,  # no early stopping
        seed=size.seed,
    )
    phrases = {} if size.phrases is None else {"phrases": size.phrases, "max_words": size.max_words}
    task = G2PTask(kind, model_config, limit=size.limit, valid_limit=size.valid_limit, **phrases)
    if reverse:
        task.valid = [replace(e, word=e.word[::-1]) for e in task.valid]
        task.pairs = [(src[::-1], tgt) for src, tgt in task.pairs]
    return Trainer(task, config, work, progress=False)


def train(
    kind: str, model_config: dict, size: TrainSize, work: Path, *, reverse: bool = False, label: str | None = None
) -> Run:
    """Train :func:`trainer`'s model for ``size.epochs`` epochs in ``work`` (checkpoints: scratch,
    not results). A folder that holds a checkpoint of the same task and config continues from it;
    a finished run is only loaded. The trainer's lines (one per epoch) begin with ``label``:
    (default: the folder's name, which each experiment gives each of its models), so that an
    experiment's log says which model each line belongs to."""
    run = trainer(kind, model_config, size, work, reverse=reverse)
    with contextlib.redirect_stdout(_Labelled(sys.stdout, f"{label or Path(work).name}: ")):
        history = run.fit(resume=(Path(work) / "last.safetensors").exists())["history"]
    return Run(run.model, run.task, history)


class _Labelled(io.TextIOBase):
    """A text stream that writes to ``out`` with ``label`` at the start of every line."""

    def __init__(self, out, label: str):
        self.out, self.label, self.fresh = out, label, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            self.out.write(self.label + piece if self.fresh else piece)
            self.fresh = piece.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def attention_sharpness(run: Run) -> dict:
    """:func:`~attnkit.core.stats.sharpness` of :func:`attention_rows`, plus ``support``: the mean
    number of letters a row gives a weight above zero (sparse maps and hard attention: few)."""
    rows = attention_rows(run)
    support = sum(float(w.gt(0).sum()) for w in rows) / sum(w.numel() // w.shape[-1] for w in rows)
    return {**sharpness(rows), "support": support}


def attention_rows(run: Run) -> list[torch.Tensor]:
    """The weights of every call of every attnkit attention inside the trained model (each head
    of a ``MultiHeadAttention``, each decoder step of an RNN's ``Attention``), teacher-forced on each
    validation word alone (no padding rows) with its first pronunciation: tensors (..., Tk)."""
    from ..modules.capture import capture

    task, rows = run.task, []
    run.model.eval()
    with torch.no_grad(), capture(run.model) as rec:
        for e in task.valid:
            src = task.letters.pad([task.letters.encode(e.word)])  # (1, S)
            tgt_in = task.phonemes.pad([task.phonemes.encode(e.pronunciations[0])], bos=True)  # (1, T + 1)
            run.model(src, tgt_in)
            rows += [w for name in rec.names() for w in rec.calls(name)]  # (1, [H,] Tq, Tk) or (1, Tk)
            rec.clear()
    return rows
