"""Transformer encoder-decoder (Vaswani et al. 2017) from attnkit's ``MultiHeadAttention``.

Shape legend: B batch, S source positions, T target positions, D model dim, V target vocabulary.

Encoder layer: x += SelfAttention(LN(x)); x += FF(LN(x)). Decoder layer: y += CausalSelfAttention(LN(y));
y += CrossAttention(LN(y), memory); y += FF(LN(y)). Layer norm comes first in each block (pre-LN,
which trains without a long warm-up). The alignment a model reports is the last decoder layer's
cross-attention, averaged over heads.

Token order (``TransformerConfig.position``, :data:`POSITIONS`): ``sinusoidal`` (Vaswani et al.
2017, the default) or ``learned`` (a trained (max_len, D) table) positions are added to the scaled
embeddings, so a source or target is at most ``max_len`` long; ``rope`` (rotary, Su et al. 2021),
``alibi`` (linear distance biases, Press et al. 2022) and ``t5`` (bucketed relative biases, Raffel
et al. 2020) add nothing to the embeddings and act inside every encoder and decoder
*self*-attention (cross-attention compares a target position with source positions: it gets none),
so the model reads any length (:attr:`TransformerSeq2Seq.max_positions` is None). The encoder's
ALiBi is the directional form (``ALiBi(directional=True)``: each head's left and right slopes
differ): with the symmetric form, as cross-attention reads no positions, a model would read a
spelling and its reverse alike (the decoder could not tell which end comes first).

Step-by-step decoding keeps a :class:`DecoderCache`: per decoder layer, the self-attention's keys and
values of the prefix (one position appended per step) and the cross-attention's keys and values of
the source (projected at the first step). A step runs one position through the decoder (its
attention reads the t cached keys) instead of all t positions of the prefix again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..core.scores import resolve
from ..errors import AttentionError, check_int, check_probability
from ..modules import KVCache, MultiHeadAttention
from . import limits
from .base import Decoded, Memory, source_padding

__all__ = ["ABSOLUTE", "POSITIONS", "DecoderCache", "TransformerConfig", "TransformerSeq2Seq"]

ABSOLUTE = ("sinusoidal", "learned")  # added to the embeddings, from a table of max_len positions
RELATIVE = ("rope", "alibi", "t5")  # inside each self-attention (MultiHeadAttention's ``position``), no table
POSITIONS = ABSOLUTE + RELATIVE  # the values of TransformerConfig.position
T5_BUCKETS = 32  # MultiHeadAttention's default t5_buckets: a (buckets, H) bias table per self-attention


@dataclass
class TransformerConfig:
    src_vocab: int  # input symbols, specials included
    tgt_vocab: int  # output symbols, specials included
    d_model: int = 256  # D
    heads: int = 4  # H, dividing D
    ff_dim: int = 1024  # inner dim of the position-wise feed-forward block
    encoder_layers: int = 3
    decoder_layers: int = 3
    dropout: float = 0.1  # on sublayer outputs, attention weights and the feed-forward block
    max_len: int = 128  # longest source or target the positional table covers (absolute positions only)
    score: str = "scaled_dot"  # a name in SCORES, for every attention; "dot" is the unscaled ablation
    position: str = "sinusoidal"  # how token order enters, one of POSITIONS (older checkpoints: sinusoidal)

    def __post_init__(self):
        for name in (
            "src_vocab",
            "tgt_vocab",
            "d_model",
            "heads",
            "ff_dim",
            "encoder_layers",
            "decoder_layers",
            "max_len",
        ):
            check_int(name, getattr(self, name))
        limits.check_fields(
            self,
            symbols=("src_vocab", "tgt_vocab"),
            widths=("d_model", "heads", "ff_dim"),
            layers=("encoder_layers", "decoder_layers"),
            lengths=("max_len",),
        )
        if self.d_model % self.heads:
            raise AttentionError(f"heads={self.heads} must divide d_model={self.d_model}")
        check_probability("dropout", self.dropout)
        resolve(self.score)  # a known name, before any layer is built
        if self.position not in POSITIONS:
            raise AttentionError(f"position={self.position!r} is unknown; expected one of {list(POSITIONS)}")
        shown = ("src_vocab", "tgt_vocab", "d_model", "ff_dim", "encoder_layers", "decoder_layers", "max_len")
        limits.check_size(self, shown)

    def size(self) -> int:
        """At least the parameters and buffer elements of :class:`TransformerSeq2Seq` (at most twice
        them): what :func:`~attnkit.models.limits.check_size` bounds before anything is built."""
        d = self.d_model
        feed_forward = limits.linear_size(d, self.ff_dim) + limits.linear_size(self.ff_dim, d)
        encoder = limits.attention_size(d) + feed_forward + 4 * d  # and two layer norms
        decoder = 2 * limits.attention_size(d) + feed_forward + 6 * d
        table = self.max_len if self.position in ABSOLUTE else 0  # the positions' table
        biases = T5_BUCKETS * self.heads if self.position == "t5" else 0  # per self-attention
        return (
            (self.src_vocab + self.tgt_vocab + table) * d  # embeddings
            + self.encoder_layers * (encoder + biases)
            + self.decoder_layers * (decoder + biases)
            + 4 * d  # the final layer norms
            + limits.linear_size(d, self.tgt_vocab)
        )


def sinusoids(length: int, dim: int) -> Tensor:
    """(length, dim) table: PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(...)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]  # (T, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (D/2,)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


def relative(position: str | None, encoder: bool = False) -> dict:
    """The ``MultiHeadAttention`` keywords of a self-attention under ``position``: its
    ``position=`` for a relative method, none for an absolute one (or None); an encoder's ALiBi
    is directional (its keys left and right of a query at different slopes)."""
    if position not in RELATIVE:
        return {}
    return {"position": position, **({"alibi_directional": True} if encoder and position == "alibi" else {})}


class FeedForward(nn.Sequential):
    def __init__(self, d: int, inner: int, dropout: float):
        super().__init__(nn.Linear(d, inner), nn.ReLU(), nn.Dropout(dropout), nn.Linear(inner, d))


class EncoderLayer(nn.Module):
    """x += SelfAttention(LN(x)); x += FF(LN(x)): one pre-LN encoder layer (also the layer of the
    Transformer classifier). ``position``: a relative method of :data:`POSITIONS` for its
    self-attention (None, or an absolute one: none)."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        ff_dim: int,
        dropout: float,
        score: str = "scaled_dot",
        position: str | None = None,
    ):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, heads, score=score, dropout=dropout, **relative(position, encoder=True))
        self.ff = FeedForward(d_model, ff_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        """``x`` (B, S, D), ``padding`` (B, S) True at padded positions -> (B, S, D)."""
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, key_padding_mask=padding).output)  # (B, S, D)
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn = MultiHeadAttention(
            cfg.d_model, cfg.heads, score=cfg.score, dropout=cfg.dropout, causal=True, **relative(cfg.position)
        )
        # cross-attention compares target with source positions: no position method
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, score=cfg.score, dropout=cfg.dropout)
        self.ff = FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, y: Tensor, memory: Memory, need_weights: bool, cache: tuple[KVCache, KVCache] | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``y`` (B, T, D): the whole target, or its next T positions after the ``cache``'s (self,
        cross) keys and values, which the call updates."""
        self_cache, cross_cache = (None, None) if cache is None else cache
        h = self.norm1(y)
        y = y + self.drop(self.self_attn(h, cache=self_cache).output)  # (B, T, D), causal
        h = self.norm2(y)
        cross, weights = self.cross_attn(
            h, memory.states, key_padding_mask=memory.padding, need_weights=need_weights, cache=cross_cache
        )
        y = y + self.drop(cross)
        return y + self.drop(self.ff(self.norm3(y))), weights  # weights (B, T, S) averaged over heads


@dataclass(eq=False)
class DecoderCache:
    """The decoder state of cached step-by-step decoding: per decoder layer, a (self-attention,
    cross-attention) :class:`KVCache` pair; ``length`` target positions decoded so far."""

    layers: list[tuple[KVCache, KVCache]] = field(default_factory=list)
    holds_source = True  # its cross-attention caches belong to one memory tensor: greedy keeps the batch whole

    @property
    def length(self) -> int:
        return self.layers[0][0].length if self.layers else 0

    def reorder(self, index: Tensor) -> DecoderCache:
        """Take rows ``index`` along the batch dim of every layer's keys and values, in place."""
        for self_cache, cross_cache in self.layers:
            self_cache.reorder(index)
            cross_cache.reorder(index)
        return self


class TransformerSeq2Seq(nn.Module):
    """Transformer encoder-decoder; ``decode`` is parallel over target positions, ``step`` decodes
    one position from a :class:`DecoderCache` (``use_cache``, an attribute, default True; False
    re-runs the decoder over the whole prefix at every step, the reference the cache is tested
    against).

    >>> model = TransformerSeq2Seq(TransformerConfig(10, 12, d_model=16, heads=2, ff_dim=32)).eval()
    >>> src = torch.tensor([[4, 5, 6], [7, 8, 0]])
    >>> out = model.decode(model.encode(src), torch.tensor([[1, 3], [1, 4]]))
    >>> out.logits.shape, out.weights.shape, out.weights[1, :, 2].tolist()
    (torch.Size([2, 2, 12]), torch.Size([2, 2, 3]), [0.0, 0.0])
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = cfg = config
        self.memory_dim = cfg.d_model
        self.src_embed = nn.Embedding(cfg.src_vocab, cfg.d_model, padding_idx=0)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab, cfg.d_model, padding_idx=0)
        if cfg.position == "sinusoidal":  # not in the state dict: rebuilt from the config
            self.register_buffer("positions", sinusoids(cfg.max_len, cfg.d_model), persistent=False)
        elif cfg.position == "learned":  # (max_len, D), at the scale of the sinusoids' entries (RMS 1/√2)
            self.position_embed = nn.Embedding(cfg.max_len, cfg.d_model)
            nn.init.normal_(self.position_embed.weight, std=0.5**0.5)
        self.encoder = nn.ModuleList(
            EncoderLayer(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, cfg.score, cfg.position)
            for _ in range(cfg.encoder_layers)
        )
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.tgt_vocab)
        self.drop = nn.Dropout(cfg.dropout)
        self.use_cache = True  # step() with a key/value cache; False: re-run the decoder over the prefix
        for table in (self.src_embed, self.tgt_embed):  # std D^-1/2: unit scale after the sqrt(D) factor
            nn.init.normal_(table.weight, std=cfg.d_model**-0.5)
            nn.init.zeros_(table.weight[0])  # padding

    @property
    def max_positions(self) -> int | None:
        """The longest source or target the model reads: ``max_len`` with absolute positions,
        None (any length) with relative ones."""
        return self.config.max_len if self.config.position in ABSOLUTE else None

    def _embed(self, table: nn.Embedding, ids: Tensor, name: str, start: int = 0) -> Tensor:
        """``ids`` (B, T) at positions ``start`` .. ``start`` + T - 1 -> (B, T, D), with the absolute
        positions added (relative ones act in the self-attentions)."""
        x = table(ids) * math.sqrt(self.config.d_model)  # (B, T, D)
        position = self.config.position
        if position in ABSOLUTE:
            if start + ids.shape[1] > self.config.max_len:
                at = f" at positions from {start}" if start else ""
                raise AttentionError(
                    f"{name} has shape {tuple(ids.shape)}{at} but the model's positions end at "
                    f"max_len={self.config.max_len}"
                )
            if position == "sinusoidal":
                x = x + self.positions[start : start + ids.shape[1]]  # (T, D) broadcast over B
            else:
                at = torch.arange(start, start + ids.shape[1], device=ids.device)  # (T,)
                x = x + self.position_embed(at)  # (T, D) broadcast over B
        return self.drop(x)

    def encode(self, src: Tensor) -> Memory:
        """``src`` (B, S) padded with 0 -> Memory with states (B, S, D)."""
        padding = source_padding(src)
        x = self._embed(self.src_embed, src, "src")
        for layer in self.encoder:
            x = layer(x, padding)
        return Memory(self.enc_norm(x), padding)

    def decode(self, memory: Memory, tgt_in: Tensor, need_weights: bool = True) -> Decoded:
        """Teacher forcing: ``tgt_in`` (B, T) starts with BOS -> logits (B, T, V) and alignment (B, T, S)."""
        y = self._embed(self.tgt_embed, tgt_in, "tgt_in")
        weights = None
        for i, layer in enumerate(self.decoder):
            y, weights = layer(y, memory, need_weights and i == len(self.decoder) - 1)
        return Decoded(self.out(self.dec_norm(y)), weights)

    def start(self, memory: Memory) -> DecoderCache | Tensor:
        """The decoder state: an empty :class:`DecoderCache`, or with ``use_cache=False`` the
        prefix decoded so far, (B, 0) at the start."""
        if self.use_cache:
            return DecoderCache([(KVCache(), KVCache(cross=True)) for _ in self.decoder])
        return memory.states.new_zeros(memory.states.shape[0], 0, dtype=torch.long)

    def step(self, memory: Memory, state: DecoderCache | Tensor, token: Tensor, t: int, need_weights: bool = True):
        """Decode ``token`` (B,) at position ``t`` -> (logits (B, V), state, weights (B, S), None).

        With a :class:`DecoderCache` (updated in place) only position t runs through the decoder;
        with a prefix (B, t) the whole prefix does again."""
        if not isinstance(state, DecoderCache):
            prefix = torch.cat([state, token[:, None]], 1)  # (B, t + 1)
            out = self.decode(memory, prefix, need_weights)
            weights = None if out.weights is None else out.weights[:, -1]
            return out.logits[:, -1], prefix, weights, None
        if len(state.layers) != len(self.decoder) or state.length != t:
            raise AttentionError(
                f"step t={t} needs a DecoderCache of {len(self.decoder)} layers holding t positions, got "
                f"{len(state.layers)} layers holding {state.length}; start one with model.start(memory)"
            )
        y = self._embed(self.tgt_embed, token[:, None], "token", start=t)  # (B, 1, D)
        weights = None
        for i, (layer, cache) in enumerate(zip(self.decoder, state.layers)):
            y, weights = layer(y, memory, need_weights and i == len(self.decoder) - 1, cache)
        logits = self.out(self.dec_norm(y[:, 0]))  # (B, V)
        return logits, state, None if weights is None else weights[:, 0], None

    def forward(self, src: Tensor, tgt_in: Tensor) -> Decoded:
        return self.decode(self.encode(src), tgt_in, need_weights=False)
