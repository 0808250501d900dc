"""Metrics of G2P outputs against the CMU Pronouncing Dictionary's references (:func:`score`),
each with stress marks kept and with them removed (0/1/2 stripped from every phoneme on both sides):

- WER: the share of words whose output equals none of the word's reference pronunciations.
- PER: Σ_words edit distance to the closest reference / Σ_words length of that reference (the
  first closest one when several tie), i.e. phoneme errors per reference phoneme.

And the same per word-length bucket (:func:`by_length`, buckets :data:`LENGTHS`).
"""

from __future__ import annotations

from ...data import cmudict
from ...errors import AttentionError

__all__ = ["LENGTHS", "by_length", "edit_distance", "score"]

LENGTHS = ((1, 5), (6, 8), (9, 11), (12, None))  # word-length buckets in letters, for by_length


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
