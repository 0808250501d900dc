"""An ensemble of encoder-decoders that decodes as one model.

Shape legend: B batch, S source positions, T target positions, V target vocabulary.

:class:`Ensemble` offers the decoders' protocol (``encode``, ``start``, ``step``, ``decode``;
:mod:`attnkit.models.decoding`), so greedy and beam search run over it unchanged. At every step the
members' next-token distributions are averaged: ``combine="probability"`` takes the mean of the
probabilities, log(1/n Σ p_i), as fairseq's ensembles do; ``combine="log"`` the renormalised mean
of the log-probabilities (a product of experts), softmax(1/n Σ log p_i). The attention weights it
reports are the mean of the members' weights, so an alignment picture shows where the members
attend on average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import AttentionError
from .base import Decoded
from .decoding import reorder_state

__all__ = ["COMBINES", "Ensemble", "EnsembleMemory", "EnsembleState"]

COMBINES = ("probability", "log")


@dataclass
class EnsembleMemory:
    """The members' memories, in member order."""

    members: tuple

    @property
    def states(self) -> Tensor:
        """The first member's encoder states: the decoders read their dtype and device."""
        return self.members[0].states


class EnsembleState:
    """The members' decoder states; reordered member by member (a Transformer's cache in place)."""

    def __init__(self, members: tuple):
        self.members = members

    @property
    def holds_source(self) -> bool:
        """Whether a member's state holds keys projected from its memory (see :func:`greedy`)."""
        return any(getattr(s, "holds_source", False) for s in self.members)

    def reorder(self, index: Tensor) -> EnsembleState:
        return EnsembleState(tuple(reorder_state(s, index) for s in self.members))


class Ensemble(nn.Module):
    """``members``: encoder-decoders over the same source and target vocabularies.

    >>> import torch
    >>> from attnkit.models import RNNConfig, RNNSeq2Seq, greedy
    >>> members = [RNNSeq2Seq(RNNConfig(src_vocab=9, tgt_vocab=7, hidden_dim=8, embed_dim=4)) for _ in range(2)]
    >>> len(greedy(Ensemble(members), torch.tensor([[3, 4, 5]]), max_len=4)[0].tokens) <= 4
    True
    """

    def __init__(self, members, combine: str = "probability"):
        super().__init__()
        members = list(members)
        if not members:
            raise AttentionError("members is empty; an ensemble needs at least one model")
        if combine not in COMBINES:
            raise AttentionError(f"combine={combine!r} is unknown; expected one of {list(COMBINES)}")
        self.members = nn.ModuleList(members)
        self.combine = combine

    def encode(self, src: Tensor) -> EnsembleMemory:
        """``src`` (B, S) padded with 0 -> every member's memory."""
        return EnsembleMemory(tuple(m.encode(src) for m in self.members))

    def start(self, memory: EnsembleMemory) -> EnsembleState:
        return EnsembleState(tuple(m.start(mem) for m, mem in zip(self.members, memory.members)))

    def step(self, memory: EnsembleMemory, state: EnsembleState, token: Tensor, t: int, need_weights: bool = True):
        """One step of every member -> (log-probabilities (B, V) of the combined distribution, next
        state, the members' mean weights (B, S) or None, None)."""
        logits, states, weights = [], [], []
        for m, mem, s in zip(self.members, memory.members, state.members):
            lg, s, w, _ = m.step(mem, s, token, t, need_weights)
            logits.append(lg)
            states.append(s)
            weights.append(w)
        return self._combine(torch.stack(logits)), EnsembleState(tuple(states)), _mean(weights), None

    def decode(self, memory: EnsembleMemory, tgt_in: Tensor, need_weights: bool = True) -> Decoded:
        """Teacher forcing: ``tgt_in`` (B, T) -> the combined log-probabilities (B, T, V) and the
        members' mean weights (B, T, S)."""
        out = [m.decode(mem, tgt_in, need_weights) for m, mem in zip(self.members, memory.members)]
        return Decoded(self._combine(torch.stack([d.logits for d in out])), _mean([d.weights for d in out]))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Decoded:
        return self.decode(self.encode(src), tgt_in, need_weights=False)

    def _combine(self, logits: Tensor) -> Tensor:
        """The members' logits (N, ..., V) -> log-probabilities (..., V) of the combined distribution."""
        logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
        if self.combine == "log":
            return logp.mean(0).log_softmax(-1)
        return torch.logsumexp(logp, 0) - math.log(logp.shape[0])


def _mean(weights: list) -> Tensor | None:
    """The mean of the members' weights; None when any member gives none (no attention)."""
    if any(w is None for w in weights):
        return None
    return torch.stack([w.float() for w in weights]).mean(0)
