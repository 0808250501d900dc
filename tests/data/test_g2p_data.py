"""cmudict loading and splitting, and the G2P metrics on hand-computed cases."""

import pytest

from attnkit import AttentionError
from attnkit.data import Vocab, cmudict
from attnkit.tasks.g2p import edit_distance, score


def test_parse_drops_comments_and_merges_variants():
    text = ";;; a comment line\nab EY1 B IY1\nab(2) AE1 B\n\nx-ray EH1 K S R EY2 # a trailing comment\n"
    assert cmudict.parse(text) == [
        cmudict.Entry("ab", (("EY1", "B", "IY1"), ("AE1", "B"))),
        cmudict.Entry("x-ray", (("EH1", "K", "S", "R", "EY2"),)),
    ]


def test_parse_names_a_line_outside_the_alphabet():
    with pytest.raises(AttentionError, match="cmudict line 2 \\('caf\xe9 K AE0 F EY1'\\): expected a word over"):
        cmudict.parse("ab EY1 B IY1\ncaf\xe9 K AE0 F EY1\n")


def test_split_rule_is_i_mod_20():
    assert [cmudict.split_of(i) for i in range(22)] == (["valid", "test", "test"] + ["train"] * 17 + ["valid", "test"])


def test_splits_partition_the_dictionary_without_overlap():
    everything = cmudict.load()
    parts = {s: cmudict.load(s) for s in cmudict.SPLITS}
    words = {s: {e.word for e in part} for s, part in parts.items()}
    assert sum(len(p) for p in parts.values()) == len(everything) == len(set().union(*words.values()))
    assert (
        not words["train"] & words["test"]
        and not words["train"] & words["valid"]
        and not words["valid"] & words["test"]
    )
    # the walk is in file order: every 20th word from the first is validation
    assert parts["valid"][:3] == everything[0:60:20]
    assert parts["test"][:2] == everything[1:3]
    assert cmudict.load("test") == parts["test"]  # deterministic


def test_spread_takes_evenly_spaced_entries_in_order():
    entries = [cmudict.Entry(str(i), ()) for i in range(10)]
    assert [e.word for e in cmudict.spread(entries, 4)] == ["0", "2", "5", "7"]
    assert cmudict.spread(entries, None) == entries
    assert cmudict.spread(entries, 10) == entries and cmudict.spread(entries, 99) == entries
    with pytest.raises(AttentionError, match="count"):
        cmudict.spread(entries, 0)


def test_a_limited_task_spans_the_alphabet_not_its_first_letters():
    from attnkit.tasks.g2p import G2PTask

    task = G2PTask("rnn", {"hidden_dim": 8}, limit=2000, valid_limit=300)
    first = {task.letters.decode(src)[0] for src, _ in task.pairs}
    assert len(first) >= 24  # the sorted split's first 2000 words start with 'a' or an apostrophe
    assert {e.word[0] for e in task.valid} >= set("abcdefghijklmnoprstuvw")
    assert [e.word for e in task.valid] == [e.word for e in cmudict.spread(cmudict.load("valid"), 300)]


def test_every_spelling_and_phoneme_is_in_the_vocabularies():
    letters, phonemes = cmudict.letters(), cmudict.phonemes()
    for e in cmudict.load():
        letters.encode(e.word)
        for p in e.pronunciations:
            phonemes.encode(p)


def test_unknown_split_is_named():
    with pytest.raises(AttentionError, match=r"split='dev' is unknown; expected one of \('train', 'valid', 'test'\)"):
        cmudict.load("dev")


def test_vocab_encode_names_unknown_symbols():
    with pytest.raises(AttentionError, match=r"'c4t' has \['4'\] outside the letters vocabulary; allowed: \"abc"):
        cmudict.letters().encode("c4t")


def test_vocab_pad_frames_and_decode_stops_at_end():
    v = Vocab(["X", "Y"])
    assert v.pad([[3], [4, 3]], bos=True, eos=True).tolist() == [[1, 3, 2, 0], [1, 4, 3, 2]]
    assert v.decode([1, 4, 3, 2, 3]) == ["Y", "X"]


def test_strip_stress():
    assert cmudict.strip_stress(("AH0", "B", "AW1", "T")) == ("AH", "B", "AW", "T")


@pytest.mark.parametrize(
    "a, b, d",
    [
        ((), (), 0),
        (("A",), (), 1),
        (("K", "AE1", "T"), ("K", "AE1", "T"), 0),
        (("K", "AE1", "T"), ("AE1", "T", "S"), 2),
        (("A", "B", "C"), ("C", "B", "A"), 2),
    ],
)
def test_edit_distance_hand_cases(a, b, d):
    assert edit_distance(a, b) == d == edit_distance(b, a)


def test_wer_counts_a_word_right_if_any_reference_matches():
    refs = [[("T", "AH0", "M", "EY1", "T", "OW0"), ("T", "AH0", "M", "AA1", "T", "OW0")], [("K", "AE1", "T")]]
    hyps = [("T", "AH0", "M", "AA1", "T", "OW0"), ("K", "AE1", "T", "S")]
    m = score(hyps, refs)
    assert m["wer"] == 50.0
    # PER: 0 edits against the matching reference, 1 against "cat" (3 phonemes): 1 / (6 + 3)
    assert m["per"] == pytest.approx(100 * 1 / 9)


def test_stress_removed_forgives_stress_only_errors():
    hyps = [("K", "AE0", "T"), ("D", "AO1", "G")]
    refs = [[("K", "AE1", "T")], [("D", "AA1", "G")]]
    m = score(hyps, refs)
    assert (m["wer"], m["wer_nostress"]) == (100.0, 50.0)
    assert (m["per"], m["per_nostress"]) == (pytest.approx(100 * 2 / 6), pytest.approx(100 * 1 / 6))


def test_per_uses_the_closest_reference_length():
    # "AB" is 1 edit from the 3-long "ABC" and 2 edits from the 1-long "X": the closest one counts
    assert score([("A", "B")], [[("X",), ("A", "B", "C")]])["per"] == pytest.approx(100 / 3)


def test_score_needs_one_reference_list_per_output():
    with pytest.raises(AttentionError, match="got 1 outputs and 2 lists"):
        score([("A",)], [[("A",)], [("B",)]])
