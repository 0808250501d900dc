"""Text classifiers with attention, and the one registry of every classifier by name.

Shape legend: B batch, T words, E embedding dim, H hidden dim per direction, M = H x directions,
K convolution channels, D model dim, C classes.

- ``rnn`` (:class:`RNNClassifier`): embeddings -> (bi)LSTM/GRU states h_1..h_T -> pooling (last
  state, mean, max, or attention: Σ_t a_t h_t with learned queries) -> linear -> logits.
- ``cnn`` (:class:`CNNClassifier`): embeddings -> convolution (K channels, window w, ReLU) ->
  a feature map f_1..f_T -> either max pooling over positions, or attention pooling whose query
  is a sentence vector from a biLSTM over the same embeddings (its final states):
  a_t = softmax(score(q, f_t)), v = Σ_t a_t f_t (attention replaces max pooling).
- ``transformer`` (:class:`TransformerClassifier`): pure attention: scaled embeddings + sinusoidal
  positions -> pre-LN encoder layers of multi-head self-attention -> pooling (attention by
  default) -> linear.
- ``han`` (:mod:`.han`), ``bcnn``/``abcnn1``/``abcnn2``/``abcnn3`` (:mod:`.abcnn`).

Every model returns a :class:`Classified`. Inputs are word ids padded with 0 (PAD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..core.scores import SCORES
from ..errors import AttentionError, shape_str
from ..modules import Attention
from . import limits
from .abcnn import ABCNN, ABCNNConfig
from .encoders import Classified, Pooling, RNNEncoder, check_cell, check_fields, check_pooling, real_positions
from .han import HAN, HANConfig
from .transformer import EncoderLayer, sinusoids

__all__ = [
    "CLASSIFIERS",
    "CNNClassifier",
    "CNNClassifierConfig",
    "RNNClassifier",
    "RNNClassifierConfig",
    "Spec",
    "TransformerClassifier",
    "TransformerClassifierConfig",
]


@dataclass
class RNNClassifierConfig:
    vocab: int  # input words, specials and <unk> included
    classes: int  # C
    embed_dim: int = 128  # E
    hidden_dim: int = 128  # H per direction
    cell: str = "lstm"  # "lstm" or "gru"
    layers: int = 1  # stacked RNN layers
    bidirectional: bool = True  # read both ways: M = 2H
    pooling: str = "attention"  # last | mean | max | attention: how the states become one vector
    pool_score: str = "additive"  # attention pooling's score: additive (HAN's) or scaled_dot (or any in SCORES)
    pool_heads: int = 1  # 1: learned query over the states; > 1: one learned query through H heads
    dropout: float = 0.3  # on embeddings and on the pooled vector

    def __post_init__(self):
        check_fields(self, ("vocab", "classes", "embed_dim", "hidden_dim", "layers"))
        limits.check_fields(
            self, symbols=("vocab", "classes"), widths=("embed_dim", "hidden_dim", "pool_heads"), layers=("layers",)
        )
        check_cell(self.cell)
        check_pooling(
            self.pooling, self.pool_score, self.pool_heads, self.hidden_dim * (2 if self.bidirectional else 1)
        )
        limits.check_size(self, ("vocab", "classes", "embed_dim", "hidden_dim", "layers"))

    def size(self) -> int:
        """At least the parameters of :class:`RNNClassifier` (at most twice them), for
        :func:`~attnkit.models.limits.check_size`."""
        directions = 2 if self.bidirectional else 1
        m = self.hidden_dim * directions
        return (
            self.vocab * self.embed_dim
            + limits.rnn_size(self.cell, self.embed_dim, self.hidden_dim, self.layers, directions)
            + max(limits.attention_size(m), limits.score_size(m, m)) + m  # attention pooling, its query
            + limits.linear_size(m, self.classes)
        )


class RNNClassifier(nn.Module):
    """Sentence encoder + pooling: (bi)RNN states, pooled by ``config.pooling``.

    >>> model = RNNClassifier(RNNClassifierConfig(vocab=20, classes=3, embed_dim=8, hidden_dim=8)).eval()
    >>> out = model(torch.tensor([[4, 5, 6], [7, 8, 0]]))
    >>> out.logits.shape, out.words[1].tolist()[2], bool(out.words.sum(-1).allclose(torch.ones(2)))
    (torch.Size([2, 3]), 0.0, True)
    """

    def __init__(self, config: RNNClassifierConfig):
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab, cfg.embed_dim, padding_idx=0)
        self.encoder = RNNEncoder(
            cfg.embed_dim,
            cfg.hidden_dim,
            cell=cfg.cell,
            layers=cfg.layers,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout,
        )
        m = self.encoder.output_dim
        self.pool = Pooling(
            m, cfg.pooling, score=cfg.pool_score, heads=cfg.pool_heads, directions=self.encoder.directions
        )
        self.out = nn.Linear(m, cfg.classes)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: Tensor) -> Classified:
        """``ids`` (B, T) -> logits (B, C) and pooling weights (B, T) (attention pooling only)."""
        mask = real_positions(ids)
        states = self.encoder(self.drop(self.embed(ids)), mask)  # (B, T, M)
        vector, weights = self.pool(states, mask)  # (B, M), (B, T) | None
        return Classified(self.out(self.drop(vector)), words=weights)


@dataclass
class CNNClassifierConfig:
    vocab: int  # input words, specials and <unk> included
    classes: int  # C
    embed_dim: int = 128  # E
    channels: int = 128  # K feature maps of the convolution
    width: int = 3  # w words per convolution window; odd, so the map keeps one feature per word
    pooling: str = "attention"  # attention (an LSTM sentence vector as the query) or max
    hidden_dim: int = 64  # H per direction of the biLSTM whose final states are the query
    pool_score: str = "additive"  # the query (2H) against the feature map (K): additive, general or concat
    dropout: float = 0.3  # on embeddings and on the pooled vector

    def __post_init__(self):
        check_fields(self, ("vocab", "classes", "embed_dim", "channels", "width", "hidden_dim"))
        limits.check_fields(
            self, symbols=("vocab", "classes"), widths=("embed_dim", "channels", "hidden_dim"), lengths=("width",)
        )
        if self.width % 2 == 0:
            raise AttentionError(f"width must be odd (the window centres on a word), got {self.width}")
        check_pooling(self.pooling, self.pool_score, 1, self.channels, allowed=("attention", "max"))
        if SCORES[self.pool_score].same_dim and 2 * self.hidden_dim != self.channels:
            raise AttentionError(
                f"pool_score={self.pool_score!r} needs the query's 2 * hidden_dim = {2 * self.hidden_dim} to equal "
                f"channels={self.channels}; use pool_score='additive' or 'general', or change one of them"
            )
        limits.check_size(self, ("vocab", "classes", "embed_dim", "channels", "width", "hidden_dim"))

    def size(self) -> int:
        """At least the parameters of :class:`CNNClassifier` (at most twice them), for
        :func:`~attnkit.models.limits.check_size`."""
        h2 = 2 * self.hidden_dim
        return (
            self.vocab * self.embed_dim
            + (self.embed_dim * self.width + 1) * self.channels  # the convolution
            + limits.rnn_size("lstm", self.embed_dim, self.hidden_dim, 1, 2)  # the query's biLSTM
            + limits.score_size(h2, self.channels)
            + limits.linear_size(self.channels, self.classes)
        )


class CNNClassifier(nn.Module):
    """CNN text encoder with attention pooling (or max pooling, for comparison).

    >>> model = CNNClassifier(CNNClassifierConfig(vocab=20, classes=3, embed_dim=8, channels=8, hidden_dim=4)).eval()
    >>> out = model(torch.tensor([[4, 5, 6], [7, 8, 0]]))
    >>> out.logits.shape, out.words.shape, out.words[1, 2].item()
    (torch.Size([2, 3]), torch.Size([2, 3]), 0.0)
    """

    def __init__(self, config: CNNClassifierConfig):
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab, cfg.embed_dim, padding_idx=0)
        self.conv = nn.Conv1d(cfg.embed_dim, cfg.channels, cfg.width, padding=cfg.width // 2)
        self.query = self.attend = None
        if cfg.pooling == "attention":
            self.query = RNNEncoder(cfg.embed_dim, cfg.hidden_dim, cell="lstm", bidirectional=True)
            self.attend = Attention(2 * cfg.hidden_dim, cfg.channels, score=cfg.pool_score)
            self.last = Pooling(2 * cfg.hidden_dim, "last", directions=2)
        self.out = nn.Linear(cfg.channels, cfg.classes)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: Tensor) -> Classified:
        """``ids`` (B, T) -> logits (B, C) and attention weights over the feature map (B, T)."""
        mask = real_positions(ids)
        x = self.drop(self.embed(ids))  # (B, T, E), 0 at padding (padding_idx)
        features = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)  # (B, T, K)
        if self.attend is None:
            vector = features.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)  # (B, K)
            return Classified(self.out(self.drop(vector)))
        query, _ = self.last(self.query(x, mask), mask)  # (B, 2H): the sentence vector
        vector, weights = self.attend(
            query, features, features, key_padding_mask=~mask, need_weights=True
        )  # (B, K), (B, T)
        return Classified(self.out(self.drop(vector)), words=weights)


@dataclass
class TransformerClassifierConfig:
    vocab: int  # input words, specials and <unk> included
    classes: int  # C
    d_model: int = 128  # D
    heads: int = 4  # H of every self-attention layer, dividing D
    ff_dim: int = 256  # inner dim of the position-wise feed-forward block
    layers: int = 2  # encoder layers
    dropout: float = 0.1  # on embeddings, sublayer outputs, attention weights and the pooled vector
    max_len: int = 256  # longest input the positional table covers
    pooling: str = "attention"  # last | mean | max | attention
    pool_score: str = "scaled_dot"  # attention pooling's score
    pool_heads: int = 1  # 1: learned query over the states; > 1: one learned query through H heads

    def __post_init__(self):
        check_fields(self, ("vocab", "classes", "d_model", "heads", "ff_dim", "layers", "max_len"))
        limits.check_fields(
            self,
            symbols=("vocab", "classes"),
            widths=("d_model", "heads", "ff_dim", "pool_heads"),
            layers=("layers",),
            lengths=("max_len",),
        )
        if self.d_model % self.heads:
            raise AttentionError(f"heads={self.heads} must divide d_model={self.d_model}")
        check_pooling(self.pooling, self.pool_score, self.pool_heads, self.d_model)
        limits.check_size(self, ("vocab", "classes", "d_model", "ff_dim", "layers", "max_len"))

    def size(self) -> int:
        """At least the parameters and buffer elements of :class:`TransformerClassifier` (at most
        twice them), for :func:`~attnkit.models.limits.check_size`."""
        d = self.d_model
        feed_forward = limits.linear_size(d, self.ff_dim) + limits.linear_size(self.ff_dim, d)
        layer = limits.attention_size(d) + feed_forward + 4 * d  # and two layer norms
        return (
            (self.vocab + self.max_len) * d  # embeddings, the positions' table
            + self.layers * layer
            + 2 * d  # the final layer norm
            + max(limits.attention_size(d), limits.score_size(d, d)) + d  # attention pooling, its query
            + limits.linear_size(d, self.classes)
        )


class TransformerClassifier(nn.Module):
    """A pure-attention classifier: Transformer encoder layers, then pooling.

    >>> model = TransformerClassifier(TransformerClassifierConfig(vocab=20, classes=3, d_model=8, heads=2, ff_dim=16)).eval()
    >>> out = model(torch.tensor([[4, 5, 6], [7, 8, 0]]))
    >>> out.logits.shape, out.words[1, 2].item()
    (torch.Size([2, 3]), 0.0)
    """

    def __init__(self, config: TransformerClassifierConfig):
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model, padding_idx=0)
        self.register_buffer("positions", sinusoids(cfg.max_len, cfg.d_model), persistent=False)
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.pool = Pooling(cfg.d_model, cfg.pooling, score=cfg.pool_score, heads=cfg.pool_heads)
        self.out = nn.Linear(cfg.d_model, cfg.classes)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: Tensor) -> Classified:
        """``ids`` (B, T) -> logits (B, C) and pooling weights (B, T) (attention pooling only)."""
        if ids.shape[1] > self.config.max_len:
            raise AttentionError(
                f"ids has shape {shape_str(ids.shape)} but the model's positions end at max_len={self.config.max_len}"
            )
        mask = real_positions(ids)
        x = self.drop(self.embed(ids) * math.sqrt(self.config.d_model) + self.positions[: ids.shape[1]])  # (B, T, D)
        for layer in self.layers:
            x = layer(x, ~mask)
        vector, weights = self.pool(self.norm(x), mask)  # (B, D), (B, T) | None
        return Classified(self.out(self.drop(vector)), words=weights)


@dataclass(frozen=True)
class Spec:
    """A classifier in the registry: its config dataclass, its module (built as ``model(config)``),
    the input it reads ("text" (B, T), "document" (B, S, T) or "pair" ((B, T0), (B, T1))) and the
    config fields its name fixes."""

    config: type
    model: type
    inputs: str
    fixed: dict = field(default_factory=dict)


CLASSIFIERS: dict[str, Spec] = {
    "rnn": Spec(RNNClassifierConfig, RNNClassifier, "text"),
    "cnn": Spec(CNNClassifierConfig, CNNClassifier, "text"),
    "transformer": Spec(TransformerClassifierConfig, TransformerClassifier, "text"),
    "han": Spec(HANConfig, HAN, "document"),
    "bcnn": Spec(ABCNNConfig, ABCNN, "pair", {"attention": "none"}),
    "abcnn1": Spec(ABCNNConfig, ABCNN, "pair", {"attention": "before"}),
    "abcnn2": Spec(ABCNNConfig, ABCNN, "pair", {"attention": "after"}),
    "abcnn3": Spec(ABCNNConfig, ABCNN, "pair", {"attention": "both"}),
}
