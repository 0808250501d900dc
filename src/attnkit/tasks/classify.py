"""Text classification on WordNet: the three tasks the trainer runs, their metrics, and the
inference wrapper behind ``attnkit eval`` and ``attnkit explain``.

Tasks (:data:`TASKS`) and the models that read their input (:data:`attnkit.models.CLASSIFIERS`):

- ``gloss``: a synset's definition -> its supersense (45 classes). Models ``rnn``, ``cnn``,
  ``transformer``.
- ``document``: the definition and every example, sentence by sentence -> the supersense. Model
  ``han``; ``rnn``, ``cnn`` and ``transformer`` read the sentences joined into one text (the
  baseline the hierarchy is compared with).
- ``pair``: (definition, example) -> match (2 classes: ``other``, ``match``). Models ``bcnn``,
  ``abcnn1``, ``abcnn2``, ``abcnn3``.

Text becomes ids by :func:`attnkit.data.wordnet.tokenize`; each sentence keeps its first
:data:`MAX_WORDS` words, a document its first :data:`MAX_SENTENCES` sentences (joined into one
text for a text model), and no sequence is longer than the model's ``max_len`` where it has one; a
sentence without a word is dropped. A split's examples are ordered by crc32 of their synset id (a
fixed shuffle), so that the first N (``limit``) are a sample of every supersense rather than the
first lexicographer files. The word vocabulary is the
training examples' words seen at least ``min_count`` times, after ``<unk>``, which stands for the
others. With ``vectors="minilm"`` the embedding table starts from pretrained word vectors
(:mod:`attnkit.data.vectors`) fitted to the model's embedding width, and ``freeze_vectors`` keeps
it fixed; the pair task needs them (without, every pair model stays at chance).

Metrics (:func:`score`), in %: ``accuracy`` for every task (what early stopping follows); for
``pair`` also ``f1`` of the match class and ``map``: the mean, over definitions with a positive and a
negative example, of the average precision of their examples ranked by P(match).
"""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import wordnet
from ..data.vectors import check_source, word_vectors
from ..data.vocab import PAD, SPECIALS, UNK, Vocab
from ..errors import AttentionError
from ..models import CLASSIFIERS, Classified
from ..train import checkpoint, config_from_dict
from ..train.batching import token_batches
from ..train.precision import autocast

__all__ = [
    "DEFAULT_MODEL",
    "MAX_SENTENCES",
    "MAX_WORDS",
    "TASKS",
    "Classifier",
    "ClassifyDoc",
    "ClassifyTask",
    "Explanation",
    "build_model",
    "score",
]

MAX_WORDS = 64  # words kept per sentence (the longest definition has 82; 99% have <= 31)
MAX_SENTENCES = 8  # sentences kept per document (the longest has 14; 99% have <= 6)
# task -> the kinds of model input that can read it ("text" models read a document as one text)
TASKS: dict[str, tuple[str, ...]] = {"gloss": ("text",), "document": ("document", "text"), "pair": ("pair",)}
DEFAULT_MODEL = {"gloss": "rnn", "document": "han", "pair": "abcnn1"}
PAIR_LABELS = ("other", "match")


def _check_names(task: str, model: str) -> None:
    if task not in TASKS:
        raise AttentionError(f"task={task!r} is unknown; expected one of {list(TASKS)}")
    if model not in CLASSIFIERS:
        raise AttentionError(f"model={model!r} is unknown; expected one of {list(CLASSIFIERS)}")
    if CLASSIFIERS[model].inputs not in TASKS[task]:
        fits = [m for m, spec in CLASSIFIERS.items() if spec.inputs in TASKS[task]]
        raise AttentionError(f"model={model!r} does not read the {task} task's input; use one of {fits}")


def _config(model: str, fields: dict, vocab: int, classes: int, what: str | None = None):
    spec = CLASSIFIERS[model]
    fixed = sorted(set(fields) & set(spec.fixed))
    if fixed:
        raise AttentionError(f"{fixed[0]} is fixed by model={model!r}; drop it")
    return config_from_dict(
        spec.config, {**fields, **spec.fixed, "vocab": vocab, "classes": classes}, what or f"{model} config"
    )


def build_model(model: str, fields: dict, vocab: int, classes: int, *, what: str | None = None) -> nn.Module:
    """The classifier named ``model`` with config ``fields`` (vocab and class counts aside);
    ``what`` names the config in error messages (default ``"MODEL config"``)."""
    if model not in CLASSIFIERS:
        raise AttentionError(f"model={model!r} is unknown; expected one of {list(CLASSIFIERS)}")
    return CLASSIFIERS[model].model(_config(model, fields, vocab, classes, what))


def load_vectors(embed: nn.Embedding, words: Vocab, source: str, *, freeze: bool = False) -> None:
    """Set the rows of ``embed`` for the words of ``words`` to pretrained vectors
    (:func:`attnkit.data.vectors.word_vectors`); ``<unk>`` gets their mean (zero), the other
    specials keep their rows. ``freeze`` keeps the whole table fixed in training."""
    first = len(SPECIALS) + 1  # the words after <pad>, <s>, </s> and <unk>
    with torch.no_grad():
        embed.weight[first:] = word_vectors(words.symbols[first:], embed.embedding_dim, source)
        embed.weight[words.index[UNK]] = 0.0
    embed.weight.requires_grad_(not freeze)


def labels_of(task: str) -> tuple[str, ...]:
    return PAIR_LABELS if task == "pair" else wordnet.LEXNAMES


# -- examples: raw records -> (input, label) ------------------------------------------------------


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


@torch.no_grad()
def predict(model: nn.Module, kind: str, xs: list, batch_size: int = 256, progress=None) -> Tensor:
    """(N, C) class probabilities of encoded examples ``xs``, in their order; ``progress(done,
    total)`` is called before the first batch and after each one."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(xs)), key=lambda i: _length(xs[i], kind))
    probs = [None] * len(xs)
    if progress is not None:
        progress(0, len(xs))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out = model(*(x.to(device) for x in collate(kind, [xs[i] for i in idx])))
        for i, p in zip(idx, out.logits.softmax(-1)):
            probs[i] = p
        if progress is not None:
            progress(start + len(idx), len(xs))
    return torch.stack(probs).float().cpu() if probs else torch.zeros(0, 0)


def _average_precision(scores: list[float], relevant: list[bool]) -> float:
    ranked = [r for _, r in sorted(zip(scores, relevant), key=lambda x: -x[0])]
    hits, total = 0, 0.0
    for k, r in enumerate(ranked, 1):
        if r:
            hits += 1
            total += hits / k
    return total / hits


def score(probs: Tensor, labels: list[int], groups: list[str] | None = None) -> dict[str, float]:
    """Accuracy (%) of ``probs`` (N, C) against ``labels``; with ``groups`` (pairs: the synset of each
    definition), also F1 (%) of class 1 (match) and MAP (%) over groups with both classes.

    >>> score(torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]), [1, 0, 0], ["a", "a", "a"])
    {'accuracy': 66.66666666666667, 'f1': 66.66666666666667, 'map': 100.0}
    """
    if len(probs) != len(labels) or not labels:
        raise AttentionError(f"score needs one label per row of probs, got {len(probs)} rows and {len(labels)} labels")
    gold = torch.tensor(labels)
    guess = probs.argmax(-1)
    out = {"accuracy": 100.0 * int(guess.eq(gold).sum()) / len(labels)}
    if groups is None:
        return out
    tp = int((guess.eq(1) & gold.eq(1)).sum())
    predicted, actual = int(guess.eq(1).sum()), int(gold.eq(1).sum())
    out["f1"] = 200.0 * tp / (predicted + actual) if predicted + actual else 0.0
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    aps = [
        _average_precision([probs[i, 1].item() for i in idx], [labels[i] == 1 for i in idx])
        for idx in by_group.values()
        if len({labels[i] for i in idx}) == 2
    ]
    out["map"] = 100.0 * sum(aps) / len(aps) if aps else 0.0
    return out


# -- the task the trainer runs ----------------------------------------------------------------------


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


# -- inference: attnkit eval and attnkit explain -----------------------------------------------------


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


@dataclass
class ClassifyDoc:
    """The ``task`` document of a classifier checkpoint (:meth:`ClassifyTask.describe`): checked
    field by field on load. Checkpoints from before pretrained vectors lack the last three fields."""

    name: str  # "classify"
    task: str  # a key of TASKS
    model: str  # a key of CLASSIFIERS
    model_config: dict  # fields of the model's config, vocab and classes aside
    limit: int | None
    valid_limit: int | None
    words: list[str]  # the word vocabulary after the specials
    labels: list[str]  # the class names
    min_count: int = 2
    vectors: str = "none"
    freeze_vectors: bool = False

    def __post_init__(self):
        _check_names(self.task, self.model)
        if not self.labels:
            raise AttentionError("labels is empty")

    @classmethod
    def read(cls, meta: dict, path) -> ClassifyDoc:
        """The checked task document of the checkpoint metadata ``meta`` read from ``path``."""
        return checkpoint.read_task(cls, meta, path, "classify", "a classifier")


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
