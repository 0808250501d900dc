"""The command line: the tour runs every kind; bad input is one line on stderr and exit 2."""

import subprocess
import sys

import pytest

from attnkit import SCORES
from attnkit.cli import main
from attnkit.cli.tour import SECTIONS


def test_smoke_tour_prints_every_score_and_normalizer(capsys):
    assert main(["tour"]) == 0
    out = capsys.readouterr().out
    for name in list(SCORES) + ["sparsemax", "entmax15", "hard", "topk", "sample", "gumbel"]:
        assert name in out, name
    for formula in (s.formula for s in SCORES.values()):
        assert formula in out  # printed literally, not eaten as markup


def test_tour_lists_its_sections_with_a_line_each(capsys):
    assert main(["tour", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(SECTIONS)
    for line, name in zip(lines, SECTIONS):
        assert len(line.split()) > 3, line  # the name and what the section shows
        assert line.split(maxsplit=1)[1] == SECTIONS[name].__doc__.splitlines()[0], line


def test_unknown_section_is_one_line_and_exit_2(capsys):
    assert main(["tour", "--section", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "attnkit: error: --section 'nope' is unknown; expected one of "
        "['scores', 'normalizers', 'regions', 'cross', 'multihead', 'structure']"
    ]


@pytest.mark.parametrize("section", ["cross"])
def test_smoke_python_dash_m_runs_a_section(section):
    done = subprocess.run(
        [sys.executable, "-m", "attnkit", "tour", "--section", section], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "le" in done.stdout and "noir" in done.stdout


@pytest.mark.parametrize(
    "argv, status",
    [
        (["train", "g2p", "--limit", "0"], 2),
        (["pronounce", "cat", "--model", "no/such/model.safetensors"], 2),
    ],
)
def test_python_dash_m_fails_in_one_line_without_a_traceback(argv, status):
    done = subprocess.run(
        [sys.executable, "-m", "attnkit", *argv], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == status
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnkit: error: ") and "Traceback" not in done.stderr, lines
