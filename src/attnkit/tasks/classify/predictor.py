"""Inference behind ``attnkit eval`` and ``attnkit explain``: :class:`Classifier`, a trained
classifier rebuilt from its checkpoint, and :class:`Explanation`, one prediction with its attention."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ...data import wordnet
from ...data.vocab import SPECIALS, UNK, Vocab
from ...errors import AttentionError
from ...models import CLASSIFIERS
from ...train import checkpoint
from ...train.precision import autocast
from .build import _config
from .data import Encoder, _label, _records, _texts, collate
from .doc import ClassifyDoc
from .metrics import predict, score

__all__ = ["Classifier", "Explanation"]


class Explanation(NamedTuple):
    """The prediction for one input and the attention behind it (None where the model has none).

    ``tokens``: the words the model read (unknown ones as written): a list for a text model; one
    list per sentence for ``han``; two lists (first, second) for a pair model. ``words`` (T,) or
    (S, T), ``sentences`` (S,), ``matrix`` (T0, T1), ``conv_matrix`` (T0 + w - 1, T1 + w - 1): the
    fields of :class:`attnkit.models.Classified` for this input, cut to its real length.
    """

    label: str
    probability: float
    tokens: list
    words: Tensor | None = None
    sentences: Tensor | None = None
    matrix: Tensor | None = None
    conv_matrix: Tensor | None = None


_SENTENCE_END = re.compile(r"[.;!?\n]+")


class Classifier:
    """A trained classifier ready for inference, rebuilt from its checkpoint alone.

    >>> clf = Classifier.load("runs/classify-gloss-rnn")  # doctest: +SKIP
    >>> clf.explain("a small domesticated feline").label  # doctest: +SKIP
    'noun.animal'
    """

    def __init__(self, model: nn.Module, task_doc: dict, path: str):
        self.model, self.doc, self.path = model.eval(), task_doc, path
        self.task, self.name = task_doc["task"], task_doc["model"]
        self.labels = tuple(task_doc["labels"])
        self.words = Vocab(task_doc["words"], name="words", unk=UNK)
        self.kind = CLASSIFIERS[self.name].inputs
        self.encoder = Encoder(self.words, self.kind, getattr(model.config, "max_len", None))

    @classmethod
    def load(cls, path: str | Path, *, trust_unchecked: bool = False) -> Classifier:
        """A checkpoint written by ``attnkit train classify`` (a ``.safetensors`` file or a run
        folder). A file without a checksum is refused unless ``trust_unchecked``
        (:func:`~attnkit.train.checkpoint.load`). The model its metadata describes is checked, sizes
        first, and matched against the file's tensors before it is built."""
        path = Path(path)
        if path.is_dir():
            path = path / "best.safetensors"
        tensors, meta = checkpoint.load(path, trust_unchecked=trust_unchecked)
        doc = ClassifyDoc.read(meta, path)
        try:
            vocab, classes = len(SPECIALS) + len(doc.words), len(doc.labels)
            config = _config(doc.model, doc.model_config, vocab, classes, "task.model_config")
        except AttentionError as err:
            raise checkpoint.CheckpointError(f"checkpoint {str(path)!r}: {err}") from None
        model = checkpoint.build_loaded(lambda: CLASSIFIERS[doc.model].model(config), tensors, path)
        try:
            return cls(model, meta["task"], str(path))
        except AttentionError as err:
            raise checkpoint.CheckpointError(f"checkpoint {str(path)!r}: {err}") from None

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def _texts(self, texts: list[str]) -> list[str]:
        """The record texts of the user's input: one text; its sentences (document task); two texts (pair)."""
        if any(not t or not t.strip() for t in texts):
            raise AttentionError("text is empty; give at least one word")
        for t in texts:
            if not wordnet.tokenize(t):
                raise AttentionError(f"text {t!r} has no words (letters or digits)")
        wanted = 2 if self.kind == "pair" else 1
        if len(texts) != wanted:
            what = "two texts, the definition and the example" if wanted == 2 else "one text"
            raise AttentionError(f"model {self.name!r} ({self.task} task) needs {what}, got {len(texts)}")
        if self.task == "document":
            return [s for s in _SENTENCE_END.split(texts[0]) if wordnet.tokenize(s)]
        return list(texts)

    def explain(self, *texts: str) -> Explanation:
        """The predicted label of one input, and the attention weights behind it.

        The input is one text for the gloss task; for the document task one text split into
        sentences at ``.``, ``;``, ``!``, ``?`` and line ends; for the pair task two texts."""
        tokens = self.encoder.tokens(self._texts(list(texts)))
        with torch.no_grad():
            out = self.model(*collate(self.kind, [self.encoder.ids(tokens)]))
        probs = out.logits.softmax(-1)[0]
        k = int(probs.argmax())
        attention = [None if t is None else t[0] for t in out[1:]]  # words, sentences, matrix, conv_matrix
        return Explanation(self.labels[k], probs[k].item(), tokens, *attention)

    def evaluate(
        self, split: str = "test", *, limit: int | None = None, progress=None, precision: str = "fp32"
    ) -> dict[str, float]:
        """The task's metrics on a WordNet split, with the examples counted and classified per
        second; ``progress`` as in :func:`predict`; ``precision`` fp32 or bf16
        (:mod:`attnkit.train.precision`)."""
        records = _records(self.task, split)[:limit]
        xs = [self.encoder.input(_texts(r)) for r in records]
        started = time.perf_counter()
        with autocast(precision, next(self.model.parameters()).device):
            probs = predict(self.model, self.kind, xs, progress=progress)
        seconds = time.perf_counter() - started
        groups = [r.synset for r in records] if self.task == "pair" else None
        metrics = score(probs, [_label(r, self.labels) for r in records], groups)
        return {**metrics, "examples": len(records), "examples_per_s": len(records) / seconds}
