"""The examples: the tasks' names and limits, WordNet records in a fixed order, text -> ids
(:class:`Encoder`), each record's texts and label, and a batch of encoded examples -> the model's
inputs (:func:`collate`)."""

from __future__ import annotations

import zlib

import torch
from torch import Tensor

from ...data import wordnet
from ...data.vocab import PAD, Vocab

__all__ = ["DEFAULT_MODEL", "MAX_SENTENCES", "MAX_WORDS", "PAIR_LABELS", "TASKS", "Encoder", "collate", "labels_of"]

MAX_WORDS = 64  # words kept per sentence (the longest definition has 82; 99% have <= 31)
MAX_SENTENCES = 8  # sentences kept per document (the longest has 14; 99% have <= 6)
# task -> the kinds of model input that can read it ("text" models read a document as one text)
TASKS: dict[str, tuple[str, ...]] = {"gloss": ("text",), "document": ("document", "text"), "pair": ("pair",)}
DEFAULT_MODEL = {"gloss": "rnn", "document": "han", "pair": "abcnn1"}
PAIR_LABELS = ("other", "match")


def labels_of(task: str) -> tuple[str, ...]:
    return PAIR_LABELS if task == "pair" else wordnet.LEXNAMES


class Encoder:
    """Text -> ids for one model input ``kind``: :meth:`tokens` gives the words the model reads
    (one list; one per sentence; two lists), :meth:`ids` their ids. Each sentence keeps its first
    :data:`MAX_WORDS` words, and every sequence the model reads at most ``max_len`` (the model's
    positions, when it has a limit)."""

    def __init__(self, words: Vocab, kind: str, max_len: int | None = None):
        self.words, self.kind, self.max_len = words, kind, max_len

    def tokens(self, texts: list[str]) -> list:
        sentences = [t[:MAX_WORDS][: self.max_len] for t in map(wordnet.tokenize, texts) if t]
        if self.kind == "pair":
            return sentences
        sentences = sentences[:MAX_SENTENCES]
        if self.kind == "document":
            return sentences
        return [w for s in sentences for w in s][: self.max_len]  # a document's sentences joined

    def ids(self, tokens: list):
        if self.kind == "text":
            return self.words.encode(tokens)
        encoded = [self.words.encode(s) for s in tokens]
        return tuple(encoded) if self.kind == "pair" else encoded

    def input(self, texts: list[str]):
        return self.ids(self.tokens(texts))


def _texts(record) -> list[str]:
    if isinstance(record, wordnet.Gloss):
        return [record.text]
    if isinstance(record, wordnet.Document):
        return list(record.sentences)
    return [record.first, record.second]


def _label(record, labels: tuple[str, ...]) -> int:
    return int(record.match) if isinstance(record, wordnet.Pair) else labels.index(record.label)


def _records(task: str, split: str) -> list:
    """The split's records in a fixed shuffled order: by crc32 of the synset id (a pair's two records
    stay together), so that the first N are a sample of every supersense, not the first files'."""
    records = {"gloss": wordnet.glosses, "document": wordnet.documents, "pair": wordnet.pairs}[task](split)
    return sorted(records, key=lambda r: zlib.crc32(r.synset.encode()))


def _length(x, kind: str) -> int:
    return sum(map(len, x)) if kind in ("document", "pair") else len(x)


def collate(kind: str, xs: list) -> tuple[Tensor, ...]:
    """The model's inputs for encoded examples ``xs``: (B, T); (B, S, T); or (B, T0), (B, T1)."""
    pad = Vocab([]).pad  # padding needs no symbols
    if kind == "text":
        return (pad(xs),)
    if kind == "pair":
        return pad([a for a, _ in xs]), pad([b for _, b in xs])
    s = max(len(doc) for doc in xs)
    t = max(len(sent) for doc in xs for sent in doc)
    out = torch.full((len(xs), s, t), PAD, dtype=torch.long)
    for i, doc in enumerate(xs):
        for j, sent in enumerate(doc):
            out[i, j, : len(sent)] = torch.tensor(sent, dtype=torch.long)
    return (out,)
