"""What G2P users ask for (issue 25): each word's probability, n-best lists of alternatives with a
probability mass cut-off, and the letter-to-phoneme alignment read from the attention."""

import math
import random
import warnings

import pytest
import torch

from attnkit import AttentionError
from attnkit.data.cmudict import strip_stress
from attnkit.data.vocab import BOS, EOS, PAD, Vocab
from attnkit.models import RNNConfig, RNNSeq2Seq, greedy
from attnkit.tasks.g2p import G2P, LengthLimitWarning, Pronunciation, align, alignment_text

pytestmark = pytest.mark.usefixtures("one_thread")

LETTERS = "abcdefghijklmnopqrstuvwxyz'-."
PHONES = ["K", "AE0", "AE1", "T", "S"]
PAIRS = [("cat", "K AE1 T"), ("cat", "K AE0 T"), ("tacks", "T AE1 K S"), ("a", "AE0"), ("sat", "S AE1 T")]
WORDS = ["cat", "tacks", "a", "stack"]


def _tiny() -> G2P:
    """A tiny RNN trained for 15 steps on five pairs, "cat" both as K AE1 T and K AE0 T: it reads
    the words, but its probabilities are still spread, so its n-best lists have real alternatives."""
    torch.manual_seed(0)
    letters, phonemes = Vocab(LETTERS), Vocab(PHONES)
    model = RNNSeq2Seq(RNNConfig(len(letters), len(phonemes), hidden_dim=16, embed_dim=8, dropout=0.0))
    src = letters.pad([letters.encode(w) for w, _ in PAIRS])
    tgt = phonemes.pad([[BOS, *phonemes.encode(p.split()), EOS] for _, p in PAIRS])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(15):
        logits = model(src, tgt[:, :-1]).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return G2P(model, {"letters": letters.symbols, "phonemes": phonemes.symbols}, "tiny")


@pytest.fixture(scope="module")
def tiny() -> G2P:
    return _tiny()


@pytest.fixture(scope="module")
def shipped() -> G2P:
    return G2P.load("accurate", int8=False)  # the shipped ensemble in float32: its own probabilities


def _probability(g2p: G2P, word: str, phones) -> float:
    """The model's probability of ``phones`` then the end for ``word``, by teacher forcing."""
    src = g2p.letters.pad([g2p.letters.encode(word)])
    gold = torch.tensor([*g2p.phonemes.encode(phones), EOS])
    tgt_in = torch.tensor([[BOS, *gold[:-1].tolist()]])
    with torch.no_grad():
        logp = g2p.model.decode(g2p.model.encode(src), tgt_in).logits.double().log_softmax(-1)[0]
    return math.exp(logp[torch.arange(len(gold)), gold].sum().item())


# -- confidence -------------------------------------------------------------------------------------
@pytest.mark.parametrize("beam", [1, 3])
def test_the_probability_is_the_models_probability_of_the_output(tiny, beam):
    for p in tiny.pronounce(WORDS, beam=beam):
        assert p.probability == pytest.approx(_probability(tiny, p.word, p.phones), rel=1e-5)
    src = tiny.letters.pad([tiny.letters.encode(w) for w in WORDS])
    expected = [math.exp(h.score) for h in greedy(tiny.model, src)]
    assert [p.probability for p in tiny.pronounce(WORDS, beam=1)] == pytest.approx(expected, rel=1e-6)


def test_the_shipped_models_probability_is_its_ensembles(shipped):
    for p in shipped.pronounce(["cat", "phone"]):
        assert 0 < p.probability <= 1
        assert p.probability == pytest.approx(_probability(shipped, p.word, p.phones), rel=1e-4)


def test_with_int8_products_the_probability_is_close_to_the_models():
    int8 = G2P.load("accurate", int8=True)
    exact = G2P.load("accurate", int8=False)
    for p in int8.pronounce(["cat", "phone"], beam=5):
        assert p.probability == pytest.approx(_probability(exact, p.word, p.phones), rel=0.05)


def test_a_lexicon_word_has_no_probability(tiny):
    cat, tacks = tiny.pronounce(["cat", "tacks"], lexicon={"cat": ["K", "AE1", "T"]})
    assert (cat.source, cat.probability) == ("lexicon", None) and tacks.probability is not None
    (alts,) = tiny.pronounce(["cat"], lexicon={"cat": ["K", "AE1", "T"]}, nbest=3, beam=3)
    assert [(a.phones, a.probability, a.source) for a in alts] == [(("K", "AE1", "T"), None, "lexicon")]


def test_the_new_field_comes_last():
    assert Pronunciation._fields == ("word", "phones", "weights", "cut", "source", "probability")
    assert Pronunciation("cat", ("K", "AE1", "T"), None, False, "lexicon").probability is None


# -- n-best lists -----------------------------------------------------------------------------------
def test_nbest_lists_are_distinct_sorted_and_true(tiny):
    lists = tiny.pronounce(WORDS, beam=6, nbest=6)
    assert [alts[0].word for alts in lists] == WORDS
    for alts in lists:
        probabilities = [a.probability for a in alts]
        assert 2 <= len(alts) <= 6 and probabilities == sorted(probabilities, reverse=True)
        assert len({a.phones for a in alts}) == len(alts) and math.fsum(probabilities) <= 1 + 1e-6
        for a in alts:
            assert a.probability == pytest.approx(_probability(tiny, a.word, a.phones), rel=1e-5)
            assert a.weights.shape == (len(a.phones) + 1, len(a.word))


def test_without_nbest_the_return_is_as_before(tiny):
    plain = tiny.pronounce(WORDS, beam=4)
    assert all(not isinstance(p, list) for p in plain)
    assert [p.phones for p in plain] == [p.phones for p in tiny.pronounce(WORDS, beam=4, nbest=None)]


def test_mass_keeps_the_fewest_alternatives_that_reach_it(tiny):
    full = [[(a.phones, a.probability) for a in alts] for alts in tiny.pronounce(WORDS, beam=6, nbest=6)]
    sizes = set()
    for mass in (1e-9, 0.5, 0.8, 0.95, 1.0):
        for alts, whole in zip(tiny.pronounce(WORDS, beam=6, nbest=6, mass=mass), full):
            kept = [(a.phones, a.probability) for a in alts]
            assert len(kept) >= 1 and kept == whole[: len(kept)]
            reached = math.fsum(p for _, p in kept) >= mass
            assert reached or kept == whole  # not reached: every alternative kept
            assert not reached or math.fsum(p for _, p in kept[:-1]) < mass  # and not one more than needed
            sizes.add(len(kept))
    assert len(sizes) >= 3  # the cut-off cuts at several places


def test_stripped_stress_merges_alternatives_summing_their_probabilities(tiny):
    kept = tiny.pronounce(WORDS, beam=6, nbest=6)
    stripped = tiny.pronounce(WORDS, beam=6, nbest=6, stress=False)
    merged_any = False
    for alts, plain in zip(kept, stripped):
        sums: dict = {}
        for a in alts:
            sums[strip_stress(a.phones)] = sums.get(strip_stress(a.phones), 0.0) + a.probability
        merged_any |= len(sums) < len(alts)
        assert [a.phones for a in plain] == sorted(sums, key=lambda p: -sums[p])
        assert [a.probability for a in plain] == pytest.approx([sums[a.phones] for a in plain], rel=1e-12)
    assert merged_any  # the check merges something


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"nbest": 4, "beam": 3}, r"nbest=4 needs beam >= 4 \(the beam holds the alternatives\), got beam=3"),
        ({"nbest": 0}, r"nbest must be an int in 1\.\.2\*\*62, got 0"),
        ({"nbest": True}, r"nbest must be an int in 1\.\.2\*\*62, got True \(bool\)"),
        ({"mass": 0.5}, r"mass=0\.5 keeps the most probable of the alternatives; give nbest too"),
        ({"nbest": 2, "mass": 0}, r"mass must be a number in \(0, 1\], got 0"),
        ({"nbest": 2, "mass": 1.5}, r"mass must be a number in \(0, 1\], got 1\.5"),
        ({"nbest": 2, "mass": True}, r"mass must be a number in \(0, 1\], got True"),
    ],
)
def test_bad_nbest_and_mass_are_named(tiny, kwargs, message):
    with pytest.raises(AttentionError, match=message):
        tiny.pronounce(["cat"], **kwargs)


def test_outputs_that_never_end_are_cut_alternatives_warned_about_once():
    endless = _tiny()
    with torch.no_grad():
        endless.model.out.bias[EOS] = -30.0  # the end all but ruled out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LengthLimitWarning)
        (alts,) = endless.pronounce(["cat"], beam=3, nbest=3)
    assert len(alts) == 3 and all(a.cut and len(a.phones) == 2 * 3 + 10 for a in alts)
    assert [str(w.message) for w in caught] == [
        "words[0] 'cat' (3 letters): output cut at the length limit of 16 phonemes"
    ]
    probabilities = [a.probability for a in alts]  # of the phonemes alone: there is no end
    assert probabilities == sorted(probabilities, reverse=True) and all(a.weights.shape[0] == 16 for a in alts)


# -- alignment --------------------------------------------------------------------------------------
def _check(word, phones, pairs):
    assert "".join(letter for letter, _ in pairs) == word
    assert [p for _, group in pairs for p in group] == list(phones)


def test_alignments_keep_every_letter_and_phoneme_in_order():
    rng = random.Random(0)
    for _ in range(200):
        word = "".join(rng.choice("abc") for _ in range(rng.randint(1, 7)))
        phones = [rng.choice(PHONES) for _ in range(rng.randint(0, 9))]
        rows = len(phones) + rng.randint(0, 1)  # with or without the end's row
        weights = torch.rand(rows, len(word)).softmax(-1)
        _check(word, phones, align(word, phones, weights))


def test_the_alignment_is_the_argmax_where_that_is_in_order():
    weights = torch.tensor(
        [[0.7, 0.2, 0.1, 0.0], [0.1, 0.1, 0.7, 0.1], [0.0, 0.1, 0.6, 0.3], [0.0, 0.0, 0.2, 0.8], [0.1, 0.1, 0.1, 0.7]]
    )  # 4 phonemes and the end over "axes"
    pairs = align("axes", ["AE1", "K", "S", "IH0"], weights)
    assert pairs == [("a", ("AE1",)), ("x", ()), ("e", ("K", "S")), ("s", ("IH0",))]
    assert alignment_text(pairs) == "a}AE1 x}_ e}K|S s}IH0"


def test_one_phoneme_looking_ahead_does_not_drag_the_rest():
    """A running maximum would send every phoneme after Q's look ahead to the last letter (losing
    0.7 + 0.8 of attention); the programme moves Q back instead (losing 0.8)."""
    weights = torch.tensor([[0.9, 0.0, 0.0, 0.1], [0.0, 0.1, 0.0, 0.9], [0.0, 0.8, 0.1, 0.1], [0.0, 0.0, 0.9, 0.1]])
    pairs = align("abcd", ["P", "Q", "R", "S"], weights)
    assert pairs == [("a", ("P",)), ("b", ("Q", "R")), ("c", ("S",)), ("d", ())]


def test_the_shipped_models_alignments_are_sensible(shipped):
    cat, phone, knight = shipped.pronounce(["cat", "phone", "knight"])
    texts = [alignment_text(align(p.word, p.phones, p.weights)) for p in (cat, phone, knight)]
    assert texts[0] == "c}K a}AE1 t}T"  # one phoneme a letter
    for p in (cat, phone, knight):
        _check(p.word, p.phones, align(p.word, p.phones, p.weights))
    phone_pairs = dict(align(phone.word, phone.phones, phone.weights))
    assert phone_pairs["e"] == () and phone_pairs["n"] == ("N",)  # the silent final e
    assert ("F",) in (phone_pairs["p"], phone_pairs["h"]) and phone_pairs["o"] == ("OW1",)
    knight_pairs = align(knight.word, knight.phones, knight.weights)
    assert knight_pairs[0] == ("k", ()) and knight_pairs[1] == ("n", ("N",)) and knight_pairs[-1] == ("t", ("T",))


def test_no_attention_and_bad_shapes_are_named():
    with pytest.raises(AttentionError, match=r"no attention weights \(a model with attention=none"):
        align("cat", ["K", "AE1", "T"], None)
    with pytest.raises(AttentionError, match=r"weights has shape \(3, 4\); expected .* = \(3 or 4, 3\)"):
        align("cat", ["K", "AE1", "T"], torch.ones(3, 4))
    with pytest.raises(AttentionError, match=r"weights has shape \(5, 3\)"):
        align("cat", ["K", "AE1", "T"], torch.ones(5, 3))
