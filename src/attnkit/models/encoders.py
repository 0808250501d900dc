"""What the text classifiers share: a packed RNN encoder, sequence pooling, and their output.

Shape legend: B batch, T positions (words), E embedding dim, H hidden dim per direction,
M = H x directions, D feature dim, C classes.

Pooling turns states (B, T, D) into one vector (B, D) (:data:`POOLINGS`):

- ``last``: the state at the last real position; for a bidirectional RNN, the forward half there
  and the backward half at position 0 (each direction's final state);
- ``mean``: the mean over real positions; ``max``: the element-wise max over real positions;
- ``attention``: Σ_t a_t h_t, a = softmax(score(q, h_t)) with a learned query q (attention
  pooling, :class:`attnkit.AttentionPooling`); with ``heads`` H > 1, one learned query attends
  through :class:`attnkit.MultiHeadAttention` (H projected heads) and the weights a model reports
  are the heads' mean.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..core.scores import SCORES
from ..errors import AttentionError, check_int, check_probability, shape_str
from ..modules import AttentionPooling, MaskedEncoder, MultiHeadAttention
from .rnn import CELLS, over_sequence

__all__ = [
    "POOLINGS",
    "Classified",
    "Pooling",
    "RNNEncoder",
    "check_cell",
    "check_fields",
    "check_pooling",
    "real_positions",
]

POOLINGS = ("last", "mean", "max", "attention")


class Classified(NamedTuple):
    """A classifier's output: ``logits`` (B, C) and, for pictures, the attention it used (None
    where the model has none of that kind).

    - ``words``: (B, T) attention-pooling weights of a text model (0 on padding), or (B, S, T)
      word weights of the hierarchical model;
    - ``sentences``: (B, S) sentence weights of the hierarchical model (0 on padding sentences);
    - ``matrix``: (B, T0, T1) ABCNN-1/3's attention between the two sentences' words;
    - ``conv_matrix``: (B, T0 + w - 1, T1 + w - 1) ABCNN-2/3's attention between the two
      sentences' convolution windows.
    """

    logits: Tensor
    words: Tensor | None = None
    sentences: Tensor | None = None
    matrix: Tensor | None = None
    conv_matrix: Tensor | None = None


def check_fields(config, positive: tuple[str, ...]) -> None:
    """The config checks every model shares: ``positive`` fields >= 1, ``dropout`` in [0, 1)."""
    for name in positive:
        check_int(name, getattr(config, name))
    check_probability("dropout", config.dropout)


def check_cell(cell: str) -> None:
    if cell not in CELLS:
        raise AttentionError(f"cell={cell!r} is unknown; expected one of {sorted(CELLS)}")


def check_pooling(pooling: str, score: str, heads: int, dim: int, allowed=POOLINGS) -> None:
    """Reject a pooling configuration when the config is built: names, heads dividing ``dim``."""
    if pooling not in allowed:
        raise AttentionError(f"pooling={pooling!r} is unknown; expected one of {list(allowed)}")
    if score not in SCORES:
        raise AttentionError(f"pool_score={score!r} is unknown; expected one of {sorted(SCORES)}")
    if heads < 1 or dim % heads:
        raise AttentionError(f"pool_heads={heads} must be >= 1 and divide the pooled states' dim {dim}")


def real_positions(ids: Tensor, pad: int = 0) -> Tensor:
    """(B, T) True at real (non-padding) positions; every row must have one."""
    mask = ids.ne(pad)
    empty = (~mask.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise AttentionError(
            f"ids of shape {shape_str(ids.shape)} has rows {empty[:5]} with no word; give every row one"
        )
    return mask


class RNNEncoder(MaskedEncoder):
    """A (bidirectional) LSTM or GRU over the real positions only: the input is packed, so padding
    is never read and its states are 0.

    ``forward(x (N, T, E), mask (N, T) True = real, right-padded) -> (N, T, M)``; a row with no
    real position gives zeros.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        *,
        cell: str = "lstm",
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_cell(cell)
        self.directions = 2 if bidirectional else 1
        self.output_dim = hidden_dim * self.directions
        self.rnn = CELLS[cell](
            input_dim,
            hidden_dim,
            layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(-1)  # (N,)
        if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device) < lengths[:, None]):
            raise AttentionError(
                f"mask of shape {shape_str(mask.shape)} must mark a prefix of each row (right padding)"
            )
        if x.shape[0] == 0 or x.shape[1] == 0:  # no sequence, or no position: nothing to read
            return x.new_zeros(*x.shape[:2], self.rnn.hidden_size * (2 if self.rnn.bidirectional else 1))
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = over_sequence(self.rnn, packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (N, T, M)
        return states * mask.unsqueeze(-1)  # an empty row read one padding step: zero it too


class Pooling(nn.Module):
    """States (B, T, D) -> one vector (B, D) by ``pooling`` (see the module docstring).

    ``directions``: 2 when the states are a bidirectional RNN's [forward; backward] halves (what
    ``last`` reads). ``forward(states, mask (B, T) True = real)`` returns ``(vector (B, D),
    weights (B, T) | None)``: weights for ``attention`` only, exactly 0 at padded positions.
    """

    def __init__(
        self, dim: int, pooling: str = "attention", *, score: str = "additive", heads: int = 1, directions: int = 1
    ):
        super().__init__()
        check_pooling(pooling, score, heads, dim)
        self.pooling, self.directions = pooling, directions
        self.attend: nn.Module | None = None
        if pooling == "attention" and heads == 1:
            self.attend = AttentionPooling(dim, score=score)
        elif pooling == "attention":
            self.query = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)  # (1, 1, D), one learned query
            self.attend = MultiHeadAttention(dim, heads, score=score)

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}"

    def forward(self, states: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        b, _, d = states.shape
        if self.pooling == "attention":
            if isinstance(self.attend, AttentionPooling):
                return tuple(self.attend(states, mask=mask, need_weights=True)[:2])  # (B, D), (B, T)
            query = self.query.expand(b, -1, -1)  # (B, 1, D)
            out, weights = self.attend(query, states, states, key_padding_mask=~mask, need_weights=True)
            return out.squeeze(1), weights.squeeze(1)  # (B, D), (B, T) mean over heads
        real = mask.unsqueeze(-1)  # (B, T, 1)
        if self.pooling == "mean":
            return (states * real).sum(1) / real.sum(1).clamp(min=1), None
        if self.pooling == "max":
            return states.masked_fill(~real, float("-inf")).amax(1), None
        last = mask.sum(-1).clamp(min=1) - 1  # (B,) last real position
        forward = states[torch.arange(b, device=states.device), last]  # (B, D)
        if self.directions == 1:
            return forward, None
        half = d // 2
        return torch.cat([forward[:, :half], states[:, 0, half:]], -1), None  # [fwd at end; bwd at start]
