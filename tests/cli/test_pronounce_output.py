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
    long = "ab" * 50  # the shipped model's greedy output runs to its cap: cut
    words = tmp_path / "words.txt"
    words.write_text("cat\n\nx-ray " + long + "\n")
    assert main(["pronounce", "--beam", "1", "--format", "jsonl", "--file", str(words)]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["word"] for r in rows] == ["cat", "x-ray", long]
    assert [r["place"] for r in rows] == [f"{str(words)!r} line {n}" for n in (1, 3, 3)]
    assert [r["cut"] for r in rows] == [False, False, True] and rows[0]["phones"] == ["K", "AE1", "T"]
    text = _text(capsys, ["pronounce", "--beam", "1", "cat", "x-ray"])
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
