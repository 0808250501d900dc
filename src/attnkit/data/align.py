"""Letter-to-phoneme alignment by expectation maximisation: an independent reference for what an
attention model's weights should show.

A word's spelling and pronunciation are cut into the same number of pieces, each a *unit*: one
letter with zero, one or two phonemes ("x" -> K S, the silent "e" -> nothing), or two letters with
one phoneme ("ph" -> F, "ck" -> K). The aligner learns a probability for every unit from the whole
lexicon by expectation maximisation over all cuts of every word (forward-backward on the
letters x phonemes lattice, as Jiampojamarn et al. 2007's many-to-many aligner does), then gives
each word its most probable cut (Viterbi).

It needs a lexicon of some size: on a handful of words, cuts into fewer, longer units ("at" -> T)
explain the data as well, and EM has no reason to prefer letter-by-letter ones.

>>> from attnkit.data import cmudict
>>> aligner = Aligner.fit((e.word, e.pronunciations[0]) for e in cmudict.load("train")[:600])
>>> aligner.align("cat", ("K", "AE1", "T"))
[('c', ('K',)), ('a', ('AE1',)), ('t', ('T',))]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..errors import AttentionError, check_int

__all__ = ["SHAPES", "Aligner", "letter_of_phoneme"]

SHAPES = ((1, 0), (1, 1), (1, 2), (2, 1))  # (letters, phonemes) of the units a cut may use

Unit = tuple[str, tuple[str, ...]]


def _units(word: str, phones: Sequence[str], i: int, j: int):
    """The units that end at letter i and phoneme j, with where they start."""
    for a, b in SHAPES:
        if i >= a and j >= b:
            yield i - a, j - b, (word[i - a : i], tuple(phones[j - b : j]))


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


class Aligner:
    """Unit log-probabilities learnt by :meth:`fit`; :meth:`align` cuts a word by them."""

    UNSEEN = 5.0  # an unseen unit scores this many nats below the least probable seen one

    def __init__(self, logp: dict[Unit, float]):
        if not logp:
            raise AttentionError("logp is empty; an Aligner needs at least one unit")
        self.logp = logp
        self.floor = min(logp.values()) - self.UNSEEN

    @classmethod
    def fit(cls, lexicon: Iterable[tuple[str, Sequence[str]]], iterations: int = 5) -> Aligner:
        """Learn unit probabilities from (spelling, phonemes) pairs: start uniform over the units
        seen in some cut, then ``iterations`` rounds of expected counts (forward-backward) and
        renormalisation. Pairs that no cut fits (more than two phonemes a letter) are skipped."""
        check_int("iterations", iterations)
        pairs = [(w, tuple(p)) for w, p in lexicon]
        if not pairs:
            raise AttentionError("lexicon is empty; give at least one (spelling, phonemes) pair")
        seen = {
            u for w, p in pairs for i in range(len(w) + 1) for j in range(len(p) + 1) for *_, u in _units(w, p, i, j)
        }
        logp = dict.fromkeys(seen, -math.log(len(seen)))
        for _ in range(iterations):
            counts: dict[Unit, float] = {}
            for w, p in pairs:
                cls._expect(logp, w, p, counts)
            total = sum(counts.values())
            if total == 0:
                raise AttentionError("no pair of the lexicon can be cut into units of SHAPES")
            logp = {u: math.log(c / total) for u, c in counts.items() if c > 0}
        return cls(logp)

    @staticmethod
    def _expect(logp: dict[Unit, float], word: str, phones: tuple[str, ...], counts: dict) -> None:
        """Add the posterior expected count of each unit in ``word``'s cuts to ``counts``."""
        n, m = len(word), len(phones)
        lp = lambda u: logp.get(u, -math.inf)
        fwd = [[-math.inf] * (m + 1) for _ in range(n + 1)]
        fwd[0][0] = 0.0
        for i in range(1, n + 1):
            for j in range(m + 1):
                terms = [fwd[a][b] + lp(u) for a, b, u in _units(word, phones, i, j)]
                fwd[i][j] = _logsumexp(terms) if terms else -math.inf
        z = fwd[n][m]
        if z == -math.inf:
            return  # no cut fits
        bwd = [[-math.inf] * (m + 1) for _ in range(n + 1)]
        bwd[n][m] = 0.0
        for i in range(n, 0, -1):
            for j in range(m, -1, -1):
                if bwd[i][j] == -math.inf:
                    continue
                for a, b, u in _units(word, phones, i, j):
                    step = bwd[i][j] + lp(u)
                    bwd[a][b] = _logsumexp([bwd[a][b], step])
                    post = fwd[a][b] + step - z
                    if post > -50:
                        counts[u] = counts.get(u, 0.0) + math.exp(post)

    def align(self, word: str, phones: Sequence[str]) -> list[Unit] | None:
        """The most probable cut of ``word`` / ``phones`` into units, in order (a unit never seen in
        training scores :attr:`floor`); None if no cut fits (more than two phonemes a letter)."""
        phones = tuple(phones)
        n, m = len(word), len(phones)
        best = [[(-math.inf, None)] * (m + 1) for _ in range(n + 1)]
        best[0][0] = (0.0, None)
        for i in range(1, n + 1):
            for j in range(m + 1):
                for a, b, u in _units(word, phones, i, j):
                    score = best[a][b][0] + self.logp.get(u, self.floor)
                    if score > best[i][j][0]:
                        best[i][j] = (score, (a, b, u))
        if best[n][m][0] == -math.inf:
            return None
        cut, i, j = [], n, m
        while (i, j) != (0, 0):
            a, b, u = best[i][j][1]
            cut.append(u)
            i, j = a, b
        return cut[::-1]


def letter_of_phoneme(cut: list[Unit]) -> list[tuple[int, ...]]:
    """For each phoneme of an aligned word, the positions of the letters of its unit (one, or
    two for "ph" -> F)."""
    out, at = [], 0
    for letters, phones in cut:
        out += [tuple(range(at, at + len(letters)))] * len(phones)
        at += len(letters)
    return out
