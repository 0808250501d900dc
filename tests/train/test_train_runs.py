"""Run folders and training options of ``attnkit train``: one training per run folder at a time, a
resumed run's history equal to an uninterrupted one's, and training options refused in one line
before any data is read (issue 23, items 7 to 10)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from cli_errors import one_line_error

from attnkit import AttentionError
from attnkit.cli import main
from attnkit.tasks.g2p import G2PTask
from attnkit.train import TrainConfig, Trainer, checkpoint
from attnkit.train.trainer import FILES

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--limit", "10", "--valid-limit", "2", "--hidden-dim", "16", "--embed-dim", "8", "--no-progress"]
ENDLESS = ["--epochs", "1000000", "--patience", "1000000", "--checkpoint-every", "1"]  # trains until killed


# -- item 7: one training per run folder ----------------------------------------------------------
@pytest.fixture
def training(tmp_path):
    """``attnkit train g2p`` in another process, training in ``tmp_path/run`` until the test ends;
    yields the folder and the process once its first checkpoint is there."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "attnkit", "train", "g2p", *TINY, *ENDLESS, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120  # a guard against a hang, not a measurement
        while not (out / "last.safetensors").exists():
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "the other training wrote no checkpoint"
            time.sleep(0.05)
        yield out, child
    finally:
        child.kill()
        child.wait()


def test_a_second_training_in_a_busy_run_folder_is_refused(training, capsys):
    out, child = training
    busy = (
        f"run folder {str(out)!r} is in use by another training (pid {child.pid}); "
        "wait for it or pick another --out"
    )
    one_line_error(capsys, ["train", "g2p", *TINY, "--epochs", "1", "--out", str(out)], busy)
    one_line_error(capsys, ["train", "g2p", "--out", str(out), "--resume", "--no-progress"], busy)
    classify = ["train", "classify", "--limit", "20", "--valid-limit", "5", "--epochs", "1", "--no-progress"]
    one_line_error(capsys, [*classify, "--out", str(out)], busy)
    task = G2PTask("rnn", {"hidden_dim": 16, "embed_dim": 8}, limit=10, valid_limit=2)
    with pytest.raises(AttentionError, match=r"is in use by another training \(pid \d+\); .* pick another out"):
        Trainer(task, TrainConfig(epochs=1), out, progress=False).fit()
    assert child.poll() is None  # the first training goes on, its folder its own


def test_a_killed_trainings_lock_blocks_nobody(training):
    out, child = training
    child.send_signal(signal.SIGKILL)  # no chance to clean up: the lock goes with the process
    child.wait()
    task = G2PTask("rnn", {"hidden_dim": 16, "embed_dim": 8}, limit=10, valid_limit=2)
    config = TrainConfig(epochs=1_000_000, patience=1_000_000, checkpoint_every=1)  # the command line's run
    step = checkpoint.read_meta(out / "last.safetensors")["progress"]["step"]
    assert Trainer(task, config, out, progress=False).fit(resume=True, max_steps=1)["step"] == step + 1


def test_a_finished_training_leaves_only_its_files(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "g2p", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


# -- item 8: a resumed run's history is the uninterrupted run's ------------------------------------
def _trainer(out):
    task = G2PTask("rnn", {"hidden_dim": 16, "embed_dim": 8, "dropout": 0.3}, limit=120, valid_limit=5)
    config = TrainConfig(epochs=3, batch_size=16, warmup_steps=2, checkpoint_every=4, seed=5)
    return Trainer(task, config, out, progress=False)


def _history(out) -> list[dict]:
    """``history.json`` but its ``elapsed_s``, the clock's reading."""
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in json.loads((out / "history.json").read_text())]


def test_a_resumed_run_writes_the_history_of_an_uninterrupted_one(tmp_path):
    whole = _trainer(tmp_path / "whole")
    whole.fit()
    per_epoch = len(whole._epoch_batches(0))
    _trainer(tmp_path / "cut").fit(max_steps=per_epoch + 7)  # as if killed 3 steps after a checkpoint
    progress = checkpoint.read_meta(tmp_path / "cut" / "last.safetensors")["progress"]
    assert progress["epoch"] == 1 and 0 < progress["batch"] < per_epoch  # in the middle of epoch 2
    _trainer(tmp_path / "cut").fit(resume=True)
    assert _history(tmp_path / "cut") == _history(tmp_path / "whole")  # train_loss too, bit for bit
    assert len(_history(tmp_path / "whole")) == 3


# -- item 9: --distil without --teacher -----------------------------------------------------------
@pytest.mark.parametrize("weight", ["0.5", "0.3"])  # 0.5, the default, was silently ignored
def test_distil_without_a_teacher_names_both_flags(tmp_path, capsys, weight):
    argv = ["train", "g2p", *TINY, "--distil", weight, "--out", str(tmp_path / "r")]
    expected = "--distil weighs the teacher's term in the loss; add --teacher CHECKPOINT or drop --distil"
    one_line_error(capsys, argv, expected)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("weight", ["0", "1.5", "-0.2", "nan", "inf", "1e308"])
def test_distil_outside_0_1_is_refused_as_a_flag(tmp_path, capsys, weight):
    argv = ["train", "g2p", *TINY, "--teacher", "t.safetensors", "--distil", weight, "--out", str(tmp_path / "r")]
    one_line_error(capsys, argv, f"argument --distil: must be a number in (0, 1], got {weight!r}")


# -- item 10: training options with bounds, and training that goes non-finite ---------------------
@pytest.mark.parametrize("trainee", ["g2p", "classify"])
@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--lr", "1e308"], "lr must be <= 1, got 1e+308"),
        (["--lr", "1.5"], "lr must be <= 1, got 1.5"),
        (["--weight-decay", "1e308"], "weight_decay x lr must be < 1, got 1e+308 x 0.002"),
        (["--lr", "0.5", "--weight-decay", "2"], "weight_decay x lr must be < 1, got 2.0 x 0.5"),
        (["--seed", str(2**70)], f"seed must be in 0..{2**32 - 1}, got {2**70}"),
    ],
)
def test_training_options_beyond_their_bounds_are_one_line(tmp_path, capsys, trainee, flags, expected):
    small = ["--limit", "10", "--valid-limit", "2", "--epochs", "1", "--no-progress"]  # short, should it train
    one_line_error(capsys, ["train", trainee, *flags, *small, "--out", str(tmp_path / "r")], expected)
    assert not (tmp_path / "r").exists()


def test_the_bounds_keep_what_trains():
    TrainConfig(lr=1.0, weight_decay=0.99)  # lr x weight_decay < 1: every weight shrinks, none flips sign
    TrainConfig(clip_norm=1e308)  # no clipping, in effect: a choice, not a mistake
    TrainConfig(seed=2**32 - 1, warmup_steps=10**12)  # a warm-up longer than the run keeps lr below its peak
    with pytest.raises(AttentionError, match=r"lr must be <= 1, got 2\.0 \(AdamW moves"):
        TrainConfig(lr=2.0)


def _poisoned(part):
    """A G2PTask.loss whose value or gradient is NaN: what a learning rate far too high gives."""
    loss = G2PTask.loss

    def poisoned(self, model, batch, config):
        value, count = loss(self, model, batch, config)
        if part == "loss":
            return value * float("nan"), count
        weight = next(model.parameters())
        return value + torch.sqrt(weight.abs().sum() * 0), count  # the same value; d sqrt(x)/dx at 0 is inf

    return poisoned


@pytest.mark.parametrize("part", ["loss", "gradient"])
def test_a_non_finite_training_step_is_one_line_naming_the_learning_rate(tmp_path, capsys, monkeypatch, part):
    monkeypatch.setattr(G2PTask, "loss", _poisoned(part))
    out = tmp_path / "r"
    argv = ["train", "g2p", *TINY, "--epochs", "1", "--lr", "0.5", "--out", str(out)]
    expected = (
        f"training {part} became nan at step 0: the learning rate (--lr 0.5, 0.00125 at this step) is likely "
        "too high; lower --lr or lengthen --warmup-steps"
    )
    one_line_error(capsys, argv, expected)
    assert not (out / "last.safetensors").exists() and not (out / "best.safetensors").exists()
