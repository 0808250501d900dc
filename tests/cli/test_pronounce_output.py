"""pronounce's outputs for tools (issue 25): --no-stress and --format jsonl, and the same options
from Python (G2P.pronounce, attnkit.pronounce)."""

import json
import warnings

import pytest

import attnkit
from attnkit.cli import main
from attnkit.data.cmudict import strip_stress
from attnkit.tasks.g2p import G2P, LengthLimitWarning

WORDS = ["cat", "attention", "x-ray", "abacus"]


def _text(capsys, argv):
    assert main(argv) == 0
    return [line.split() for line in capsys.readouterr().out.strip().splitlines()]


def test_no_stress_strips_the_digits_of_the_same_pronunciations(capsys):
    kept = _text(capsys, ["pronounce", "--beam", "1", *WORDS])
    stripped = _text(capsys, ["pronounce", "--beam", "1", "--no-stress", *WORDS])
    assert [line[0] for line in stripped] == WORDS
    assert [list(strip_stress(line[1:])) for line in kept] == [line[1:] for line in stripped]
    assert any(p[-1].isdigit() for line in kept for p in line[1:])  # the check strips something


def test_jsonl_holds_the_text_outputs_with_their_places(capsys, tmp_path):
    long = "ab" * 50  # the accurate model's greedy output runs to its cap: cut
    words = tmp_path / "words.txt"
    words.write_text("cat\n\nx-ray " + long + "\n")
    assert main(["pronounce", "--model", "accurate", "--beam", "1", "--format", "jsonl", "--file", str(words)]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["word"] for r in rows] == ["cat", "x-ray", long]
    assert [r["place"] for r in rows] == [f"{str(words)!r} line {n}" for n in (1, 3, 3)]
    assert [r["cut"] for r in rows] == [False, False, True] and rows[0]["phones"] == ["K", "AE1", "T"]
    text = _text(capsys, ["pronounce", "--model", "accurate", "--beam", "1", "cat", "x-ray"])
    assert [r["phones"] for r in rows[:2]] == [line[1:] for line in text]
    assert "cut at the length limit" in captured.err  # the warning stays on stderr


def test_jsonl_keeps_stdout_json_when_plotting(capsys, tmp_path):
    assert main(["pronounce", "--format", "jsonl", "cat", "--plot", str(tmp_path / "a.png")]) == 0
    captured = capsys.readouterr()
    (row,) = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert row["word"] == "cat" and "alignment:" in captured.err and (tmp_path / "a.png").exists()


def test_python_takes_the_same_options():
    g2p = G2P.load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthLimitWarning)
        kept = g2p.pronounce(WORDS, beam=1)
        stripped = g2p.pronounce(WORDS, beam=1, stress=False)
    assert [strip_stress(p.phones) for p in kept] == [p.phones for p in stripped]
    assert all(a.weights.shape == b.weights.shape for a, b in zip(kept, stripped))
    assert [p.phones for p in attnkit.pronounce(WORDS, beam=1, stress=False)] == [p.phones for p in stripped]
    with pytest.raises(attnkit.AttentionError, match=r"stress must be a bool \(True or False\), got 'no'"):
        g2p.pronounce(["cat"], stress="no")


# -- known pronunciations: a lexicon and the CMU dictionary win over the model ------------------------
def test_a_lexicon_overrides_the_model_and_says_so(capsys, tmp_path):
    lexicon = tmp_path / "mine.dict"
    lexicon.write_text("# my overrides\ncat K AE1 T S\ncat(2) K AA1 T\n")
    rows = _text(capsys, ["pronounce", "--beam", "1", "--lexicon", str(lexicon), "cat", "dog"])
    model = _text(capsys, ["pronounce", "--beam", "1", "dog"])
    assert rows[0] == ["cat", "K", "AE1", "T", "S", "#", "lexicon"]  # the first pronunciation of the file
    assert rows[1] == model[0]  # a word the lexicon lacks comes from the model, unmarked
    assert main(["pronounce", "--format", "jsonl", "--lexicon", str(lexicon), "cat"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "lexicon"


def test_the_cmu_dictionary_is_looked_up_and_the_lexicon_wins_over_it(tmp_path):
    from attnkit.data import cmudict

    known = {e.word: e.pronunciations[0] for e in cmudict.load()}
    g2p = G2P.load()
    colonel, knight = g2p.pronounce(["colonel", "knight"], cmudict=True, lexicon={"knight": ["N", "AY1", "T", "S"]})
    assert (colonel.phones, colonel.source, colonel.weights) == (known["colonel"], "cmudict", None)
    assert (knight.phones, knight.source) == (("N", "AY1", "T", "S"), "lexicon")
    (plain,) = g2p.pronounce(["colonel"], beam=1)
    assert plain.source == "model" and plain.weights is not None  # off by default
    (stripped,) = g2p.pronounce(["colonel"], cmudict=True, stress=False)
    assert stripped.phones == strip_stress(known["colonel"])


@pytest.mark.parametrize(
    "lexicon, message",
    [
        ({"cat": ["KK"]}, r"lexicon gives 'cat' the phonemes \['KK'\], which the model does not have"),
        ({"cat": "K AE1 T"}, r"lexicon maps 'cat' to 'K AE1 T'; expected a word and a sequence of phonemes"),
        ({"cat": []}, r"lexicon maps 'cat' to \[\]"),
        (["cat"], r"lexicon must be a mapping word -> phonemes or a file's path, got list"),
        ("/nonexistent.dict", r"lexicon '/nonexistent.dict' does not exist"),
    ],
)
def test_a_bad_lexicon_is_named(lexicon, message):
    with pytest.raises(attnkit.AttentionError, match=message):
        G2P.load().pronounce(["cat"], lexicon=lexicon)


def test_a_bad_lexicon_file_is_one_line_naming_its_line(capsys, tmp_path):
    from cli_errors import one_line_error

    lexicon = tmp_path / "bad.dict"
    lexicon.write_text("cat K AE1 T\nd0g D AO1 G\n")
    one_line_error(capsys, ["pronounce", "--lexicon", str(lexicon), "cat"], f"lexicon {str(lexicon)!r}: line 2")


def test_every_word_known_decodes_nothing(monkeypatch):
    from attnkit.tasks.g2p import predictor

    def refuse(model, words, *args, **kwargs):
        assert words == []  # the known words are not decoded
        return []

    monkeypatch.setattr(predictor, "decode_words", refuse)
    (cat,) = G2P.load().pronounce(["cat"], lexicon={"cat": ["K", "AE1", "T"]})
    assert cat.phones == ("K", "AE1", "T") and cat.source == "lexicon"


def test_a_long_word_from_a_lexicon_is_not_called_a_guess(capsys, tmp_path):
    """The training-range warning is about the model's outputs: a word the lexicon gives is not one."""
    word = "pneumonoultramicroscopicsilicovolcanoconiosis"  # 45 letters, past the shipped model's 28
    with warnings.catch_warnings():
        warnings.simplefilter("error", LengthLimitWarning)
        (p,) = G2P.load().pronounce([word], lexicon={word: ["N", "UW1"]})
    assert p.source == "lexicon"
    lexicon = tmp_path / "long.dict"
    lexicon.write_text(f"{word} N UW1\n")
    assert main(["pronounce", "--lexicon", str(lexicon), word]) == 0
    assert capsys.readouterr().err == ""


# -- n-best lists, confidence and alignment (issue 25) ------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    return G2P.load("accurate")  # its alternatives: several for read and tomato


@pytest.fixture
def loaded(shipped, monkeypatch):
    """The command line's G2P.load gives the shipped model loaded once (loading it is 2-3 s a call)."""
    monkeypatch.setattr(G2P, "load", lambda *args, **kwargs: shipped)
    return shipped


def _columns(out: str) -> list[list[str]]:
    """Text lines cut at their column gaps (two spaces or more; phonemes are one space apart)."""
    import re

    return [re.split(r" {2,}", line) for line in out.strip().splitlines()]


def test_nbest_prints_each_words_alternatives_most_probable_first(capsys, loaded):
    words = ["cat", "read", "colonel"]
    assert main(["pronounce", "--nbest", "4", *words]) == 0
    rows = _columns(capsys.readouterr().out)
    expected = loaded.pronounce(words, nbest=4)
    assert [r[0] for r in rows] == [a.word for alts in expected for a in alts]
    assert [r[2].split() for r in rows] == [list(a.phones) for alts in expected for a in alts]
    assert [float(r[1]) for r in rows] == pytest.approx([a.probability for alts in expected for a in alts], abs=5e-5)
    for word, alts in zip(words, expected):
        probabilities = [float(r[1]) for r in rows if r[0] == word]
        assert 1 <= len(probabilities) <= 4 and probabilities == sorted(probabilities, reverse=True)
        assert sum(a.probability for a in alts) <= 1 + 1e-6
    assert len(rows) > len(words)  # alternatives were printed


def test_mass_keeps_the_fewest_alternatives_reaching_it(capsys, loaded):
    words = ["cat", "read", "tomato"]
    assert main(["pronounce", "--nbest", "5", "--mass", "0.5", "--format", "jsonl", *words]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    full = loaded.pronounce(words, nbest=5)
    for row, alts in zip(rows, full):
        kept = [a["probability"] for a in row["alternatives"]]
        assert kept == [a.probability for a in alts[: len(kept)]]
        assert sum(kept) >= 0.5 and sum(kept[:-1]) < 0.5
        assert row["phones"] == row["alternatives"][0]["phones"] == list(alts[0].phones)
        assert row["probability"] == kept[0]
    sizes = [len(r["alternatives"]) for r in rows]
    assert sizes[0] == 1 and max(sizes) > 1  # cat is sure (0.71), read and tomato are not


def test_confidence_is_the_probability_python_gives(capsys, loaded):
    words = ["cat", "attention", "x-ray"]
    expected = loaded.pronounce(words)
    assert main(["pronounce", "--confidence", *words]) == 0
    rows = _columns(capsys.readouterr().out)
    assert [float(r[1]) for r in rows] == pytest.approx([p.probability for p in expected], abs=5e-5)
    assert [r[2].split() for r in rows] == [list(p.phones) for p in expected]
    assert main(["pronounce", "--format", "jsonl", *words]) == 0  # in JSON Lines always, unrounded
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["probability"] for r in rows] == [p.probability for p in expected]


def test_align_prints_the_alignment_python_gives(capsys, loaded, tmp_path):
    from attnkit.tasks.g2p import align, alignment_text

    words = ["cat", "knight", "x-ray"]
    expected = loaded.pronounce(words)
    assert main(["pronounce", "--align", *words]) == 0
    rows = _columns(capsys.readouterr().out)
    assert [r[2] for r in rows] == [alignment_text(align(p.word, p.phones, p.weights)) for p in expected]
    assert rows[0] == ["cat", "K AE1 T", "c}K a}AE1 t}T"]
    lexicon = tmp_path / "mine.dict"
    lexicon.write_text("cat K AE1 T S\n")
    assert (
        main(["pronounce", "--align", "--confidence", "--format", "jsonl", "--lexicon", str(lexicon), "cat", "knight"])
        == 0
    )
    cat, knight = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert (cat["alignment"], cat["probability"]) == (None, None)  # a lexicon word: nothing decoded
    assert knight["alignment"] == [
        [letter, list(group)] for letter, group in align("knight", expected[1].phones, expected[1].weights)
    ]
    assert main(["pronounce", "--align", "--confidence", "--lexicon", str(lexicon), "cat"]) == 0
    assert _columns(capsys.readouterr().out) == [["cat", "-", "K AE1 T S", "# lexicon"]]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["--nbest", "3", "--beam", "2"],
            "--nbest 3 needs --beam 3 or more (the beam holds the alternatives), got --beam 2",
        ),
        (["--beam", "5", "--nbest", "6"], "--nbest 6 needs --beam 6 or more"),
        (["--mass", "0.5"], "--mass keeps the most probable of --nbest's alternatives; give --nbest K too"),
        (["--nbest", "0"], "argument --nbest: must be a whole number >= 1, got '0'"),
        (["--nbest", "two"], "argument --nbest: must be a whole number, got 'two'"),
        (["--nbest", "2", "--mass", "0"], "argument --mass: must be a number in (0, 1], got '0'"),
        (["--nbest", "2", "--mass", "1.5"], "argument --mass: must be a number in (0, 1], got '1.5'"),
        (["--nbest", "2", "--mass", "nan"], "argument --mass: must be a number in (0, 1], got 'nan'"),
    ],
)
def test_bad_nbest_flags_are_one_line_before_the_model_loads(capsys, monkeypatch, argv, expected):
    from cli_errors import one_line_error

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(G2P, "load", refuse)
    one_line_error(capsys, ["pronounce", *argv, "cat"], expected)


def test_align_without_attention_is_one_line(capsys, monkeypatch):
    from cli_errors import one_line_error

    from attnkit.data.cmudict import LETTERS
    from attnkit.data.vocab import Vocab
    from attnkit.models import RNNConfig, RNNSeq2Seq

    letters, phonemes = Vocab(LETTERS), Vocab(["K", "AE1", "T"])
    model = RNNSeq2Seq(RNNConfig(len(letters), len(phonemes), attention="none", hidden_dim=8, embed_dim=4))
    g2p = G2P(model, {"letters": letters.symbols, "phonemes": phonemes.symbols, "longest": 3}, "none")
    monkeypatch.setattr(G2P, "load", lambda *args, **kwargs: g2p)
    one_line_error(capsys, ["pronounce", "--align", "cat"], "this model has no attention (attention=none)")
    assert main(["pronounce", "--confidence", "--nbest", "2", "cat"]) == 0  # the rest needs no attention
    assert _columns(capsys.readouterr().out)[0][0] == "cat"
