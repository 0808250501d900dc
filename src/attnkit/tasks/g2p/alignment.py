"""A letter-to-phoneme alignment read from a decoder's attention, as text.

Shape legend: T output steps (the phonemes, then the end when the output has one), S letters.

:func:`align` gives each phoneme one letter, in order: every letter appears once, in the word's
order, with the (possibly empty) group of phonemes it produced, and the groups joined give back the
phonemes. :func:`alignment_text` writes it as Phonetisaurus prints its joint sequences: one
``letter}phonemes`` token a letter, several phonemes of one letter joined by ``|``, a letter
without phonemes given ``_`` (``k}_ n}N i}AY1 g}_ h}_ t}T``).

>>> import torch
>>> weights = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.0, 0.2, 0.8], [0.1, 0.1, 0.8]])
>>> pairs = align("cat", ("K", "AE1", "T"), weights)  # 4 rows: the last emits the end
>>> pairs
[('c', ('K',)), ('a', ('AE1',)), ('t', ('T',))]
>>> alignment_text(pairs)
'c}K a}AE1 t}T'
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ...errors import AttentionError

__all__ = ["align", "alignment_text"]

EMPTY = "_"  # a letter without phonemes, as Phonetisaurus writes epsilon
JOIN = "|"  # between the phonemes of one letter


def align(word: str, phones: Sequence[str], weights: Tensor | None) -> list[tuple[str, tuple[str, ...]]]:
    """Each letter of ``word`` with the phonemes it produced, from ``weights`` (T, S): the attention
    of each output step over the letters, len(phones) rows or len(phones) + 1 (the last, the step
    that emitted the end, is not used), as :class:`~attnkit.tasks.g2p.Pronunciation` holds them.

    Phoneme j goes to letter a_j, the letters chosen so that a_1 <= a_2 <= ... (monotonic: a
    spelling is read left to right) with the largest summed attention Σ_j weights[j, a_j]: a
    dynamic programme over (phoneme, letter), O(T S). Where each phoneme's most attended letter
    already comes in order, that is the answer (each term is then its row's maximum); where one
    phoneme looks back or far ahead, the programme moves it, or its neighbours, to the monotonic
    assignment that loses the least attention, instead of a running maximum that would drag every
    later phoneme after one outlier. Ties go to the earlier letter. Summed weights rather than
    summed log-weights: sparse attention (sparsemax, hard) has exact zeros, whose logarithms would
    rule out every path through them.
    """
    if weights is None:
        raise AttentionError(
            "this pronunciation has no attention weights (a model with attention=none, or a word from a "
            "lexicon): there is no alignment to read"
        )
    n, s = len(phones), len(word)
    if weights.dim() != 2 or weights.shape[0] not in (n, n + 1) or weights.shape[1] != s or s == 0:
        raise AttentionError(
            f"weights has shape {tuple(weights.shape)}; expected (len(phones) or len(phones) + 1, len(word)) "
            f"= ({n} or {n + 1}, {s}) with at least one letter"
        )
    letters = [[] for _ in range(s)]
    for j, a in enumerate(_monotonic(weights[:n].double().tolist())):
        letters[a].append(phones[j])
    return [(letter, tuple(group)) for letter, group in zip(word, letters)]


def _monotonic(w: list[list[float]]) -> list[int]:
    """The non-decreasing letters a_1 <= ... <= a_T maximising Σ_j w[j][a_j], for ``w`` (T, S)."""
    if not w:
        return []
    letters = range(len(w[0]))
    total, back = w[0], []  # total[a]: the best sum of the phonemes so far, the last one at letter a
    for row in w[1:]:
        lead, arg = 0, []  # arg[a]: the best letter <= a for the previous phoneme (the earlier of equals)
        for a in letters:
            lead = a if total[a] > total[lead] else lead
            arg.append(lead)
        total = [row[a] + total[arg[a]] for a in letters]
        back.append(arg)
    a = max(letters, key=total.__getitem__)  # the first of equal maxima: the earlier letter
    path = [a]
    for arg in reversed(back):
        a = arg[a]
        path.append(a)
    return path[::-1]


def alignment_text(pairs: Sequence[tuple[str, Sequence[str]]]) -> str:
    """``pairs`` from :func:`align` as one line: ``letter}PH`` for each letter, phonemes of one letter
    joined by ``|``, ``_`` for a letter without phonemes; ``x-ray`` -> ``x}EH1|K|S -}_ r}R a}EY1 y}_``."""
    return " ".join(f"{letter}}}{JOIN.join(group) if group else EMPTY}" for letter, group in pairs)
