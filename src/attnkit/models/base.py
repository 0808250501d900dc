"""What every encoder-decoder in attnkit offers the decoders and the trainer.

Shape legend: B batch, S source positions, T target positions, V target vocabulary, M memory dim.

A model ``encode``s a padded source once into a :class:`Memory`, then either ``decode``s a whole
target prefix at once (teacher forcing, for training) or takes one ``step`` at a time from a state
(for greedy and beam search). Both give the cross-attention weights of every target position over
the source: the alignment.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import NamedTuple

from torch import Tensor

__all__ = ["Decoded", "Memory", "select"]


@dataclass
class Memory:
    """The encoder's output. ``states`` (B, S, M); ``padding`` (B, S), True at padded positions;
    ``context`` (B, M), the whole source as one vector (the fixed context of attention-free models);
    ``keys`` (B, S, K), the attention score's key side of ``states`` (e.g. W h_j), projected once
    per source rather than at every decoder step, or None."""

    states: Tensor
    padding: Tensor
    context: Tensor | None = None
    keys: Tensor | None = None


def select(obj, index: Tensor):
    """``obj`` with every batch-first tensor field (of a dataclass, tuple or tensor) taken at ``index``
    along dim 0: how beam search expands and reorders memories and states."""
    if obj is None:
        return None
    if isinstance(obj, Tensor):
        return obj.index_select(0, index)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(select(x, index) for x in obj)
    if hasattr(obj, "_fields"):
        return type(obj)(*(select(x, index) for x in obj))
    return replace(obj, **{f.name: select(getattr(obj, f.name), index) for f in fields(obj)})


class Decoded(NamedTuple):
    """Teacher-forced decoder output: ``logits`` (B, T, V), ``weights`` (B, T, S) or None (no
    attention), ``log_prob`` (B, T) of sampled hard attention, else None."""

    logits: Tensor
    weights: Tensor | None = None
    log_prob: Tensor | None = None


def source_padding(src: Tensor, pad: int = 0) -> Tensor:
    """(B, S) True where ``src`` holds padding."""
    return src.eq(pad)
