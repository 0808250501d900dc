"""Training G2P models on tiny data: the loss falls, 20 words are learnt by heart, a killed run
resumes exactly, checkpoints are atomic, hard attention learns through REINFORCE."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from attnkit import AttentionError
from attnkit.data import cmudict
from attnkit.tasks.g2p import G2P, G2PTask
from attnkit.train import TrainConfig, Trainer, checkpoint

TINY_RNN = {"hidden_dim": 64, "embed_dim": 32, "dropout": 0.0}
TINY_TRANSFORMER = {"d_model": 64, "heads": 2, "ff_dim": 128, "encoder_layers": 2, "decoder_layers": 2, "dropout": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_falls_on_a_small_training_set(tmp_path):
    task = G2PTask("rnn", {"hidden_dim": 32, "embed_dim": 16}, limit=300, valid_limit=20)
    trainer = Trainer(
        task, TrainConfig(epochs=8, batch_size=16, lr=5e-3, warmup_steps=5, patience=8), tmp_path, progress=False
    )
    trainer.fit()
    first, last = sum(trainer.losses[:5]) / 5, sum(trainer.losses[-5:]) / 5
    assert last < 0.75 * first, (first, last)
    history = checkpoint.load(tmp_path / "last.safetensors")[1]["progress"]["history"]
    assert [h["epoch"] for h in history] == list(range(1, 9)) and history[-1]["per"] < history[0]["per"]


@pytest.mark.parametrize(
    "model, config, lr",
    [
        ("rnn", TINY_RNN, 1e-2),
        ("rnn", {**TINY_RNN, "attention": "bahdanau", "cell": "gru"}, 1e-2),
        ("transformer", TINY_TRANSFORMER, 3e-3),
    ],
)
def test_model_learns_twenty_words_by_heart(tmp_path, model, config, lr):
    task = G2PTask(model, config, limit=20)
    task.valid = cmudict.spread(cmudict.load("train"), 20)  # validate on the training words themselves
    config = TrainConfig(epochs=80, batch_size=32, lr=lr, warmup_steps=5, label_smoothing=0.0, patience=80)
    state = Trainer(task, config, tmp_path, progress=False).fit()
    assert state["best"] == 0.0  # WER 0 %: every word right
    g2p = G2P.load(tmp_path)  # the best checkpoint reloads into the same answers
    words = task.valid
    outputs = g2p.pronounce([e.word for e in words], beam=1)
    assert all(o.phones in e.pronunciations for o, e in zip(outputs, words))


def test_hard_attention_learns_its_scores_through_reinforce():
    task = G2PTask("rnn", {**TINY_RNN, "attention": "hard"}, limit=40, valid_limit=1)
    model = task.build().train()
    batch = task.batches(0, torch.Generator().manual_seed(0), 16)[0]
    loss, _ = task.loss(model, batch, TrainConfig())
    loss.backward()
    # the sampled weights carry no gradient: the score's W learns from the REINFORCE term only
    grad = model.attention.score_params["W"].grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("attention", ["gumbel", "sparsemax", "entmax15"])
def test_gumbel_and_sparse_attention_learn_their_scores_and_decode_deterministically(attention):
    task = G2PTask("rnn", {**TINY_RNN, "attention": attention}, limit=40, valid_limit=1)
    torch.manual_seed(0)
    model = task.build().train()
    batch = task.batches(0, torch.Generator().manual_seed(0), 16)[0]
    loss, _ = task.loss(model, batch, TrainConfig())
    loss.backward()
    grad = model.attention.score_params["W"].grad  # straight-through / sparse maps pass a gradient to the score
    assert grad is not None and grad.abs().sum() > 0
    model.eval()  # gumbel: the argmax at inference, no noise; the sparse maps have none
    src = batch[0][:4]
    with torch.no_grad():
        first, second = (
            model.decode(model.encode(src), batch[1][:4, :-1]),
            model.decode(model.encode(src), batch[1][:4, :-1]),
        )
    torch.testing.assert_close(first.weights, second.weights, rtol=0, atol=0)
    if attention == "gumbel":
        assert ((first.weights == 0) | (first.weights == 1)).all()  # one-hot rows at inference


CHILD = textwrap.dedent(
    """
    import sys, torch
    from attnkit.tasks.g2p import G2PTask
    from attnkit.train import TrainConfig, Trainer
    torch.set_num_threads(1)
    task = G2PTask("rnn", {"hidden_dim": 16, "embed_dim": 8, "dropout": 0.3}, limit=400, valid_limit=5)
    config = TrainConfig(epochs=50, batch_size=16, checkpoint_every=3, seed=7)
    Trainer(task, config, sys.argv[1], progress=False).fit()
    """
)


def _tiny_resume_setup(out):
    task = G2PTask("rnn", {"hidden_dim": 16, "embed_dim": 8, "dropout": 0.3}, limit=400, valid_limit=5)
    config = TrainConfig(epochs=50, batch_size=16, checkpoint_every=3, seed=7)
    return Trainer(task, config, out, progress=False)


def test_killed_run_resumes_with_the_identical_next_losses(tmp_path):
    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(killed)])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait for a checkpoint past the first epoch's end
            if (killed / "last.safetensors").exists() and checkpoint.load(killed / "last.safetensors")[1]["progress"][
                "step"
            ] >= 30:
                break
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    step = checkpoint.load(killed / "last.safetensors")[1]["progress"]["step"]
    assert step >= 30 and step % 3 == 0

    resumed = _tiny_resume_setup(killed)
    resumed.fit(resume=True, max_steps=4)
    fresh = _tiny_resume_setup(tmp_path / "fresh")
    fresh.fit(max_steps=step + 4)
    assert resumed.losses == fresh.losses[step:]  # bit for bit


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"x": torch.ones(3)}, {"n": 1})

    def torn(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", torn)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"x": torch.zeros(3)}, {"n": 2})
    monkeypatch.undo()
    tensors, meta = checkpoint.load(path)
    assert tensors["x"].tolist() == [1.0, 1.0, 1.0] and meta["n"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary file left behind


def test_corrupt_and_foreign_checkpoints_are_named(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(AttentionError, match=r"checkpoint '.*bad.safetensors' is corrupt or not a safetensors file"):
        checkpoint.load(bad)
    from safetensors.torch import save_file

    save_file({"x": torch.ones(1)}, tmp_path / "foreign.safetensors")
    with pytest.raises(AttentionError, match="was not written by attnkit"):
        checkpoint.load(tmp_path / "foreign.safetensors")
    with pytest.raises(AttentionError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.safetensors")


def test_a_checkpoint_that_does_not_fit_its_model_is_named(tmp_path):
    task = G2PTask("rnn", {"hidden_dim": 16, "embed_dim": 8}, limit=10, valid_limit=2)
    trainer = Trainer(task, TrainConfig(epochs=1, batch_size=8), tmp_path, progress=False)
    trainer.fit()
    tensors, meta = checkpoint.load(tmp_path / "best.safetensors")
    tensors["model.out.weight"] = tensors["model.out.weight"][:, :4]
    del tensors["model.bridge.bias"]
    checkpoint.save(tmp_path / "edited.safetensors", tensors, {k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(
        AttentionError,
        match=r"does not match the model \(missing: bridge.bias; shape: out.weight \(87, 4\) != \(87, 32\)\)",
    ):
        G2P.load(tmp_path / "edited.safetensors")
    tensors, meta = checkpoint.load(tmp_path / "best.safetensors")
    meta["task"]["phonemes"][-1] = "ZZ"
    checkpoint.save(tmp_path / "other.safetensors", tensors, {k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(AttentionError, match="trained with other letters or phonemes"):
        G2P.load(tmp_path / "other.safetensors").evaluate(limit=5)


def test_resume_refuses_another_configuration(tmp_path):
    task = G2PTask("rnn", {"hidden_dim": 16, "embed_dim": 8}, limit=10, valid_limit=2)
    Trainer(task, TrainConfig(epochs=1, batch_size=8), tmp_path, progress=False).fit()
    other = Trainer(task, TrainConfig(epochs=1, batch_size=4), tmp_path, progress=False)
    with pytest.raises(AttentionError, match="was written for another configuration"):
        other.fit(resume=True)


def test_kept_epochs_are_the_last_n_and_average_into_a_loadable_checkpoint(tmp_path):
    task = G2PTask("rnn", {"hidden_dim": 8, "embed_dim": 4}, limit=40, valid_limit=5)
    config = TrainConfig(epochs=3, batch_size=16, warmup_steps=2, keep_epochs=2)
    Trainer(task, config, tmp_path, progress=False).fit()
    kept = sorted(p.name for p in tmp_path.glob("epoch-*.safetensors"))
    assert kept == ["epoch-002.safetensors", "epoch-003.safetensors"]
    (a, _), (b, meta) = (checkpoint.load(tmp_path / name) for name in kept)
    averaged, avg_meta = checkpoint.average([tmp_path / name for name in kept])
    assert avg_meta == meta
    for name, t in averaged.items():
        torch.testing.assert_close(t, (a[name] + b[name]) / 2)
    avg_meta.pop("format")
    checkpoint.save(tmp_path / "averaged.safetensors", averaged, avg_meta)
    assert len(G2P.load(tmp_path / "averaged.safetensors").pronounce(["cat"], beam=1)[0].phones) > 0


def test_average_refuses_checkpoints_of_other_models(tmp_path):
    for i, hidden in enumerate((8, 6)):
        task = G2PTask("rnn", {"hidden_dim": hidden, "embed_dim": 4}, limit=20, valid_limit=2)
        Trainer(task, TrainConfig(epochs=1, batch_size=16, warmup_steps=1), tmp_path / str(i), progress=False).fit()
    with pytest.raises(checkpoint.CheckpointError, match="holds other tensors than"):
        checkpoint.average([tmp_path / "0" / "best.safetensors", tmp_path / "1" / "best.safetensors"])
    with pytest.raises(checkpoint.CheckpointError, match="average needs at least one checkpoint"):
        checkpoint.average([])


def test_evaluate_decodes_with_the_length_penalty_it_is_given():
    from attnkit.tasks.g2p import decode_words, score

    g2p = G2P.load(
        "accurate", int8=False
    )  # trained, so the penalty changes which outputs win; float32: the model's outputs
    entries = cmudict.spread(cmudict.load("valid"), 300)
    scores = []
    for alpha in (0.0, 5.0):
        hyps = decode_words(g2p.model, [e.word for e in entries], g2p.letters, g2p.phonemes, beam=4, alpha=alpha)
        scores.append(score([h.tokens for h in hyps], [e.pronunciations for e in entries]))
        got = g2p.evaluate("valid", beam=4, alpha=alpha, limit=300)
        assert {k: got[k] for k in scores[-1]} == scores[-1]
    assert scores[0] != scores[1]  # the penalty changes the figures, so an alpha evaluate dropped would show
