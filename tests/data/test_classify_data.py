"""WordNet parsing, the three classification sets and their split, the tokenizer and word vocabularies."""

import zlib

import pytest

from attnkit import AttentionError
from attnkit.data import UNK, Vocab, wordnet

# a WordNet folder in miniature: two nouns share the word "bank", a verb shares "bank" too
NOUN = """  1 This software and database is being provided to you, the LICENSEE, by
00000100 06 n 02 bank 0 depository_financial_institution 0 000 | a financial institution; "he cashed a check at the bank"; "that bank holds the mortgage"
00000200 17 n 01 bank 1 000 | sloping land beside a body of water; "they pulled the canoe up on the bank"
00000300 05 n 01 cat 0 000 | feline mammal (usually "a cat") with thick soft fur: "the cat purred"--Anon.
"""
VERB = '00000400 40 v 01 bank 0 000 01 + 02 00 | do business with a bank; "Where do you bank?"\n'
ADJ = "00000500 00 s 01 on_hand(p) 0 000 | readily available\n"


@pytest.fixture
def tiny_wordnet(tmp_path, monkeypatch):
    for name, text in (("data.noun", NOUN), ("data.verb", VERB), ("data.adj", ADJ), ("data.adv", "")):
        (tmp_path / name).write_text(text)
    monkeypatch.setenv(wordnet.ENV, str(tmp_path))
    return tmp_path


def test_parse_line_splits_definition_from_examples():
    cat = wordnet.parse_line(NOUN.splitlines()[3])
    assert cat == wordnet.Synset(
        "00000300-n",
        "noun.animal",
        ("cat",),
        'feline mammal (usually "a cat") with thick soft fur',
        ("the cat purred",),
    )
    assert wordnet.parse_line(ADJ).words == ("on_hand",)  # the (p) marker is dropped
    assert wordnet.parse_line(ADJ).lexname == "adj.all" and wordnet.parse_line(VERB).lexname == "verb.possession"


def test_parse_line_names_a_malformed_line():
    with pytest.raises(AttentionError, match=r"WordNet line 'not a synset line'\.\.\. is not a synset line"):
        wordnet.parse_line("not a synset line")
    with pytest.raises(AttentionError, match=r"has no gloss after '\|'"):
        wordnet.parse_line("00000100 06 n 01 bank 0 000")


def test_lexnames_are_the_45_lexicographer_files():
    assert len(wordnet.LEXNAMES) == 45 == len(set(wordnet.LEXNAMES))
    assert wordnet.LEXNAMES[5] == "noun.animal" and wordnet.LEXNAMES[38] == "verb.motion"


def test_tokenize_lowercases_words_and_keeps_inner_apostrophes_and_hyphens():
    assert wordnet.tokenize("Don't re-read THE well-known 2 books, ok?") == [
        "don't",
        "re-read",
        "the",
        "well-known",
        "2",
        "books",
        "ok",
    ]
    assert wordnet.tokenize("  ;!? ") == []


def test_split_rule_is_crc32_of_the_synset_id_mod_10():
    for synset_id in ("00001740-n", "00001930-n", "00006400-n", "02084071-n", "00001740-v"):
        r = zlib.crc32(synset_id.encode()) % 10
        assert wordnet.split_of(synset_id) == ("test" if r == 0 else "valid" if r == 1 else "train")


def test_missing_data_dir_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv(wordnet.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(AttentionError) as err:
        wordnet.glosses("train")
    assert str(err.value) == (
        f"WordNet data not found: {str(tmp_path / 'nowhere')!r} has no data.noun, data.verb, data.adj, data.adv; "
        "install it with `apt-get install wordnet-base`, or set ATTNKIT_WORDNET_DIR to a folder holding "
        "data.noun, data.verb, data.adj, data.adv"
    )


def test_unknown_split_is_named(tiny_wordnet):
    with pytest.raises(AttentionError, match=r"split='dev' is unknown; expected one of \('train', 'valid', 'test'\)"):
        wordnet.pairs("dev")


def test_the_env_var_points_at_another_folder(tiny_wordnet):
    assert [s.id for s in wordnet.synsets()] == ["00000100-n", "00000200-n", "00000300-n", "00000400-v", "00000500-s"]
    assert [g.label for g in wordnet.glosses()] == [
        "noun.artifact",
        "noun.object",
        "noun.animal",
        "verb.possession",
        "adj.all",
    ]
    docs = wordnet.documents()
    assert [d.synset for d in docs] == ["00000100-n", "00000200-n", "00000300-n", "00000400-v"]  # not the adjective
    assert docs[0].sentences == (
        "a financial institution",
        "he cashed a check at the bank",
        "that bank holds the mortgage",
    )


def test_pairs_are_a_positive_and_a_hard_negative_per_example(tiny_wordnet, monkeypatch):
    monkeypatch.setattr(wordnet, "split_of", lambda synset_id: "train")  # all in one split: every neighbour counts
    got = wordnet.pairs("train")
    synsets = {s.id: s for s in wordnet.synsets()}
    assert len(got) == 2 * 4  # bank.n.1 has 2 examples, bank.n.2 and bank.v 1 each; cat has no neighbour
    for positive, negative in zip(got[::2], got[1::2]):
        assert positive.match and not negative.match and positive.first == negative.first
        assert positive.second in synsets[positive.synset].examples and positive.source == positive.synset
        other = synsets[negative.source]
        assert negative.source != negative.synset and negative.second in other.examples
        assert set(other.words) & set(synsets[negative.synset].words)  # shares a word: a hard negative
    assert wordnet.pairs("train") == got  # deterministic


def test_real_splits_partition_the_synsets_without_overlap():
    ids = {s: {g.synset for g in wordnet.glosses(s)} for s in wordnet.SPLITS}
    assert sum(map(len, ids.values())) == len(wordnet.glosses()) == len(set().union(*ids.values()))
    assert not ids["train"] & ids["valid"] and not ids["train"] & ids["test"] and not ids["valid"] & ids["test"]
    for split in wordnet.SPLITS:
        assert {d.synset for d in wordnet.documents(split)} <= ids[split]
        pair_synsets = {p.synset for p in wordnet.pairs(split)} | {p.source for p in wordnet.pairs(split)}
        assert pair_synsets <= ids[split]  # both synsets of every pair lie in the pair's split
    assert wordnet.glosses("test") == wordnet.glosses("test")  # deterministic
    # no definition-example pair of the test split occurs in training
    train = {(p.first, p.second) for p in wordnet.pairs("train")}
    assert not train & {(p.first, p.second) for p in wordnet.pairs("test")}


def test_real_sets_have_the_documented_shape():
    docs = wordnet.documents("valid")
    assert docs and all(len(d.sentences) >= 2 for d in docs)
    labels = {g.label for g in wordnet.glosses("train")}
    assert labels == set(wordnet.LEXNAMES)  # every supersense occurs in training
    valid_pairs = wordnet.pairs("valid")
    assert sum(p.match for p in valid_pairs) * 2 == len(valid_pairs)


def test_vocab_build_keeps_frequent_words_after_unk():
    words = Vocab.build([["a", "b", "a"], ["c", "b", "a"]], min_count=2)
    assert words.symbols == ["<pad>", "<s>", "</s>", UNK, "a", "b"] and words.unk == UNK
    assert words.encode(["b", "zebra", "<pad>"]) == [5, 3, 3]  # unknown words and specials -> <unk>
    assert Vocab(words.symbols[3:], name="words", unk=UNK) == words


def test_vocab_errors_name_the_argument():
    with pytest.raises(AttentionError, match="min_count must be >= 1, got 0"):
        Vocab.build([["a"]], min_count=0)
    with pytest.raises(AttentionError, match=r"unk='<unk>' is not one of the words symbols; put it in symbols"):
        Vocab(["a"], name="words", unk=UNK)
