"""Attention pooling (a learned query over a sequence) and hierarchical attention.

Shape legend: B batch, S sentences per document, T words per sentence (or positions of a
sequence), Q learned queries, D feature dim.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..core import masks
from ..core.functional import AttentionResult
from ..errors import AttentionError, check_int, shape_str
from .attention import Attention

__all__ = ["AttentionPooling", "HierarchicalAttention", "HierarchicalResult", "MaskedEncoder"]


class AttentionPooling(nn.Module):
    """A sequence -> one vector (or Q vectors), weighted by attention of learned queries.

    With the default ``additive`` score this is exactly the attention layer of hierarchical
    attention networks (Yang et al., 2016): a_t = softmax(u_wᵀ tanh(W h_t + b)), where the learned
    query's projection W_q q plays the bias b and ``v`` the context vector u_w. It is the
    "LSTM + attention" sentence vector: Σ_t a_t h_t instead of the last state or the mean.

    Args:
        input_dim: D. num_queries: Q learned queries (Q > 1: a (B, Q, D) matrix of views, as in
            structured self-attention). score, normalize, hidden_dim: as for :class:`Attention`.

    ``forward(x (B, T, D), *, mask (True = real position), key_padding_mask (True = padding),
    need_weights)`` returns ``(pooled (B, D) or (B, Q, D), weights (B, T) or (B, Q, T) | None)``.

    >>> pool = AttentionPooling(8)
    >>> out, w = pool(torch.randn(2, 5, 8), key_padding_mask=masks.padding([5, 3]).valid.logical_not(), need_weights=True)
    >>> out.shape, w[1, 3:].tolist()
    (torch.Size([2, 8]), [0.0, 0.0])
    """

    def __init__(
        self,
        input_dim: int,
        *,
        num_queries: int = 1,
        score: str = "additive",
        normalize: str | object = "softmax",
        hidden_dim: int | None = None,
    ):
        super().__init__()
        check_int("input_dim", input_dim)
        check_int("num_queries", num_queries)
        self.num_queries = num_queries
        self.query = nn.Parameter(torch.randn(num_queries, input_dim) * input_dim**-0.5)  # (Q, D)
        self.attend = Attention(input_dim, input_dim, score=score, normalize=normalize, hidden_dim=hidden_dim)

    def forward(
        self,
        x: Tensor,
        *,
        mask: masks.Mask | Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> AttentionResult:
        if x.dim() != 3 or x.shape[-1] != self.query.shape[-1]:
            raise AttentionError(f"x has shape {shape_str(x.shape)} but expected (B, T, {self.query.shape[-1]})")
        if isinstance(mask, Tensor) and mask.dtype == torch.bool and mask.dim() == 2:
            mask = masks.KeyPadding(mask)  # (B, T) True = real position
        query = self.query.expand(x.shape[0], -1, -1)  # (B, Q, D)
        result = self.attend(query, x, x, mask=mask, key_padding_mask=key_padding_mask, need_weights=need_weights)
        if self.num_queries > 1:
            return result
        squeeze = [None if t is None else t.squeeze(1) for t in (*result, result.log_prob)]
        return AttentionResult(*squeeze)  # (B, D), (B, T) | None, (B,) | None


class MaskedEncoder(nn.Module):
    """Base class of encoders that must know which positions are real, e.g. an RNN that packs its
    input so that it never reads padding: ``forward(x (N, T, D_in), mask (N, T) True = real)
    -> (N, T, D_out)``. :class:`HierarchicalAttention` passes the mask to encoders of this type and
    calls any other module as ``module(x)``."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError


def _encode(encoder: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    return encoder(x, mask) if isinstance(encoder, MaskedEncoder) else encoder(x)


class HierarchicalResult(NamedTuple):
    document: Tensor  # (B, Ds), the document vector
    sentences: Tensor  # (B, S, Dw), the sentence vectors
    word_weights: Tensor  # (B, S, T), each real sentence's weights sum to 1
    sentence_weights: Tensor  # (B, S), sum to 1 over real sentences; 0 on padding sentences


class HierarchicalAttention(nn.Module):
    """Words -> sentence vectors -> document vector: attention pooling at two levels (HAN).

    ``word_encoder`` maps (B·S, T, D_in) -> (B·S, T, word_dim) (e.g. a bidirectional GRU wrapper;
    identity when None) and ``sentence_encoder`` maps (B, S, word_dim) -> (B, S, sentence_dim); a
    :class:`MaskedEncoder` also gets the (B·S, T) word mask, resp. the (B, S) sentence mask.
    ``word_dim`` and ``sentence_dim`` are the dims the two attention levels see.

    ``forward(words (B, S, T, D_in), mask (B, S, T) True = real word)`` returns a
    :class:`HierarchicalResult`. A sentence with no real word is padding: it gets zero word weights,
    a zero vector and zero sentence weight.
    """

    def __init__(
        self,
        word_dim: int,
        sentence_dim: int | None = None,
        *,
        word_encoder: nn.Module | None = None,
        sentence_encoder: nn.Module | None = None,
        score: str = "additive",
        normalize: str | object = "softmax",
        hidden_dim: int | None = None,
    ):
        super().__init__()
        check_int("word_dim", word_dim)
        sentence_dim = word_dim if sentence_dim is None else check_int("sentence_dim", sentence_dim)
        if sentence_encoder is None and sentence_dim != word_dim:
            raise AttentionError(
                f"sentence_dim={sentence_dim} differs from word_dim={word_dim} but there is no sentence_encoder to map it"
            )
        self.word_encoder = word_encoder or nn.Identity()
        self.sentence_encoder = sentence_encoder or nn.Identity()
        self.word_pool = AttentionPooling(word_dim, score=score, normalize=normalize, hidden_dim=hidden_dim)
        self.sentence_pool = AttentionPooling(sentence_dim, score=score, normalize=normalize, hidden_dim=hidden_dim)

    def forward(self, words: Tensor, mask: Tensor | None = None) -> HierarchicalResult:
        if words.dim() != 4:
            raise AttentionError(f"words has shape {shape_str(words.shape)} but expected (B, S, T, D)")
        b, s, t, d = words.shape
        if mask is None:
            mask = torch.ones(b, s, t, dtype=torch.bool, device=words.device)
        if mask.shape != (b, s, t) or mask.dtype != torch.bool:
            raise AttentionError(
                f"mask has shape {shape_str(mask.shape)} and dtype {mask.dtype} but expected ({b}, {s}, {t}) "
                f"torch.bool, True = real word"
            )
        flat_mask = mask.reshape(b * s, t)
        encoded = _encode(self.word_encoder, words.reshape(b * s, t, d), flat_mask)  # (B·S, T, Dw)
        sentences, word_weights = self.word_pool(encoded, mask=flat_mask, need_weights=True)  # (B·S, Dw), (B·S, T)
        sentences = sentences.reshape(b, s, sentences.shape[-1])  # (B, S, Dw)
        real = mask.any(-1)  # (B, S): a sentence with a real word
        document, sentence_weights = self.sentence_pool(
            _encode(self.sentence_encoder, sentences, real), mask=real, need_weights=True
        )  # (B, Ds), (B, S)
        return HierarchicalResult(document, sentences, word_weights.reshape(b, s, t), sentence_weights)
