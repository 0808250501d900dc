"""Models for the tasks: a task and model name checked against each other, a model's config
from its fields, the model built, and its embedding table set to pretrained word vectors."""

from __future__ import annotations

import torch
from torch import nn

from ...data.vectors import word_vectors
from ...data.vocab import SPECIALS, UNK, Vocab
from ...errors import AttentionError
from ...models import CLASSIFIERS
from ...train import config_from_dict
from .data import TASKS

__all__ = ["build_model", "load_vectors"]


def _check_names(task: str, model: str) -> None:
    if task not in TASKS:
        raise AttentionError(f"task={task!r} is unknown; expected one of {list(TASKS)}")
    if model not in CLASSIFIERS:
        raise AttentionError(f"model={model!r} is unknown; expected one of {list(CLASSIFIERS)}")
    if CLASSIFIERS[model].inputs not in TASKS[task]:
        fits = [m for m, spec in CLASSIFIERS.items() if spec.inputs in TASKS[task]]
        raise AttentionError(f"model={model!r} does not read the {task} task's input; use one of {fits}")


def _config(model: str, fields: dict, vocab: int, classes: int, what: str | None = None):
    spec = CLASSIFIERS[model]
    fixed = sorted(set(fields) & set(spec.fixed))
    if fixed:
        raise AttentionError(f"{fixed[0]} is fixed by model={model!r}; drop it")
    return config_from_dict(
        spec.config, {**fields, **spec.fixed, "vocab": vocab, "classes": classes}, what or f"{model} config"
    )


def build_model(model: str, fields: dict, vocab: int, classes: int, *, what: str | None = None) -> nn.Module:
    """The classifier named ``model`` with config ``fields`` (vocab and class counts aside);
    ``what`` names the config in error messages (default ``"MODEL config"``)."""
    if model not in CLASSIFIERS:
        raise AttentionError(f"model={model!r} is unknown; expected one of {list(CLASSIFIERS)}")
    return CLASSIFIERS[model].model(_config(model, fields, vocab, classes, what))


def load_vectors(embed: nn.Embedding, words: Vocab, source: str, *, freeze: bool = False) -> None:
    """Set the rows of ``embed`` for the words of ``words`` to pretrained vectors
    (:func:`attnkit.data.vectors.word_vectors`); ``<unk>`` gets their mean (zero), the other
    specials keep their rows. ``freeze`` keeps the whole table fixed in training."""
    first = len(SPECIALS) + 1  # the words after <pad>, <s>, </s> and <unk>
    with torch.no_grad():
        embed.weight[first:] = word_vectors(words.symbols[first:], embed.embedding_dim, source)
        embed.weight[words.index[UNK]] = 0.0
    embed.weight.requires_grad_(not freeze)
