"""RNN encoder-decoder with a choice of attention: none (one fixed context), Bahdanau, Luong.

Shape legend: B batch, S source positions, T target positions, E embedding dim, H encoder hidden
dim per direction, M = H x directions (memory and decoder dim), V target vocabulary.

The decoder step for each ``attention`` (y the previous target token, s the decoder state):

- ``none`` (Cho et al. 2014): c = [h_S(fwd); h_1(bwd)], one vector for the whole source;
  s_t = RNN([emb(y); c], s_{t-1}); o_t = tanh(W_o [s_t; c]).
- ``bahdanau`` (Bahdanau et al. 2015): c_t = Σ_j a_tj h_j with a_t from the additive score of the
  *previous* state s_{t-1}; c_t is fed into the step: s_t = RNN([emb(y); c_t], s_{t-1});
  o_t = tanh(W_o [s_t; c_t]).
- Luong et al. 2015 (``luong-dot``, ``luong-general``, ``luong-concat``, ``local-m``, ``local-p``,
  ``hard``, ``sparsemax``, ``entmax15``, ``gumbel``): the step comes first,
  s_t = RNN([emb(y); õ_{t-1}], s_{t-1}) with input feeding of the previous attentional state;
  then a_t from score(s_t, h_j), c_t = Σ_j a_tj h_j and õ_t = tanh(W_c [c_t; s_t]). ``local-m`` attends h_{t-D}..h_{t+D}; ``local-p`` predicts a centre
  p_t and weights a Gaussian around it; ``hard`` samples one position from a_t in training (trained
  with REINFORCE, :attr:`Decoded.log_prob`) and takes the argmax at inference (Xu et al. 2015);
  ``sparsemax`` and ``entmax15`` replace the softmax by a sparse map (exact zeros); ``gumbel`` is
  straight-through Gumbel-softmax in training (a one-hot forward, the soft gradient) and the
  argmax at inference.
  With ``input_feed=False`` the step reads emb(y) alone: s_t no longer depends on õ_{t-1}, so
  teacher forcing runs the RNN once over the whole target and attends from all T states at once.

logits_t = W_out o_t.

``scaled=True`` divides the ``dot`` and ``general`` scores by √M, as the Transformer does, so that
the softmax over large states does not saturate. The attention's key side (W h_j of ``general``,
W_k h_j of ``additive``) is projected once per source, in :meth:`RNNSeq2Seq.encode`.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.normalizers import Gumbel, Sample
from ..errors import AttentionError, check_int, check_probability
from ..modules import Attention
from . import limits
from .base import Decoded, Memory, source_padding

__all__ = ["ATTENTIONS", "PrecisionFallbackWarning", "RNNConfig", "RNNSeq2Seq", "cpu_bf16_lstm", "over_sequence"]

# name -> (score, region, normalize) of the decoder's Attention; None: no attention
ATTENTIONS: dict[str, tuple[str, str, str] | None] = {
    "none": None,
    "bahdanau": ("additive", "global", "softmax"),
    "luong-dot": ("dot", "global", "softmax"),
    "luong-general": ("general", "global", "softmax"),
    "luong-concat": ("concat", "global", "softmax"),
    "local-m": ("general", "local-m", "softmax"),
    "local-p": ("general", "local-p", "softmax"),
    "hard": ("general", "global", "sample"),
    "sparsemax": ("general", "global", "sparsemax"),
    "entmax15": ("general", "global", "entmax15"),
    "gumbel": ("general", "global", "gumbel"),
}
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
SCALED = {"dot": "scaled_dot", "general": "scaled_general"}  # the scores ``scaled=True`` divides by √M


@dataclass
class RNNConfig:
    src_vocab: int  # input symbols, specials included
    tgt_vocab: int  # output symbols, specials included
    attention: str = "luong-general"  # a name in ATTENTIONS
    cell: str = "lstm"  # "lstm" or "gru"
    embed_dim: int = 64  # E, for letters and phonemes alike
    hidden_dim: int = 256  # H per encoder direction; the decoder has M = H x directions
    layers: int = 1  # stacked RNN layers, encoder and decoder alike
    bidirectional: bool = True  # Bahdanau's encoder reads both ways
    window: int = 3  # D of local-m and local-p: the region is 2D + 1 source positions
    dropout: float = 0.2  # on embeddings, between layers and before the output layer
    scaled: bool = False  # divide the dot / general score by √M
    input_feed: bool = True  # Luong's input feeding; False: teacher forcing runs the decoder in parallel

    def __post_init__(self):
        if self.attention not in ATTENTIONS:
            raise AttentionError(f"attention={self.attention!r} is unknown; expected one of {sorted(ATTENTIONS)}")
        kind = ATTENTIONS[self.attention]
        if self.scaled and (kind is None or kind[0] not in SCALED):
            raise AttentionError(
                f"scaled=True divides a dot or general score by √M, but attention={self.attention!r} "
                f"has score {kind and kind[0]!r}"
            )
        if not self.input_feed and self.attention in ("none", "bahdanau"):
            raise AttentionError(
                f"input_feed=False turns off Luong's input feeding; attention={self.attention!r} has none to turn off"
            )
        if self.cell not in CELLS:
            raise AttentionError(f"cell={self.cell!r} is unknown; expected one of {sorted(CELLS)}")
        for name in ("src_vocab", "tgt_vocab", "embed_dim", "hidden_dim", "layers", "window"):
            check_int(name, getattr(self, name))
        check_probability("dropout", self.dropout)
        limits.check_fields(
            self,
            symbols=("src_vocab", "tgt_vocab"),
            widths=("embed_dim", "hidden_dim"),
            layers=("layers",),
            lengths=("window",),
        )
        limits.check_size(self, ("src_vocab", "tgt_vocab", "embed_dim", "hidden_dim", "layers", "bidirectional"))

    def size(self) -> int:
        """At least the parameters and buffer elements of :class:`RNNSeq2Seq` (at most twice them):
        what :func:`~attnkit.models.limits.check_size` bounds before anything is built."""
        directions = 2 if self.bidirectional else 1
        m = self.hidden_dim * directions
        return (
            (self.src_vocab + self.tgt_vocab) * self.embed_dim
            + limits.rnn_size(self.cell, self.embed_dim, self.hidden_dim, self.layers, directions)
            + limits.rnn_size(self.cell, self.embed_dim + m, m, self.layers, 1)  # the decoder, fed a context
            + limits.score_size(m, m, m)
            + limits.linear_size(m, m)  # the bridge
            + limits.linear_size(2 * m, m)  # the combination of state and context
            + limits.linear_size(m, self.tgt_vocab)
        )


class RNNState(NamedTuple):
    """Decoder state, batch first: ``h`` (B, L, M); ``c`` (B, L, M) for LSTM, else None; ``feed``
    (B, M) the previous attentional state õ (Luong's input feeding), else None."""

    h: Tensor
    c: Tensor | None
    feed: Tensor | None


class RNNSeq2Seq(nn.Module):
    """Encoder-decoder over RNNs with the attention named in ``config.attention``.

    >>> model = RNNSeq2Seq(RNNConfig(src_vocab=10, tgt_vocab=12, hidden_dim=16, embed_dim=8)).eval()
    >>> src = torch.tensor([[4, 5, 6], [7, 8, 0]])
    >>> out = model.decode(model.encode(src), torch.tensor([[1, 3], [1, 4]]))
    >>> out.logits.shape, out.weights.shape, torch.allclose(out.weights.sum(-1), torch.ones(2, 2))
    (torch.Size([2, 2, 12]), torch.Size([2, 2, 3]), True)
    """

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = cfg = config
        dirs = 2 if cfg.bidirectional else 1
        m = cfg.hidden_dim * dirs
        self.memory_dim = m
        rnn = CELLS[cfg.cell]
        between = cfg.dropout if cfg.layers > 1 else 0.0
        self.src_embed = nn.Embedding(cfg.src_vocab, cfg.embed_dim, padding_idx=0)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab, cfg.embed_dim, padding_idx=0)
        self.encoder = rnn(
            cfg.embed_dim,
            cfg.hidden_dim,
            cfg.layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=between,
        )
        self.bridge = nn.Linear(m, m)  # encoder's final states -> decoder's initial states
        feeds = not self.luong or cfg.input_feed  # a context (fixed, Bahdanau's c_t or õ_{t-1}) enters each step
        self.decoder = rnn(cfg.embed_dim + (m if feeds else 0), m, cfg.layers, batch_first=True, dropout=between)
        self.kind = ATTENTIONS[cfg.attention]
        self.attention = None
        if self.kind is not None:
            score, region, normalize = self.kind
            score = SCALED[score] if cfg.scaled else score
            window = cfg.window if region != "global" else None
            self.attention = Attention(
                m, m, score=score, region=region, window=window, normalize=normalize, hidden_dim=m
            )
        self.combine = nn.Linear(2 * m, m)  # W_o / W_c over [s; c] or [c; s]
        self.out = nn.Linear(m, cfg.tgt_vocab)
        self.drop = nn.Dropout(cfg.dropout)

    @property
    def luong(self) -> bool:
        return self.config.attention not in ("none", "bahdanau")

    def encode(self, src: Tensor) -> Memory:
        """``src`` (B, S) padded with 0 -> Memory with states (B, S, M)."""
        padding = source_padding(src)
        lengths = (~padding).sum(-1).clamp(min=1).cpu()
        x = self.drop(self.src_embed(src))  # (B, S, E)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, final = over_sequence(self.encoder, packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # (B, S, M)
        h = final[0] if isinstance(final, tuple) else final  # (L x dirs, B, H)
        dirs = 2 if self.config.bidirectional else 1
        last = h.view(self.config.layers, dirs, *h.shape[1:])[-1]  # (dirs, B, H): top layer
        context = torch.cat(list(last), dim=-1)  # (B, M)
        keys = None if self.attention is None else self.attention.project_keys(states)  # (B, S, K), once
        return Memory(states, padding, context, keys)

    def start(self, memory: Memory) -> RNNState:
        """The decoder's initial state: every layer starts from tanh(W_b c), c the source summary."""
        b, m = memory.context.shape
        h0 = torch.tanh(self.bridge(memory.context)).unsqueeze(1).expand(b, self.config.layers, m).contiguous()
        c0 = torch.zeros_like(h0) if self.config.cell == "lstm" else None
        feed = memory.context.new_zeros(b, m) if self.luong and self.config.input_feed else None
        return RNNState(h0, c0, feed)

    def step(self, memory: Memory, state: RNNState, token: Tensor, t: int, need_weights: bool = True):
        """One decoder step at target position ``t`` from the previous tokens (B,) ->
        (logits (B, V), next state, weights (B, S) or None, log_prob (B,) or None)."""
        e = self.drop(self.tgt_embed(token))  # (B, E)
        att_kwargs = self._att_kwargs(memory, need_weights)
        weights = log_prob = None
        if self.kind is None:
            c = memory.context  # (B, M): the same fixed context at every step
            s, state = self._rnn(torch.cat([e, c], -1), state)
            o = torch.tanh(self.combine(torch.cat([s, c], -1)))
        elif not self.luong:  # Bahdanau: attend from the previous state, feed c_t into the step
            r = self.attention(state.h[:, -1], memory.states, **att_kwargs)
            c, weights, log_prob = r.output, r.weights, r.log_prob
            s, state = self._rnn(torch.cat([e, c], -1), state)
            o = torch.tanh(self.combine(torch.cat([s, c], -1)))
        else:  # Luong: step, then attend from the new state; õ_t is fed to the next step
            s, state = self._rnn(e if state.feed is None else torch.cat([e, state.feed], -1), state)
            r = self.attention(s, memory.states, query_start=t, **att_kwargs)
            c, weights, log_prob = r.output, r.weights, r.log_prob
            o = torch.tanh(self.combine(torch.cat([c, s], -1)))  # (B, M)
            state = state if state.feed is None else state._replace(feed=o)
        return self.out(self.drop(o)), state, weights, log_prob

    def _att_kwargs(self, memory: Memory, need_weights: bool) -> dict:
        kwargs = {"key_padding_mask": memory.padding, "need_weights": need_weights, "projected_key": memory.keys}
        if not self.training and isinstance(getattr(self.attention, "normalize", None), Sample | Gumbel):
            kwargs["normalize"] = "hard"  # sampled in training, argmax at inference
        return kwargs

    def _rnn(self, x: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        """One step of the stacked decoder RNN on ``x`` (B, In): the cell function over each layer's
        weights of ``self.decoder`` (an ``nn.LSTM`` / ``nn.GRU``, whose one-step call costs more
        than the cell's), with its dropout between layers in training."""
        rnn, hs, cs = self.decoder, [], []
        for layer in range(rnn.num_layers):
            weights = [getattr(rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            if layer > 0 and self.training and rnn.dropout > 0:
                x = F.dropout(x, rnn.dropout)
            if state.c is None:
                x = torch.gru_cell(x, state.h[:, layer], *weights)  # (B, M)
            else:
                x, c = torch.lstm_cell(x, (state.h[:, layer], state.c[:, layer]), *weights)
                cs.append(c)
            hs.append(x)
        c = None if state.c is None else torch.stack(cs, 1)  # (B, L, M)
        return x, state._replace(h=torch.stack(hs, 1), c=c)

    def decode(self, memory: Memory, tgt_in: Tensor, need_weights: bool = True) -> Decoded:
        """Teacher forcing: ``tgt_in`` (B, T) starts with BOS -> logits (B, T, V) and alignment (B, T, S).
        One RNN call over the whole target when no step depends on the last one's attention (no
        attention; Luong without input feeding), else a loop over the steps."""
        if self.kind is None or (self.luong and not self.config.input_feed):
            return self._decode_parallel(memory, tgt_in, need_weights)
        state = self.start(memory)
        logits, weights, log_probs = [], [], []
        for t in range(tgt_in.shape[1]):
            lg, state, w, lp = self.step(memory, state, tgt_in[:, t], t, need_weights)
            logits.append(lg)
            weights.append(w)
            log_probs.append(lp)
        return Decoded(torch.stack(logits, 1), _stack_steps(weights), _stack_steps(log_probs))

    def _decode_parallel(self, memory: Memory, tgt_in: Tensor, need_weights: bool) -> Decoded:
        """:meth:`decode` with every step at once: the same maths as the step loop."""
        state = self.start(memory)
        e = self.drop(self.tgt_embed(tgt_in))  # (B, T, E)
        if self.kind is None:
            e = torch.cat([e, memory.context[:, None].expand(-1, e.shape[1], -1)], -1)  # (B, T, E + M)
        h0 = state.h.transpose(0, 1).contiguous()  # (L, B, M)
        hx = h0 if state.c is None else (h0, state.c.transpose(0, 1).contiguous())  # (L, B, M)
        s, _ = over_sequence(self.decoder, e, hx)  # (B, T, M)
        if self.kind is None:
            o = torch.tanh(self.combine(torch.cat([s, memory.context[:, None].expand_as(s)], -1)))
            return Decoded(self.out(self.drop(o)))
        r = self.attention(s, memory.states, **self._att_kwargs(memory, need_weights))  # query t at position t: local-m's window follows it
        o = torch.tanh(self.combine(torch.cat([r.output, s], -1)))  # (B, T, M)
        return Decoded(self.out(self.drop(o)), r.weights, r.log_prob)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Decoded:
        return self.decode(self.encode(src), tgt_in, need_weights=False)


def _stack_steps(steps: list) -> Tensor | None:
    """Per-step tensors (B, ...) -> (B, T, ...); None where the steps gave None (no such output)."""
    return None if not steps or steps[0] is None else torch.stack(steps, 1)


def over_sequence(rnn: nn.RNNBase, x: Tensor | nn.utils.rnn.PackedSequence, hx=None):
    """``rnn(x, hx)`` over a whole sequence (a tensor or a ``PackedSequence``). oneDNN runs an
    ``nn.LSTM`` under CPU bfloat16 autocast only on CPUs with native bfloat16 (AVX512-BF16, AMX);
    elsewhere (AVX2-only CPUs) it fails to build the kernel, so there the LSTM runs in float32
    (said once, as a :class:`PrecisionFallbackWarning`) and the rest of the model in bfloat16."""
    if not (isinstance(rnn, nn.LSTM) and _cpu_bf16_autocast()) or rnn.weight_ih_l0.device.type != "cpu":
        return rnn(x, hx)
    if cpu_bf16_lstm():
        return rnn(x, hx)
    _say_lstm_fallback()
    if isinstance(x, nn.utils.rnn.PackedSequence):
        x = nn.utils.rnn.PackedSequence(x.data.float(), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    else:
        x = x.float()
    with torch.autocast("cpu", enabled=False):
        return rnn(x, None if hx is None else tuple(h.float() for h in hx))


def _cpu_bf16_autocast() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@functools.cache
def cpu_bf16_lstm() -> bool:
    """Whether ``nn.LSTM`` runs under CPU bfloat16 autocast on this machine: probed once on a tiny LSTM,
    as the CPU's features alone do not tell (``ONEDNN_MAX_CPU_ISA=AVX2`` hides AVX512-BF16 from
    oneDNN). ``ATTNKIT_CPU_BF16=0`` answers False without probing (the fallback's tests use it)."""
    if os.environ.get("ATTNKIT_CPU_BF16") == "0":
        return False
    lstm = nn.LSTM(2, 2, batch_first=True)
    x = torch.zeros(1, 1, 2)
    try:  # oneDNN takes the LSTM with gradients and without (inference) by different paths: try both
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(x)[0].sum().backward()
            with torch.no_grad():
                lstm(nn.utils.rnn.pack_padded_sequence(x, torch.tensor([1]), batch_first=True))
    except RuntimeError:  # oneDNN: "could not create a primitive descriptor for the LSTM forward ..."
        return False
    return True


@functools.cache
def _say_lstm_fallback() -> None:
    warnings.warn(
        "this CPU has no native bfloat16 kernels for nn.LSTM (AVX512-BF16 or AMX): the LSTM runs in float32, "
        "the rest of the model in bfloat16",
        PrecisionFallbackWarning,
        stacklevel=3,
    )


class PrecisionFallbackWarning(UserWarning):
    """A part of a model runs in a higher precision than asked for, because this machine cannot run it lower."""

