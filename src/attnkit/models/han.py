"""Hierarchical attention network (Yang et al. 2016) for document classification.

Shape legend: B batch, S sentences per document, T words per sentence, E embedding dim, H hidden
dim per direction, C classes.

Words -> a biGRU over each sentence's words -> word attention -> sentence vectors (B, S, 2H) ->
a biGRU over the sentences -> sentence attention -> the document vector (B, 2H) -> linear. Both
attention levels are :class:`attnkit.HierarchicalAttention`'s (learned context vectors with the
additive score); both GRUs are packed, so padding words and padding sentences are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import AttentionError, shape_str
from ..modules import HierarchicalAttention
from . import limits
from .encoders import Classified, RNNEncoder, check_cell, check_fields, check_pooling

__all__ = ["HAN", "HANConfig"]


@dataclass
class HANConfig:
    vocab: int  # input words, specials and <unk> included
    classes: int  # C
    embed_dim: int = 128  # E
    hidden_dim: int = 64  # H per direction of the word and the sentence GRU (vectors are 2H)
    cell: str = "gru"  # "gru" (HAN's) or "lstm"
    pool_score: str = "additive"  # both attention levels' score: additive is u_wᵀ tanh(W h + b)
    dropout: float = 0.3  # on embeddings and on the document vector

    def __post_init__(self):
        check_fields(self, ("vocab", "classes", "embed_dim", "hidden_dim"))
        limits.check_fields(self, symbols=("vocab", "classes"), widths=("embed_dim", "hidden_dim"))
        check_cell(self.cell)
        check_pooling("attention", self.pool_score, 1, 2 * self.hidden_dim)
        limits.check_size(self, ("vocab", "classes", "embed_dim", "hidden_dim"))

    def size(self) -> int:
        """At least the parameters of :class:`HAN` (at most twice them), for
        :func:`~attnkit.models.limits.check_size`."""
        h, h2 = self.hidden_dim, 2 * self.hidden_dim
        return (
            self.vocab * self.embed_dim
            + limits.rnn_size(self.cell, self.embed_dim, h, 1, 2)  # words
            + limits.rnn_size(self.cell, h2, h, 1, 2)  # sentences
            + 2 * (limits.score_size(h2, h2) + h2)  # attention pooling at both levels, with their queries
            + limits.linear_size(h2, self.classes)
        )


class HAN(nn.Module):
    """Hierarchical attention network over word ids (B, S, T), padded with 0 at both levels.

    >>> import torch
    >>> model = HAN(HANConfig(vocab=20, classes=3, embed_dim=8, hidden_dim=4)).eval()
    >>> out = model(torch.tensor([[[4, 5, 6], [7, 0, 0]], [[8, 9, 0], [0, 0, 0]]]))
    >>> out.logits.shape, out.words.shape, out.sentences[1].tolist()
    (torch.Size([2, 3]), torch.Size([2, 2, 3]), [1.0, 0.0])
    """

    def __init__(self, config: HANConfig):
        super().__init__()
        self.config = cfg = config
        h = 2 * cfg.hidden_dim
        self.embed = nn.Embedding(cfg.vocab, cfg.embed_dim, padding_idx=0)
        self.han = HierarchicalAttention(
            h,
            h,
            word_encoder=RNNEncoder(cfg.embed_dim, cfg.hidden_dim, cell=cfg.cell),
            sentence_encoder=RNNEncoder(h, cfg.hidden_dim, cell=cfg.cell),
            score=cfg.pool_score,
        )
        self.out = nn.Linear(h, cfg.classes)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: Tensor) -> Classified:
        """``ids`` (B, S, T) -> logits (B, C), word weights (B, S, T), sentence weights (B, S)."""
        if ids.dim() != 3:
            raise AttentionError(f"ids has shape {shape_str(ids.shape)} but expected (B, S, T) word ids")
        mask = ids.ne(0)  # (B, S, T) True = real word
        empty = (~mask.flatten(1).any(-1)).nonzero().flatten().tolist()
        if empty:
            raise AttentionError(f"ids of shape {shape_str(ids.shape)} has documents {empty[:5]} with no word")
        result = self.han(self.drop(self.embed(ids)), mask)
        return Classified(
            self.out(self.drop(result.document)), words=result.word_weights, sentences=result.sentence_weights
        )
