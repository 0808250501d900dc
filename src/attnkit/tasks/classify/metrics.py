"""Predictions and metrics: a model's class probabilities for encoded examples (:func:`predict`)
and the task's metrics on them (:func:`score`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import AttentionError
from .data import _length, collate

__all__ = ["predict", "score"]


@torch.no_grad()
def predict(model: nn.Module, kind: str, xs: list, batch_size: int = 256, progress=None) -> Tensor:
    """(N, C) class probabilities of encoded examples ``xs``, in their order; ``progress(done,
    total)`` is called before the first batch and after each one."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(xs)), key=lambda i: _length(xs[i], kind))
    probs = [None] * len(xs)
    if progress is not None:
        progress(0, len(xs))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out = model(*(x.to(device) for x in collate(kind, [xs[i] for i in idx])))
        for i, p in zip(idx, out.logits.softmax(-1)):
            probs[i] = p
        if progress is not None:
            progress(start + len(idx), len(xs))
    return torch.stack(probs).float().cpu() if probs else torch.zeros(0, 0)


def _average_precision(scores: list[float], relevant: list[bool]) -> float:
    ranked = [r for _, r in sorted(zip(scores, relevant), key=lambda x: -x[0])]
    hits, total = 0, 0.0
    for k, r in enumerate(ranked, 1):
        if r:
            hits += 1
            total += hits / k
    return total / hits


def score(probs: Tensor, labels: list[int], groups: list[str] | None = None) -> dict[str, float]:
    """Accuracy (%) of ``probs`` (N, C) against ``labels``; with ``groups`` (pairs: the synset of each
    definition), also F1 (%) of class 1 (match) and MAP (%) over groups with both classes.

    >>> score(torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]), [1, 0, 0], ["a", "a", "a"])
    {'accuracy': 66.66666666666667, 'f1': 66.66666666666667, 'map': 100.0}
    """
    if len(probs) != len(labels) or not labels:
        raise AttentionError(f"score needs one label per row of probs, got {len(probs)} rows and {len(labels)} labels")
    gold = torch.tensor(labels)
    guess = probs.argmax(-1)
    out = {"accuracy": 100.0 * int(guess.eq(gold).sum()) / len(labels)}
    if groups is None:
        return out
    tp = int((guess.eq(1) & gold.eq(1)).sum())
    predicted, actual = int(guess.eq(1).sum()), int(gold.eq(1).sum())
    out["f1"] = 200.0 * tp / (predicted + actual) if predicted + actual else 0.0
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    aps = [
        _average_precision([probs[i, 1].item() for i in idx], [labels[i] == 1 for i in idx])
        for idx in by_group.values()
        if len({labels[i] for i in idx}) == 2
    ]
    out["map"] = 100.0 * sum(aps) / len(aps) if aps else 0.0
    return out
