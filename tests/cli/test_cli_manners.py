"""The command line under fuzzing (issue 23): sizes are bounded before any work, cut outputs and
bad words are reported one line each, paths are checked before decoding, errors say what a path
is, and the commands describe themselves (--version, bench --help, tour --list, experiment lines)."""

import importlib.metadata
import io
import os
import sys
import warnings

import pytest
from cli_errors import one_line_error

from attnkit.cli import main
from attnkit.errors import AttentionError
from attnkit.tasks import g2p as task
from attnkit.tasks.g2p import G2P

LONG = "ab" * 50  # 100 letters: the shipped model's greedy output runs to its cap
# the shipped model's longest training word has 28 letters: no output runs past its limit, 2 * 28 + 10
CAP = 66


def no_model(monkeypatch):
    """Loading a model fails the test: the check under test must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded: the check did not come first")

    monkeypatch.setattr(G2P, "load", classmethod(refuse))


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    """A tiny G2P Transformer whose positions end at 64."""
    out = tmp_path_factory.mktemp("transformer")
    tiny = ["--d-model", "16", "--heads", "2", "--ff-dim", "32", "--encoder-layers", "1", "--decoder-layers", "1"]
    argv = ["train", "g2p", "--model", "transformer", *tiny, "--max-len", "64", "--limit", "40", "--valid-limit", "5"]
    assert main([*argv, "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    return out


# -- sizes: bounded, and checked before any decoding -------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["pronounce", "--beam", "99999999999999999999999", "cat"],
        ["pronounce", "--beam", "1000000", "cat"],
        ["pronounce", "--beam", "101", "cat"],
        ["eval", "--beam", "1000000", "--limit", "2"],
    ],
)
def test_beam_is_bounded_before_anything_loads(capsys, monkeypatch, argv):
    no_model(monkeypatch)
    one_line_error(capsys, argv, "argument --beam: must be a whole number <= 100")


def test_the_beam_bound_is_in_the_help(capsys):
    for command in ("pronounce", "eval"):
        assert main([command, "--help"]) == 0
        assert "1 to 100" in " ".join(capsys.readouterr().out.split())


# -- outputs cut at the length limit ----------------------------------------------------------------
def test_pronounce_says_which_word_was_cut_at_the_length_limit(capsys):
    assert main(["pronounce", "--model", "accurate", "--beam", "1", "cat", LONG]) == 0  # the ensemble runs away on it
    captured = capsys.readouterr()
    out = lines(captured.out)
    assert out[0].split() == ["cat", "K", "AE1", "T"] and len(out[1].split()) == 1 + CAP
    (err,) = lines(captured.err)
    assert err.startswith("attnkit: warning: word 2 ") and f"cut at the length limit of {CAP} phonemes" in err


def test_a_words_length_limit_is_its_own_not_its_batch_mates(capsys):
    """Twelve letters: at most 2 * 12 + 10 = 34 phonemes, also beside a 100-letter word (at most CAP)."""
    assert main(["pronounce", "--model", "accurate", "--beam", "1", "abababababab", LONG]) == 0
    captured = capsys.readouterr()
    short, long = lines(captured.out)
    assert len(short.split()) == 1 + 34 and len(long.split()) == 1 + CAP
    first, second = lines(captured.err)
    assert first.startswith("attnkit: warning: word 1 ") and "length limit of 34 phonemes" in first
    assert second.startswith("attnkit: warning: word 2 ") and f"length limit of {CAP} phonemes" in second


def test_a_word_list_names_the_line_of_a_cut_word(tmp_path, capsys):
    words = tmp_path / "words.txt"
    words.write_text(f"cat\n\ndog {LONG}\n")
    assert main(["pronounce", "--model", "accurate", "--beam", "1", "--file", str(words)]) == 0
    (err,) = lines(capsys.readouterr().err)
    assert err.startswith(f"attnkit: warning: {str(words)!r} line 3 ") and f"length limit of {CAP}" in err


def test_viz_g2p_says_its_output_was_cut(tmp_path, capsys):
    assert main(["viz", "g2p", LONG, "--checkpoint", "accurate", "--out", str(tmp_path)]) == 0
    (err,) = lines(capsys.readouterr().err)
    assert err.startswith("attnkit: warning: 'abab") and f"cut at the length limit of {CAP} phonemes" in err


def test_g2p_pronounce_warns_and_marks_a_cut_output():
    g2p = G2P.load("accurate")  # the ensemble runs away on LONG
    with pytest.warns(
        task.LengthLimitWarning, match=rf"words\[1\] .*cut at the length limit of {CAP} phonemes"
    ) as caught:
        cat, long = g2p.pronounce(["cat", LONG], beam=1)
    assert len(caught) == 1
    assert (cat.cut, long.cut) == (False, True) and len(long.phones) == CAP
    assert long.weights.shape == (CAP, 100)  # no end row: the decoder never emitted the end
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert g2p.pronounce(["cat"], beam=1)[0].cut is False


def test_the_shipped_model_knows_its_longest_training_word():
    from attnkit.data import cmudict

    g2p = G2P.load()
    assert g2p.longest == max(len(e.word) for e in cmudict.load("train")) == 28
    assert g2p.cap == 2 * g2p.longest + 10 == CAP


def test_a_word_past_the_training_range_stops_at_its_cap_and_is_said_to_be_a_guess(capsys):
    """A 2,000-letter word: decoded at most CAP steps (not 4,010), and a warning says why to doubt it."""
    word = "ab" * 1000
    assert main(["pronounce", "cat", word]) == 0
    captured = capsys.readouterr()
    cat, long = lines(captured.out)
    assert cat.split()[1:] == ["K", "AE1", "T"] and 1 <= len(long.split()) - 1 <= CAP
    (err,) = lines(captured.err)
    assert err.startswith("attnkit: warning: word 2 'abab") and "(2,000 letters, longer than the model's" in err
    assert "longest training word (28 letters)" in err
    with pytest.warns(task.LengthLimitWarning, match=r"words\[0\] .*45 letters, longer than .* \(28 letters\)"):
        (p,) = G2P.load().pronounce(["pneumonoultramicroscopicsilicovolcanoconiosis"], beam=1)
    assert len(p.phones) <= CAP


def test_a_trained_model_records_its_longest_training_word(transformer):
    from attnkit.data import cmudict

    g2p = G2P.load(transformer)
    assert g2p.longest == max(len(e.word) for e in cmudict.spread(cmudict.load("train"), 40))
    assert g2p.cap == min(64, 2 * g2p.longest + 10)  # its positions, or its longest word's limit


def test_a_word_longer_than_a_transformers_positions_is_named(transformer, capsys):
    assert main(["pronounce", "--model", str(transformer), "cat", "a" * 70]) == 2
    captured = capsys.readouterr()
    assert lines(captured.out)[0].split()[0] == "cat"
    (err,) = [line for line in lines(captured.err) if line.startswith("attnkit: error: ")]  # the rest: cut outputs
    assert err.startswith("attnkit: error: word 2: 'aaaa") and "70 letters" in err and "at most 64" in err
    with pytest.raises(AttentionError, match=r"words\[0\]: 'a+'\.\.\. has 70 letters; this model reads at most 64"):
        G2P.load(transformer).pronounce(["a" * 70])


def test_a_transformers_output_stops_where_its_positions_end(transformer, capsys):
    """30 letters allow 70 phonemes, the model's positions 64: decoding stops at 64, never a crash
    (and pronounce stops sooner, at its longest training word's limit)."""
    g2p = G2P.load(transformer)
    for beam in (1, 3):
        (h,) = task.decode_words(g2p.model, ["ab" * 15], g2p.letters, g2p.phonemes, beam=beam, cap=10**6)
        assert len(h.tokens) <= 64
    assert main(["pronounce", "--model", str(transformer), "--beam", "1", "ab" * 15]) == 0
    for line in lines(capsys.readouterr().err):
        assert f"length limit of {g2p.cap} phonemes" in line or "its output is a guess" in line
    for beam in (1, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", task.LengthLimitWarning)
            (p,) = g2p.pronounce(["ab" * 15], beam=beam)
        assert len(p.phones) <= g2p.cap <= 64


# -- bad words: every one reported, the good ones pronounced -----------------------------------------
def test_every_bad_word_is_reported_and_the_good_ones_pronounced(capsys):
    assert main(["pronounce", "--beam", "1", "cat", "123", "dog", "", "c4t"]) == 2
    captured = capsys.readouterr()
    assert [line.split()[0] for line in lines(captured.out)] == ["cat", "dog"]
    assert lines(captured.err) == [
        "attnkit: error: word 2: '123' has ['1', '2', '3'] outside the letters vocabulary; "
        'allowed: "abcdefghijklmnopqrstuvwxyz\'-."',
        "attnkit: error: word 4: '' is empty; give at least one letter",
        "attnkit: error: word 5: 'c4t' has ['4'] outside the letters vocabulary; "
        'allowed: "abcdefghijklmnopqrstuvwxyz\'-."',
    ]


def test_strict_stops_at_the_first_bad_word(capsys):
    one_line_error(capsys, ["pronounce", "--strict", "cat", "123", ""], "word 2: '123' has ['1', '2', '3']")
    assert capsys.readouterr().out == ""


def test_every_bad_word_of_a_list_is_reported_by_line(tmp_path, capsys, monkeypatch):
    words = tmp_path / "words.txt"
    words.write_text("cat\n123 dog\n\nc4t\n")
    assert main(["pronounce", "--beam", "1", "--file", str(words)]) == 2
    captured = capsys.readouterr()
    assert [line.split()[0] for line in lines(captured.out)] == ["cat", "dog"]
    first, second = lines(captured.err)
    assert first.startswith(f"attnkit: error: {str(words)!r} line 2: '123' has ['1', '2', '3'] outside")
    assert second.startswith(f"attnkit: error: {str(words)!r} line 4: 'c4t' has ['4'] outside")
    monkeypatch.setattr(sys, "stdin", io.StringIO("cat\n123 dog\n\nc4t\n"))
    one_line_error(capsys, ["pronounce", "--strict", "-"], "standard input line 2: '123' has")


def test_g2p_pronounce_names_the_first_bad_word():
    with pytest.raises(AttentionError, match=r"^words\[1\]: '123' has \['1', '2', '3'\] outside"):
        G2P.load().pronounce(["cat", "123", ""])


# -- paths: checked before decoding, and called what they are ----------------------------------------
def test_viz_g2p_checks_its_file_names_before_decoding(tmp_path, capsys, monkeypatch):
    no_model(monkeypatch)
    one_line_error(capsys, ["viz", "g2p", "a" * 10_000, "--out", str(tmp_path)], "bytes long; this file system allows")
    assert list(tmp_path.iterdir()) == []


def test_viz_g2p_checks_its_folder_can_be_written_before_decoding(tmp_path, capsys, monkeypatch):
    no_model(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else real(path, mode))
    assert main(["viz", "g2p", "cat", "--out", str(locked / "pictures")]) == 1  # the file system: exit 1
    assert lines(capsys.readouterr().err) == [f"attnkit: error: Permission denied: {str(locked)!r}"]


@pytest.mark.parametrize(
    "argv",
    [
        ["pronounce", "cat", "--model", "/dev/null"],
        ["eval", "/dev/null"],
        ["viz", "g2p", "cat", "--checkpoint", "/dev/null"],
    ],
)
def test_a_device_given_as_a_checkpoint_is_called_what_it_is(tmp_path, capsys, argv):
    argv = [*argv, "--out", str(tmp_path)] if argv[0] == "viz" else argv
    one_line_error(capsys, argv, "checkpoint '/dev/null' is not a regular file")


# -- the parser: --version, and one "attnkit" per error ----------------------------------------------
def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"attnkit {importlib.metadata.version('attnkit')}\n"


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "attnkit: error: the following arguments are required: command (see attnkit --help)"),
        (["--verison"], "attnkit: error: the following arguments are required: command (see attnkit --help)"),
        (["pronounce", "--beam", "x", "cat"], "attnkit: error: pronounce: argument --beam: must be a whole number"),
        (["train", "g2p", "--epochs", "x"], "attnkit: error: train g2p: argument --epochs: must be a whole number"),
    ],
)
def test_parser_errors_name_attnkit_once(capsys, argv, expected):
    assert main(argv) == 2
    (err,) = lines(capsys.readouterr().err)
    assert err.startswith(expected) and err.count("attnkit") == 2, err  # the prefix and the --help hint


# -- commands that describe themselves ---------------------------------------------------------------
def test_bench_help_lists_its_cases(capsys):
    from attnkit.bench.cases import CASES

    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    listed = out[out.index("cases") :].split()
    for name in [*CASES, "train"]:
        assert f"{name}:" in listed, name


def test_experiment_training_lines_name_their_model(tmp_path, capsys, one_thread):
    from attnkit.experiments import g2p

    size = g2p.TrainSize(24, 4, 2, 8, 2e-3, 1, 0)
    g2p.train("rnn", {"attention": "luong-general", "embed_dim": 8, "hidden_dim": 16}, size, tmp_path / "luong")
    out = lines(capsys.readouterr().out)
    assert len(out) == 2 and all(line.startswith("luong: epoch ") for line in out), out


# -- memory: an allocation the machine cannot make is one line, exit 1 -------------------------------
ALLOCATOR = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 268435456 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.mark.parametrize(
    "error, shown",
    [(RuntimeError(ALLOCATOR), "out of memory (268,435,456 bytes at once)"), (MemoryError(), "out of memory:")],
)
def test_running_out_of_memory_is_one_line(capsys, monkeypatch, error, shown):
    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr(G2P, "load", classmethod(exhausted))
    assert main(["pronounce", "cat"]) == 1
    captured = capsys.readouterr()
    (err,) = lines(captured.err)
    assert err.startswith(f"attnkit: error: {shown}") and "make it smaller" in err and captured.out == ""


def test_another_runtime_error_keeps_its_traceback(monkeypatch):
    """A bug is not dressed up as bad input: only allocation failures become a line."""

    def bug(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    monkeypatch.setattr(G2P, "load", classmethod(bug))
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        main(["pronounce", "cat"])
