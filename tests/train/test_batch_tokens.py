"""Batches by token budget, bucketed by length (issue 12): every batch's padded size stays within
the budget, every example is in one batch per epoch, the batches are a pure function of the seed
and the epoch, a run resumes them exactly, and bad budgets are one-line errors."""

import itertools
import json

import pytest
import torch
from cli_errors import one_line_error

from attnkit import AttentionError
from attnkit.cli import main
from attnkit.tasks.g2p import G2PTask
from attnkit.train import TrainConfig, Trainer, checkpoint
from attnkit.train.batching import token_batches

pytestmark = pytest.mark.usefixtures("one_thread")


def test_token_batches_fill_the_budget_in_length_order():
    lengths = [5, 1, 3, 3, 8, 2, 2, 7, 1, 4]
    batches = token_batches(range(10), lambda i: (lengths[i],), lambda n, m: n * m[0], 9)
    assert sorted(i for b in batches for i in b) == list(range(10))  # each example once
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 9
    # sorted by length, each batch as long as the next example would not fit
    assert [[lengths[i] for i in b] for b in batches] == [[1, 1, 2, 2], [3, 3], [4], [5], [7], [8]]
    for b, nxt in itertools.pairwise(batches):
        assert (len(b) + 1) * max(lengths[i] for i in [*b, nxt[0]]) > 9
    with pytest.raises(AttentionError, match="batch_tokens=6 is smaller than one example, which needs 7 padded"):
        token_batches(range(10), lambda i: (lengths[i],), lambda n, m: n * m[0], 6)


def test_g2p_token_batches_are_bucketed_seeded_and_within_budget():
    task = G2PTask("rnn", {"hidden_dim": 8}, limit=500, valid_limit=1)
    budget = 400
    epoch0 = task.batches(0, torch.Generator().manual_seed(11), 256, batch_tokens=budget)
    again = task.batches(0, torch.Generator().manual_seed(11), 256, batch_tokens=budget)
    other = task.batches(1, torch.Generator().manual_seed(12), 256, batch_tokens=budget)
    assert len(epoch0) == len(again) and all(
        torch.equal(a, b) for x, y in zip(epoch0, again) for a, b in zip(x, y)
    )  # reproducible
    assert [s.shape for s, _ in epoch0] != [s.shape for s, _ in other]  # another epoch, another order
    rows = 0
    for src, tgt in epoch0:
        assert src.shape[0] * (src.shape[1] + tgt.shape[1] - 1) <= budget  # letters + phonemes with one mark
        rows += src.shape[0]
    assert rows == len(task.pairs)
    sizes = [s.shape[0] for s, _ in epoch0]
    assert max(sizes) > 3 * min(sizes)  # short words many to a batch, long words few
    padding = sum(int(s.eq(0).sum()) for s, _ in epoch0) / sum(s.numel() for s, _ in epoch0)
    assert padding < 0.1  # bucketed: little padding in the sources


def _tiny(out):
    task = G2PTask("rnn", {"hidden_dim": 16, "embed_dim": 8, "dropout": 0.3}, limit=200, valid_limit=4)
    config = TrainConfig(epochs=3, batch_tokens=300, checkpoint_every=4, seed=2)
    return Trainer(task, config, out, progress=False)


def test_a_token_budget_run_resumes_exactly(tmp_path):
    first = _tiny(tmp_path / "run")
    per_epoch = len(first._epoch_batches(0))
    first.fit(max_steps=per_epoch + 1)  # the checkpoint at the epoch's end
    step = checkpoint.read_meta(tmp_path / "run" / "last.safetensors")["progress"]["step"]
    assert step == per_epoch
    resumed = _tiny(tmp_path / "run")
    resumed.fit(resume=True, max_steps=5)
    fresh = _tiny(tmp_path / "fresh")
    fresh.fit(max_steps=step + 5)
    assert resumed.losses == fresh.losses[step:]  # bit for bit
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["batch_tokens"] == 300


def test_cli_trains_with_a_token_budget(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "g2p", "--hidden-dim", "8", "--embed-dim", "4", "--limit", "40", "--valid-limit", "4"]
    assert main([*argv, "--batch-tokens", "200", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert "batches of <= 200 tokens" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["train"]["batch_tokens"] == 200


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--batch-tokens", "0"], "--batch-tokens: must be a whole number >= 1, got '0'"),
        (["--batch-tokens", "many"], "--batch-tokens: must be a whole number, got 'many'"),
        (["--batch-tokens", "500", "--batch-size", "8"], "--batch-tokens replaces --batch-size"),
        (["--batch-tokens", "5", "--limit", "20"], "batch_tokens=5 is smaller than one example"),
    ],
)
def test_bad_token_budgets_are_one_line(capsys, tmp_path, extra, expected):
    one_line_error(capsys, ["train", "g2p", *extra, "--out", str(tmp_path / "run"), "--no-progress"], expected)
