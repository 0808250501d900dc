"""The EM letter-to-phoneme aligner: exact posteriors on a small lattice, the Viterbi cut, and
what it learns from a lexicon."""

import math

import pytest

from attnkit.data import cmudict
from attnkit.data.align import SHAPES, Aligner, letter_of_phoneme
from attnkit.errors import AttentionError


def cuts(word, phones):
    """Every cut of ``word`` / ``phones`` into units of SHAPES, by brute force."""
    if not word:
        return [[]] if not phones else []
    out = []
    for a, b in SHAPES:
        if len(word) >= a and len(phones) >= b:
            head = (word[:a], tuple(phones[:b]))
            out += [[head, *rest] for rest in cuts(word[a:], phones[b:])]
    return out


def test_expected_counts_are_the_posterior_over_every_cut():
    logp = {}
    word, phones = "axe", ("AE", "K", "S")
    for cut in cuts(word, phones):
        for u in cut:
            logp.setdefault(u, -1.0 - 0.1 * len(logp))  # distinct, arbitrary unit scores
    weights = [math.exp(sum(logp[u] for u in cut)) for cut in cuts(word, phones)]
    expected = {}
    for cut, w in zip(cuts(word, phones), weights):
        for u in cut:
            expected[u] = expected.get(u, 0.0) + w / sum(weights)
    counts = {}
    Aligner._expect(logp, word, phones, counts)
    assert counts.keys() == expected.keys()
    for u, count in expected.items():
        assert counts[u] == pytest.approx(count, rel=1e-9)


def test_viterbi_is_the_most_probable_cut():
    aligner = Aligner({("a", ("AE",)): -1.0, ("x", ("K", "S")): -1.0, ("e", ()): -1.0, ("x", ("K",)): -3.0})
    best = max(cuts("axe", ("AE", "K", "S")), key=lambda c: sum(aligner.logp.get(u, aligner.floor) for u in c))
    assert aligner.align("axe", ("AE", "K", "S")) == best == [("a", ("AE",)), ("x", ("K", "S")), ("e", ())]
    assert aligner.align("a", ("AE", "K", "S")) is None  # three phonemes from one letter: no cut fits


def test_the_aligner_learns_letters_that_sound_as_themselves():
    lexicon = [(e.word, e.pronunciations[0]) for e in cmudict.load("train")[:600]]
    aligner = Aligner.fit(lexicon, iterations=4)
    assert aligner.align("bat", ("B", "AE1", "T")) == [("b", ("B",)), ("a", ("AE1",)), ("t", ("T",))]
    units = [aligner.align(w, p) for w, p in lexicon[:50]]
    assert all(u is not None and "".join(x for x, _ in u) == w for u, (w, _) in zip(units, lexicon[:50]))


def test_letter_of_phoneme_gives_each_phoneme_its_units_letters():
    cut = [("ph", ("F",)), ("o", ("OW",)), ("x", ("K", "S")), ("e", ())]
    assert letter_of_phoneme(cut) == [(0, 1), (2,), (3,), (3,)]


def test_bad_input_is_named():
    with pytest.raises(AttentionError, match="lexicon is empty"):
        Aligner.fit([])
    with pytest.raises(AttentionError, match="iterations"):
        Aligner.fit([("a", ("AE",))], iterations=0)
