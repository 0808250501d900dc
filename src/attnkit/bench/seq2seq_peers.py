"""The peers of the training benchmark: the G2P models written in plain PyTorch, and OpenNMT-py's.

Shape legend: B batch, S source positions, T target positions, E embedding dim, M memory and
decoder dim, D model dim, V target vocabulary.

:class:`PlainRNN` is what a user writes without attnkit: an ``nn.LSTM`` encoder, an
``nn.LSTMCell`` decoder and the attention by hand (masked softmax of a score, one ``bmm``), the
same maths, sizes and parameter names as :class:`attnkit.models.RNNSeq2Seq` for ``none``,
``bahdanau``, ``luong-dot``, ``luong-general`` and ``luong-concat`` (one layer, LSTM), so that
``load_state_dict`` of an attnkit model's weights gives the same loss (:func:`rnn_state_from_attnkit`).
:class:`PlainTransformer` is ``nn.Transformer`` (pre-LN, final norms) with the same embeddings,
sinusoidal positions and output layer as :class:`attnkit.models.TransformerSeq2Seq`; it has no
key/value cache, so its ``step`` re-runs the decoder over the prefix, as ``nn.Transformer`` users do.
Both offer ``encode`` / ``start`` / ``step``, so attnkit's ``greedy`` and ``beam_search`` decode them:
the decoding figures compare the models' steps under one search.

:func:`opennmt_model` builds OpenNMT-py's ``NMTModel`` (``RNNEncoder`` + ``InputFeedRNNDecoder``
with ``GlobalAttention``, or its Transformer) from its own option parser, as ``onmt_train`` does.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import RNNConfig, TransformerConfig
from ..models.base import Decoded, Memory, source_padding
from ..models.transformer import sinusoids

__all__ = ["OPENNMT", "PLAIN_RNN", "PlainRNN", "PlainTransformer", "opennmt_model", "rnn_state_from_attnkit"]

PLAIN_RNN = ("none", "bahdanau", "luong-dot", "luong-general", "luong-concat")  # attentions PlainRNN writes out
# attnkit kind -> OpenNMT-py's nearest model: (its global_attention, what differs); None: it has none
OPENNMT: dict[str, tuple[str, str] | None] = {
    "none": None,  # its RNN decoders have no fixed-context (Cho et al.) mode
    "bahdanau": ("mlp", "additive score, but attends after the RNN step with input feeding (Luong's order)"),
    "luong-dot": ("dot", ""),
    "luong-general": ("general", ""),
    "luong-general-nofeed": ("general", "-input_feed 0: its StdRNNDecoder, one RNN call then one batched attention"),
    "luong-concat": None,  # its "mlp" is the additive score, not w^T[q; k]
    "local-m": None,
    "local-p": None,
    "hard": None,
    "transformer": ("transformer", "pre-LN as attnkit's; LayerNorm eps 1e-6, its own positional encoding"),
}


class PlainState(NamedTuple):
    h: Tensor  # (B, M)
    c: Tensor  # (B, M)
    feed: Tensor | None  # (B, M) Luong's previous attentional state


class PlainRNN(nn.Module):
    """LSTM encoder-decoder with hand-written attention; see the module's docstring."""

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        if cfg.attention not in PLAIN_RNN or cfg.cell != "lstm" or cfg.layers != 1 or not cfg.bidirectional:
            raise ValueError(f"PlainRNN writes out one-layer biLSTM models with attention in {PLAIN_RNN}")
        self.config = cfg
        m = 2 * cfg.hidden_dim
        self.src_embed = nn.Embedding(cfg.src_vocab, cfg.embed_dim, padding_idx=0)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab, cfg.embed_dim, padding_idx=0)
        self.encoder = nn.LSTM(cfg.embed_dim, cfg.hidden_dim, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(m, m)
        self.decoder = nn.LSTMCell(cfg.embed_dim + m, m)
        self.attention = nn.Module()
        params = {
            "none": {},
            "luong-dot": {},
            "luong-general": {"W": (m, m)},
            "luong-concat": {"w": (2 * m,)},
            "bahdanau": {"W_k": (m, m), "W_q": (m, m), "v": (m,)},
        }[cfg.attention]
        self.attention.score_params = nn.ParameterDict({k: nn.Parameter(torch.empty(s)) for k, s in params.items()})
        for p in self.attention.score_params.values():
            nn.init.normal_(p, std=m**-0.5)
        self.combine = nn.Linear(2 * m, m)
        self.out = nn.Linear(m, cfg.tgt_vocab)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, src: Tensor) -> Memory:
        padding = source_padding(src)  # (B, S)
        lengths = (~padding).sum(-1).clamp(min=1).cpu()
        x = self.drop(self.src_embed(src))  # (B, S, E)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h, _) = self.encoder(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # (B, S, M)
        context = torch.cat([h[0], h[1]], -1)  # (B, M): forward's last, backward's first
        p = self.attention.score_params
        keys = states @ p["W_k"] if "W_k" in p else None  # (B, S, M), once per source
        return Memory(states, padding, context, keys)

    def start(self, memory: Memory) -> PlainState:
        h = torch.tanh(self.bridge(memory.context))  # (B, M)
        feed = torch.zeros_like(h) if self.config.attention.startswith("luong") else None
        return PlainState(h, torch.zeros_like(h), feed)

    def _attend(self, q: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """``q`` (B, M) over memory.states (B, S, M) -> context (B, M), weights (B, S)."""
        p, kind, h = self.attention.score_params, self.config.attention, memory.states
        if kind == "bahdanau":
            scores = torch.tanh(memory.keys + (q @ p["W_q"])[:, None]) @ p["v"]  # (B, S, M) . (M,) -> (B, S)
        elif kind == "luong-concat":
            m = q.shape[-1]
            scores = (q @ p["w"][:m])[:, None] + h @ p["w"][m:]  # (B, 1) + (B, S)
        else:
            q = q @ p["W"] if kind == "luong-general" else q  # (B, M)
            scores = torch.bmm(h, q[:, :, None]).squeeze(-1)  # (B, S, M) x (B, M, 1) -> (B, S)
        weights = scores.masked_fill(memory.padding, float("-inf")).softmax(-1)  # (B, S)
        return torch.bmm(weights[:, None], h).squeeze(1), weights  # (B, 1, S) x (B, S, M) -> (B, M)

    def step(self, memory: Memory, state: PlainState, token: Tensor, t: int, need_weights: bool = True):
        e = self.drop(self.tgt_embed(token))  # (B, E)
        kind, weights = self.config.attention, None
        if kind == "none":
            c = memory.context
            h, cell = self.decoder(torch.cat([e, c], -1), (state.h, state.c))
            o = torch.tanh(self.combine(torch.cat([h, c], -1)))
        elif kind == "bahdanau":
            c, weights = self._attend(state.h, memory)
            h, cell = self.decoder(torch.cat([e, c], -1), (state.h, state.c))
            o = torch.tanh(self.combine(torch.cat([h, c], -1)))
        else:
            h, cell = self.decoder(torch.cat([e, state.feed], -1), (state.h, state.c))
            c, weights = self._attend(h, memory)
            o = torch.tanh(self.combine(torch.cat([c, h], -1)))  # (B, M)
        return self.out(self.drop(o)), PlainState(h, cell, o if state.feed is not None else None), weights, None

    def forward(self, src: Tensor, tgt_in: Tensor) -> Decoded:
        memory = self.encode(src)
        state = self.start(memory)
        logits = []
        for t in range(tgt_in.shape[1]):
            lg, state, _, _ = self.step(memory, state, tgt_in[:, t], t, False)
            logits.append(lg)
        return Decoded(torch.stack(logits, 1))  # (B, T, V)


def rnn_state_from_attnkit(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An attnkit ``RNNSeq2Seq`` state dict (one layer, LSTM) as :class:`PlainRNN`'s: the decoder's
    ``nn.LSTM`` weights ``*_l0`` are the ``nn.LSTMCell``'s."""
    out = {}
    for k, v in state.items():
        if k.startswith("decoder.") and k.endswith("_l0"):
            k = k[: -len("_l0")]
        out[k] = v
    return out


class PlainTransformer(nn.Module):
    """``nn.Transformer`` with attnkit's G2P embeddings, positions and output layer."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.src_embed = nn.Embedding(cfg.src_vocab, d, padding_idx=0)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab, d, padding_idx=0)
        self.register_buffer("positions", sinusoids(cfg.max_len, d), persistent=False)
        with warnings.catch_warnings():  # the nested-tensor fast path is off under pre-LN, and it says so
            warnings.simplefilter("ignore", UserWarning)
            self.transformer = nn.Transformer(
                d,
                cfg.heads,
                cfg.encoder_layers,
                cfg.decoder_layers,
                cfg.ff_dim,
                cfg.dropout,
                batch_first=True,
                norm_first=True,
            )
        self.out = nn.Linear(d, cfg.tgt_vocab)
        self.drop = nn.Dropout(cfg.dropout)

    def _embed(self, table: nn.Embedding, ids: Tensor) -> Tensor:
        return self.drop(table(ids) * math.sqrt(self.config.d_model) + self.positions[: ids.shape[1]])  # (B, T, D)

    def encode(self, src: Tensor) -> Memory:
        padding = source_padding(src)
        states = self.transformer.encoder(self._embed(self.src_embed, src), src_key_padding_mask=padding)
        return Memory(states, padding)  # states (B, S, D), after the encoder's final norm

    def decode(self, memory: Memory, tgt_in: Tensor) -> Tensor:
        t = tgt_in.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=tgt_in.device)  # (T, T), -inf above
        y = self.transformer.decoder(
            self._embed(self.tgt_embed, tgt_in),
            memory.states,
            tgt_mask=causal,
            tgt_is_causal=True,
            memory_key_padding_mask=memory.padding,
        )
        return self.out(y)  # (B, T, V)

    def start(self, memory: Memory) -> Tensor:
        return memory.states.new_zeros(memory.states.shape[0], 0, dtype=torch.long)  # the prefix, (B, 0)

    def step(self, memory: Memory, prefix: Tensor, token: Tensor, t: int, need_weights: bool = True):
        prefix = torch.cat([prefix, token[:, None]], 1)  # (B, t + 1)
        return self.decode(memory, prefix)[:, -1], prefix, None, None

    def forward(self, src: Tensor, tgt_in: Tensor) -> Decoded:
        return Decoded(self.decode(self.encode(src), tgt_in))


class _OnmtVocab:
    """The two things OpenNMT-py's builder reads from a vocabulary: its size and the pad index (0,
    as in attnkit's vocabularies)."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, token: str) -> int:
        from onmt.constants import DefaultTokens

        return {DefaultTokens.PAD: 0, DefaultTokens.BOS: 1, DefaultTokens.EOS: 2}[token]


class OnmtG2P(nn.Module):
    """OpenNMT-py's ``NMTModel`` with its ``generator`` (a ``Linear`` to the vocabulary, as
    ``build_base_model`` makes it), called the way its trainer calls them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, src: Tensor, tgt: Tensor) -> Decoded:
        """``src`` (B, S), ``tgt`` (B, T + 1) with BOS and EOS -> logits (B, T, V) for tgt[:, 1:]."""
        src_len = src.ne(0).sum(-1)  # (B,)
        dec_out, _ = self.model(src[:, :, None], tgt[:, :, None], src_len)  # (B, T, M); it drops tgt's last
        return Decoded(self.model.generator(dec_out))


def opennmt_model(kind: str, config: RNNConfig | TransformerConfig) -> OnmtG2P:
    """OpenNMT-py's model nearest to attnkit's ``kind`` at ``config``'s sizes (:data:`OPENNMT`),
    built and initialized as ``onmt_train`` builds a new one (``build_model``): uniform(-0.1, 0.1)
    for the RNN, Glorot weights and zero biases for the Transformer (its documented setting)."""
    with warnings.catch_warnings():  # its modules use torch.cuda.amp decorators deprecated in new torch
        warnings.simplefilter("ignore", FutureWarning)
        import onmt.opts
        from onmt.model_builder import build_base_model
        from onmt.utils.parse import ArgumentParser

    if OPENNMT.get(kind) is None:
        raise ValueError(f"OpenNMT-py has no model like attnkit's {kind!r}")
    if kind == "transformer":
        args = [
            "-encoder_type", "transformer", "-decoder_type", "transformer",
            "-hidden_size", str(config.d_model), "-heads", str(config.heads),
            "-transformer_ff", str(config.ff_dim), "-enc_layers", str(config.encoder_layers),
            "-dec_layers", str(config.decoder_layers), "-word_vec_size", str(config.d_model),
            "-position_encoding", "-dropout", str(config.dropout), "-attention_dropout", str(config.dropout),
            "-add_qkvbias", "-add_ffnbias", "-param_init", "0", "-param_init_glorot",
        ]  # fmt: skip
    else:
        hidden = 2 * config.hidden_dim
        args = [
            "-encoder_type", "brnn", "-decoder_type", "rnn", "-rnn_type", "LSTM",
            "-global_attention", OPENNMT[kind][0], "-input_feed", "0" if kind.endswith("-nofeed") else "1", "-layers", str(config.layers),
            "-enc_hid_size", str(hidden), "-dec_hid_size", str(hidden),
            "-word_vec_size", str(config.embed_dim), "-dropout", str(config.dropout), "-bridge",
        ]  # fmt: skip
    parser = ArgumentParser()
    onmt.opts.model_opts(parser)
    onmt.opts._add_train_general_opts(parser)
    onmt.opts.distributed_opts(parser)
    opt = parser.parse_known_args(args)[0]
    ArgumentParser.update_model_opts(opt)
    ArgumentParser.validate_model_opts(opt)
    vocabs = {"src": _OnmtVocab(config.src_vocab), "tgt": _OnmtVocab(config.tgt_vocab)}
    with warnings.catch_warnings():  # nn.LSTM warns that dropout does nothing with one layer
        warnings.simplefilter("ignore", UserWarning)
        model = build_base_model(opt, vocabs)
    with torch.no_grad():  # onmt.model_builder.build_model's initialization of a new model
        for name, p in model.named_parameters():
            if opt.param_init != 0.0:
                p.uniform_(-opt.param_init, opt.param_init)
            elif name.endswith("weight") and p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
    return OnmtG2P(model)


def plain_model(kind: str, config: RNNConfig | TransformerConfig) -> nn.Module:
    """The plain PyTorch model of ``kind`` (ValueError where none is written)."""
    return PlainTransformer(config) if kind == "transformer" else PlainRNN(config)


def cross_entropy(logits: Tensor, gold: Tensor, label_smoothing: float) -> Tensor:
    """Label-smoothed cross-entropy per real target token: ``logits`` (B, T, V), ``gold`` (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=0,
                           label_smoothing=label_smoothing)  # fmt: skip
