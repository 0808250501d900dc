"""The task the trainer runs: :class:`ClassifyTask` (examples, vocabulary, batches, loss and
validation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import wordnet
from ...data.vectors import check_source
from ...data.vocab import PAD, SPECIALS, Vocab
from ...errors import AttentionError
from ...models import CLASSIFIERS, Classified
from ...train.batching import token_batches
from .build import _check_names, _config, load_vectors
from .data import Encoder, _label, _length, _records, _texts, collate, labels_of
from .metrics import predict, score

__all__ = ["ClassifyTask"]


_PADDED = {  # an input kind -> the padded size of a batch of ``rows`` whose longest dims are ``longest``
    "text": lambda rows, longest: rows * longest[0],
    "pair": lambda rows, longest: rows * (longest[0] + longest[1]),
    "document": lambda rows, longest: rows * longest[0] * longest[1],
}


@dataclass
class ClassifyTask:
    """A WordNet task (``gloss``, ``document`` or ``pair``) and a model from ``CLASSIFIERS`` with its
    config fields; the vocabulary comes from the (first ``limit``) training examples."""

    task: str = "gloss"
    model: str = "rnn"
    model_config: dict | None = None  # fields of the model's config, vocab and classes aside
    limit: int | None = None  # train on the first N training examples only (quick runs, tests)
    valid_limit: int | None = None  # validate on the first N validation examples only
    min_count: int = 2  # a word needs this many occurrences in training to get its own id
    vectors: str = "none"  # none | minilm: the embedding table starts from pretrained word vectors
    freeze_vectors: bool = False  # keep the pretrained vectors fixed in training
    metric = "accuracy"  # early stopping and the best checkpoint follow validation accuracy
    higher_is_better = True

    def __post_init__(self):
        _check_names(self.task, self.model)
        for name in ("limit", "valid_limit", "min_count"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise AttentionError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.vectors != "none":
            check_source(self.vectors)
        if self.freeze_vectors and self.vectors == "none":
            raise AttentionError("freeze_vectors needs pretrained vectors; give vectors='minilm' too")
        self.model_config = dict(self.model_config or {})
        self.labels = labels_of(self.task)
        _config(self.model, self.model_config, len(SPECIALS) + 1, len(self.labels))  # bad fields fail before loading
        self.kind = CLASSIFIERS[self.model].inputs
        train = _records(self.task, "train")[: self.limit]
        valid = _records(self.task, "valid")[: self.valid_limit]
        self.words = Vocab.build(
            (wordnet.tokenize(t) for r in train for t in _texts(r)), min_count=self.min_count, name="words"
        )
        self.config = _config(self.model, self.model_config, len(self.words), len(self.labels))
        encoder = Encoder(self.words, self.kind, getattr(self.config, "max_len", None))
        self.train = [(encoder.input(_texts(r)), _label(r, self.labels)) for r in train]
        self.valid = [(encoder.input(_texts(r)), _label(r, self.labels)) for r in valid]
        self.valid_groups = [r.synset for r in valid] if self.task == "pair" else None

    def build(self) -> nn.Module:
        model = CLASSIFIERS[self.model].model(self.config)
        if self.vectors != "none":
            load_vectors(model.embed, self.words, self.vectors, freeze=self.freeze_vectors)
        return model

    def describe(self) -> dict:
        return {
            "name": "classify",
            "task": self.task,
            "model": self.model,
            "model_config": self.model_config,
            "limit": self.limit,
            "valid_limit": self.valid_limit,
            "min_count": self.min_count,
            "vectors": self.vectors,
            "freeze_vectors": self.freeze_vectors,
            "words": self.words.symbols[len(SPECIALS) :],
            "labels": list(self.labels),
        }

    def batches(self, epoch: int, generator: torch.Generator, batch_size: int, batch_tokens: int | None = None) -> list:
        """Shuffle, group similar lengths (sort within windows of 50 batches), shuffle the batches.
        With ``batch_tokens``: sort the shuffle by length and cut batches whose padded tokens (the
        size of the collated input: rows x words; rows x sentences x words for a document; rows x
        (first + second) for a pair) stay within it; then shuffle the batches."""
        perm = torch.randperm(len(self.train), generator=generator).tolist()
        groups = []
        if batch_tokens is not None:
            groups = token_batches(perm, self._dims, _PADDED[self.kind], batch_tokens)
        window = 50 * batch_size
        for start in range(0, len(perm) if batch_tokens is None else 0, window):
            chunk = sorted(perm[start : start + window], key=lambda i: _length(self.train[i][0], self.kind))
            groups += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
        order = torch.randperm(len(groups), generator=generator).tolist()
        return [
            (
                collate(self.kind, [self.train[i][0] for i in groups[g]]),
                torch.tensor([self.train[i][1] for i in groups[g]]),
            )
            for g in order
        ]

    def _dims(self, i: int) -> tuple[int, ...]:
        x = self.train[i][0]
        if self.kind == "text":
            return (len(x),)
        if self.kind == "pair":
            return (len(x[0]), len(x[1]))
        return (len(x), max(map(len, x)))  # (sentences, longest sentence)

    def weight(self, batch) -> int:
        """What :meth:`loss` averages over: the batch's examples."""
        return int(batch[1].shape[0])

    def loss(self, model: nn.Module, batch, config) -> tuple[Tensor, int]:
        """Label-smoothed cross-entropy per example; the count is the batch's words."""
        inputs, labels = batch
        out: Classified = model(*inputs)
        loss = F.cross_entropy(out.logits, labels, label_smoothing=config.label_smoothing)
        return loss, sum(int(x.ne(PAD).sum()) for x in inputs)

    def validate(self, model: nn.Module) -> dict[str, float]:
        probs = predict(model, self.kind, [x for x, _ in self.valid])
        return score(probs, [y for _, y in self.valid], self.valid_groups)
