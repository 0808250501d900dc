"""``attnkit pronounce`` over a word list (issue 12): words from a file or standard input, in
their order, the same as given as arguments; bad lists are one-line errors naming the line."""

import io
import subprocess
import sys

import pytest
from cli_errors import one_line_error

from attnkit.cli import main

WORDS = "cat\n\n  dog attention\nx-ray\n"  # blank lines and several words to a line are fine


def test_pronounce_reads_a_file_in_order(tmp_path, capsys):
    assert main(["pronounce", "cat", "dog", "attention", "x-ray", "--beam", "2"]) == 0
    expected = capsys.readouterr().out
    (tmp_path / "words.txt").write_text(WORDS)
    assert main(["pronounce", "--file", str(tmp_path / "words.txt"), "--beam", "2"]) == 0
    got = capsys.readouterr().out
    assert got == expected and [line.split()[0] for line in got.splitlines()] == ["cat", "dog", "attention", "x-ray"]


@pytest.mark.parametrize("argv", [["pronounce", "-"], ["pronounce", "--file", "-"]])
def test_pronounce_reads_standard_input(monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "stdin", io.StringIO(WORDS))
    assert main([*argv, "--beam", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["cat", "dog", "attention", "x-ray"]
    assert lines[0].split() == ["cat", "K", "AE1", "T"]


def test_smoke_pronounce_reads_a_pipe():
    done = subprocess.run(
        [sys.executable, "-m", "attnkit", "pronounce", "-", "--beam", "1"],
        input="Cat\ndog\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines()[0].split() == ["cat", "K", "AE1", "T"]


def test_bad_word_lists_are_one_line(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.txt"
    bad.write_text("cat\ndog\nna\u00efve\n")
    one_line_error(capsys, ["pronounce", "--file", str(bad)], f"{str(bad)!r} line 3: 'naïve' has ['ï'] outside")
    (tmp_path / "empty.txt").write_text("\n  \n")
    one_line_error(capsys, ["pronounce", "--file", str(tmp_path / "empty.txt")], "holds no words")
    (tmp_path / "binary.txt").write_bytes(b"cat\n\xff\xfe\n")
    one_line_error(capsys, ["pronounce", "--file", str(tmp_path / "binary.txt")], "is not UTF-8 text")
    one_line_error(capsys, ["pronounce", "--file", str(tmp_path)], "is a folder; give a file of words")
    one_line_error(capsys, ["pronounce", "cat", "--file", str(bad)], "give words or --file, not both")
    one_line_error(capsys, ["pronounce"], "give words to pronounce, --file PATH, or -")
    one_line_error(capsys, ["pronounce", "--file", str(bad), "--plot", "a.png"], "--plot draws one picture per word")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    one_line_error(capsys, ["pronounce", "-"], "standard input holds no words")
    assert main(["pronounce", "--file", str(tmp_path / "missing.txt")]) == 1  # the file system: exit 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No such file or directory" in err[0] and "missing.txt" in err[0]
