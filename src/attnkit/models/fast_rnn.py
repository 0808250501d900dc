"""An inference-only form of a trained :class:`~attnkit.models.RNNSeq2Seq`: the same encoder-decoder
protocol (``encode``, ``start``, ``step``) and the same outputs up to float rounding, in fewer and
cheaper operations, optionally with int8 matrix products.

Shape legend: B batch, S source positions, E embedding dim, H hidden dim per encoder direction,
D directions, M = H x D (memory and decoder dim), G gates (3 for GRU, 4 for LSTM), V target vocabulary.

What it changes, and why it is the same model:

- **Embeddings folded into the first layer's input gates.** A first layer reads emb(y) (plus the
  fed-back õ with input feeding), so its input gates W_ih emb(y) + b_ih are one row of a table
  (V, G M) computed once: a lookup instead of a matrix product at every step. The encoder's first
  layer gets the same table over letters.
- **The encoder without packed sequences.** A bidirectional RNN over a padded batch must read each
  row backwards from its own last letter: the backward direction runs over every row reversed
  within its length (one gather), so both directions advance in one batched product a step, and
  each row's final state is read at its last letter. Padded positions are zeroed, as
  ``pad_packed_sequence`` leaves them.
- **Attention without the general module.** Luong's global attention at inference is a masked
  softmax over one dot product per source position (an elementwise product and a sum: faster than a
  batched (S, M) x (M, 1) product), with the keys projected once per source (W h_j of the general
  score, over √M where scaled), then one batched product for the context.
- **int8** (``int8=True``): the decoder's matrix products with a weight matrix (its recurrences, its
  deeper layers' input gates, the fed-back õ, the combination and the output layer) and the key
  projection run as dynamically quantized int8 products (``torch.ao`` dynamic quantization: int8 weights per output row, the
  input quantized per call), about 1.8x the float32 throughput on an AVX2 CPU. Outputs then differ
  from float32's in the last digits of the logits, which can flip a close argmax: measure its
  accuracy, as ``benchmarks/g2p`` does. The encoder's recurrences stay float32 (too small for int8
  to pay for quantizing their input, measured). Where the CPU has no quantized engine
  (:func:`int8_available` is False) it is float32.

Supported: cells ``lstm`` and ``gru``, any number of layers, uni- or bidirectional encoders, input
feeding or not, and Luong's global attention with the ``dot`` or ``general`` score, scaled or not
(``luong-dot``, ``luong-general``). Any other model is an :class:`~attnkit.errors.AttentionError`
naming what it has. Dropout is off: this is for inference only (no gradients are kept).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from ..errors import AttentionError
from .base import Memory, source_padding
from .rnn import ATTENTIONS, RNNSeq2Seq, RNNState

__all__ = ["SUPPORTED", "FastRNN", "int8_available"]

SUPPORTED = ("luong-dot", "luong-general")  # the attentions FastRNN runs


def int8_available() -> bool:
    """Whether this torch build has a CPU engine for dynamically quantized int8 products."""
    engines = torch.backends.quantized.supported_engines
    return any(e in engines for e in ("x86", "fbgemm", "onednn"))


def _linear(weight: Tensor, bias: Tensor | None, int8: bool) -> nn.Module:
    """``x -> x Wᵀ + b`` as an ``nn.Linear`` (a copy of the weights), or its int8 dynamic form."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    if not int8 or weight.dtype != torch.float32 or weight.device.type != "cpu":
        return lin.requires_grad_(False)  # int8 products: float32 weights on the CPU only
    with warnings.catch_warnings():  # torch.ao's quantized tensors are marked deprecated; they still run
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)[0]


def _recurrence(rnn: nn.RNNBase, suffix: str, int8: bool) -> nn.Module:
    """The recurrent half of one layer and direction of ``rnn``: ``h -> W_hh h + b_hh``."""
    return _linear(getattr(rnn, f"weight_hh_{suffix}"), getattr(rnn, f"bias_hh_{suffix}"), int8)


def _cell(gates_x: Tensor, gates_h: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """One GRU (``c`` None) or LSTM step from its input gates (.., G M) and recurrent gates (.., G M),
    gate order as ``nn.GRU`` / ``nn.LSTM`` store them: (r, z, n) and (i, f, g, o)."""
    if c is None:
        xr, xz, xn = gates_x.chunk(3, -1)
        hr, hz, hn = gates_h.chunk(3, -1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return n + z * (h - n), None  # (1 - z) n + z h
    i, f, g, o = (gates_x + gates_h).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class FastRNN(nn.Module):
    """``model`` (a trained :class:`~attnkit.models.RNNSeq2Seq`) for inference: the same ``encode`` /
    ``start`` / ``step`` as the model, so :func:`~attnkit.models.greedy`,
    :func:`~attnkit.models.beam_search` and :class:`~attnkit.models.Ensemble` run it unchanged.
    ``int8``: int8 matrix products (see the module docstring); None: where
    :func:`int8_available`. The weights are copied: later changes to ``model`` are not seen.

    >>> from attnkit.models import RNNConfig, RNNSeq2Seq, greedy
    >>> model = RNNSeq2Seq(RNNConfig(src_vocab=9, tgt_vocab=7, hidden_dim=8, embed_dim=4)).eval()
    >>> src = torch.tensor([[3, 4, 5], [6, 7, 0]])
    >>> [h.tokens for h in greedy(FastRNN(model, int8=False), src, max_len=4)] == [
    ...     h.tokens for h in greedy(model, src, max_len=4)]
    True
    """

    def __init__(self, model: nn.Module, int8: bool | None = False):
        super().__init__()
        if not isinstance(model, RNNSeq2Seq):
            raise AttentionError(f"model must be an RNNSeq2Seq, got {type(model).__name__}")
        cfg = model.config
        if cfg.attention not in SUPPORTED:
            raise AttentionError(
                f"FastRNN runs Luong's global attention ({', '.join(SUPPORTED)}); this model has "
                f"attention={cfg.attention!r}: decode the model itself"
            )
        self.int8 = int8 = int8_available() if int8 is None else bool(int8 and int8_available())
        self.config = cfg
        self.memory_dim = model.memory_dim
        self.lstm = cfg.cell == "lstm"
        self.directions = 2 if cfg.bidirectional else 1
        general = ATTENTIONS[cfg.attention][0] == "general"
        self.key_scale = 1.0 / math.sqrt(model.memory_dim) if cfg.scaled else 1.0
        with torch.no_grad():
            enc, dec = model.encoder, model.decoder
            suffixes = [
                [f"l{layer}" + ("_reverse" if d else "") for d in range(self.directions)] for layer in range(cfg.layers)
            ]
            # the encoder's first layer: letter -> input gates, one table per direction (D, letters, G H)
            self.register_buffer(
                "enc_table",
                torch.stack(
                    [
                        model.src_embed.weight @ getattr(enc, f"weight_ih_{s}").T + getattr(enc, f"bias_ih_{s}")
                        for s in suffixes[0]
                    ]
                ),
            )
            self.enc_ih = nn.ModuleList(  # deeper layers: (D H) -> G H per direction
                _linear(getattr(enc, f"weight_ih_{s}"), getattr(enc, f"bias_ih_{s}"), False)
                for layer in suffixes[1:]
                for s in layer
            )
            # the recurrences of each layer, its directions stacked for one batched product a step
            # (float32: the encoder's products are too small for int8 to pay for quantizing its input)
            for layer, names in enumerate(suffixes):
                self.register_buffer(f"_hh_w{layer}", torch.stack([getattr(enc, f"weight_hh_{n}").T for n in names]))
                self.register_buffer(f"_hh_b{layer}", torch.stack([getattr(enc, f"bias_hh_{n}")[None] for n in names]))
            # the decoder's first layer: the embedding's part of its input gates, a table (V, G M)
            e = cfg.embed_dim
            w0 = dec.weight_ih_l0
            self.register_buffer("dec_table", model.tgt_embed.weight @ w0[:, :e].T + dec.bias_ih_l0)
            self.feed = _linear(w0[:, e:], None, int8) if w0.shape[1] > e else None  # õ's part, input feeding
            self.dec_ih = nn.ModuleList(
                _linear(getattr(dec, f"weight_ih_l{layer}"), getattr(dec, f"bias_ih_l{layer}"), int8)
                for layer in range(1, cfg.layers)
            )
            self.dec_hh = nn.ModuleList(_recurrence(dec, f"l{layer}", int8) for layer in range(cfg.layers))
            # the score's key side, once per source: W h_j (general) or h_j (dot), over √M where scaled
            self.keys = _linear(model.attention.score_params["W"], None, int8) if general else None
            self.bridge = _linear(
                model.bridge.weight, model.bridge.bias, False
            )  # float: its parameters give the device
            self.combine = _linear(model.combine.weight, model.combine.bias, int8)
            self.out = _linear(model.out.weight, model.out.bias, int8)
        self.eval()

    @property
    def enc_hh_w(self) -> list[Tensor]:
        return [getattr(self, f"_hh_w{layer}") for layer in range(self.config.layers)]

    @property
    def enc_hh_b(self) -> list[Tensor]:
        return [getattr(self, f"_hh_b{layer}") for layer in range(self.config.layers)]

    @torch.no_grad()
    def encode(self, src: Tensor) -> Memory:
        """``src`` (B, S) padded with 0 -> Memory with states (B, S, M), as :meth:`RNNSeq2Seq.encode`."""
        padding = source_padding(src)
        s = src.shape[1]
        lengths = (~padding).sum(-1).clamp(min=1)  # (B,)
        pos = torch.arange(s, device=src.device)
        # row b read backwards from its last letter: position t <- lengths_b - 1 - t (padding stays put)
        back = torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)  # (B, S)
        orders = [None, back][: self.directions]
        last = (lengths - 1)[:, None, None]  # (B, 1, 1): each row's last real step
        x, finals = None, []
        for layer in range(self.config.layers):
            gates_x = []  # each direction's input gates, in its reading order
            for d, order in enumerate(orders):
                if layer == 0:
                    gates_x.append(self.enc_table[d][src if order is None else src.gather(1, order)])  # (B, S, G H)
                else:
                    inp = x if order is None else x.gather(1, order[..., None].expand_as(x))
                    gates_x.append(self.enc_ih[(layer - 1) * self.directions + d](inp))
            outs = self._run(torch.stack(gates_x), self.enc_hh_w[layer], self.enc_hh_b[layer])  # (D, B, S, H)
            finals = [out.gather(1, last.expand(-1, 1, out.shape[-1])).squeeze(1) for out in outs]  # (B, H) each
            x = torch.cat(  # (B, S, M), in reading order
                [
                    out if order is None else out.gather(1, order[..., None].expand_as(out))
                    for out, order in zip(outs, orders)
                ],
                -1,
            )
        states = x.masked_fill(padding[..., None], 0.0)
        context = torch.cat(finals, -1)  # (B, M): the top layer's final states, forward first
        keys = states if self.keys is None else self.keys(states)  # (B, S, M)
        keys = keys * self.key_scale if self.key_scale != 1.0 else keys
        return Memory(states, padding, context, keys)

    def _run(self, gates_x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Every direction of one layer at once over ``gates_x`` (D, B, S, G H), from a zero state,
        with the recurrent ``weight`` (D, H, G H) and ``bias`` (D, 1, G H) -> (D, B, S, H)."""
        d, b, s, _ = gates_x.shape
        h = gates_x.new_zeros(d, b, self.config.hidden_dim)
        c = torch.zeros_like(h) if self.lstm else None
        outs = []
        for t in range(s):
            h, c = _cell(gates_x[:, :, t], torch.baddbmm(bias, h, weight), h, c)
            outs.append(h)
        return torch.stack(outs, 2)

    def start(self, memory: Memory) -> RNNState:
        """The decoder's initial state, as :meth:`RNNSeq2Seq.start`."""
        b, m = memory.context.shape
        h0 = torch.tanh(self.bridge(memory.context)).unsqueeze(1).expand(b, self.config.layers, m).contiguous()
        c0 = torch.zeros_like(h0) if self.lstm else None
        feed = memory.context.new_zeros(b, m) if self.feed is not None else None
        return RNNState(h0, c0, feed)

    @torch.no_grad()
    def step(self, memory: Memory, state: RNNState, token: Tensor, t: int, need_weights: bool = True):
        """One decoder step -> (logits (B, V), next state, weights (B, S), None), as :meth:`RNNSeq2Seq.step`."""
        gates_x = self.dec_table[token]  # (B, G M)
        if self.feed is not None:
            gates_x = gates_x + self.feed(state.feed)
        hs, cs, x = [], [], None
        for layer in range(self.config.layers):
            if layer > 0:
                gates_x = self.dec_ih[layer - 1](x)
            h = state.h[:, layer]
            x, c = _cell(gates_x, self.dec_hh[layer](h), h, None if state.c is None else state.c[:, layer])
            hs.append(x)
            cs.append(c)
        scores = (memory.keys * x[:, None]).sum(
            -1
        )  # (B, S): one dot product a letter (bmm's (S, M) x (M, 1) is slower)
        weights = scores.masked_fill(memory.padding, float("-inf")).softmax(-1)
        context = torch.bmm(weights[:, None], memory.states).squeeze(1)  # (B, M)
        o = torch.tanh(self.combine(torch.cat([context, x], -1)))
        new = RNNState(
            torch.stack(hs, 1), None if state.c is None else torch.stack(cs, 1), None if state.feed is None else o
        )
        return self.out(o), new, weights, None
