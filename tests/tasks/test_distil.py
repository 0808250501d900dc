"""Distillation and warm starts of G2P runs: the teacher's targets are its teacher-forced
distributions, the loss mixes them with the references by ``distil``, a distilled run resumes
exactly and refuses a teacher that changed, and ``init`` starts from a checkpoint's weights."""

import pytest
import torch
import torch.nn.functional as F

from attnkit import AttentionError
from attnkit.cli import main
from attnkit.data.vocab import BOS, PAD
from attnkit.tasks.g2p import G2P, G2PDoc, G2PTask, pack, teacher_targets
from attnkit.train import TrainConfig, Trainer, checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"hidden_dim": 16, "embed_dim": 8}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """Two tiny G2P runs (seeds 0 and 1) and their ensemble packed into ``ens.safetensors``."""
    folder = tmp_path_factory.mktemp("teacher")
    task = G2PTask("rnn", SMALL, limit=60, valid_limit=4)
    for seed in (0, 1):
        Trainer(
            task, TrainConfig(epochs=1, batch_size=16, warmup_steps=1, seed=seed), folder / str(seed), progress=False
        ).fit()
    pack([folder / "0", folder / "1"], folder / "ens.safetensors")
    return folder


def test_the_targets_are_the_teachers_distributions_one_word_at_a_time(teacher):
    model = G2P.load(teacher / "ens.safetensors").model
    task = G2PTask("rnn", SMALL, limit=30, valid_limit=4)
    soft, offsets = teacher_targets(model, task.pairs, task.letters, task.phonemes, batch_size=7)
    assert offsets[-1] == soft.shape[0] == sum(len(t) + 1 for _, t in task.pairs) and soft.dtype == torch.float16
    with torch.no_grad():
        for i, (src, tgt) in enumerate(task.pairs):  # alone, unpadded
            expected = model(torch.tensor([src]), torch.tensor([[BOS, *tgt]])).logits.softmax(-1)[0]
            torch.testing.assert_close(soft[offsets[i] : offsets[i + 1]].float(), expected, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("distil", [0.3, 1.0])
def test_the_loss_mixes_the_references_and_the_teacher(teacher, distil):
    task = G2PTask(
        "rnn",
        {**SMALL, "dropout": 0.0},
        limit=30,
        valid_limit=4,
        teacher=str(teacher / "ens.safetensors"),
        distil=distil,
    )
    ens = G2P.load(teacher / "ens.safetensors").model
    model = task.build()
    config = TrainConfig(label_smoothing=0.1)
    for batch in task.batches(0, torch.Generator().manual_seed(0), 8)[:3]:
        src, tgt, soft = batch
        gold = tgt[:, 1:]
        real = gold.ne(PAD)
        with torch.no_grad():  # the batch's rows are the teacher's distributions of its own pairs
            expected = ens(src, tgt[:, :-1]).logits.softmax(-1)
        torch.testing.assert_close(soft[real].float(), expected[real], atol=1e-3, rtol=1e-3)
        assert not soft[~real].any()
        loss, count = task.loss(model, batch, config)
        logp = model(src, tgt[:, :-1]).logits.log_softmax(-1)
        nll = -logp.gather(-1, gold.unsqueeze(-1)).squeeze(-1)
        smoothed = (0.9 * nll - 0.1 * logp.mean(-1))[real].mean()
        taught = -(soft.float() * logp).sum(-1)[real].mean()
        torch.testing.assert_close(loss, (1 - distil) * smoothed + distil * taught)
        assert count == int(real.sum())


def test_a_teacher_of_the_references_leaves_plain_cross_entropy(teacher):
    """With one-hot teacher rows (the references) and no smoothing, any distil gives the same loss."""
    task = G2PTask("rnn", {**SMALL, "dropout": 0.0}, limit=20, valid_limit=4, teacher=str(teacher / "0"), distil=0.7)
    model = task.build()
    src, tgt, soft = task.batches(0, torch.Generator().manual_seed(1), 8)[0]
    gold = tgt[:, 1:]
    onehot = F.one_hot(gold, soft.shape[-1]).half() * gold.ne(PAD).unsqueeze(-1)
    loss, _ = task.loss(model, (src, tgt, onehot), TrainConfig(label_smoothing=0.0))
    plain, _ = task.loss(model, (src, tgt), TrainConfig(label_smoothing=0.0))
    torch.testing.assert_close(loss, plain)


def test_the_distillation_loss_has_exact_gradients(teacher):
    task = G2PTask("rnn", {**SMALL, "dropout": 0.0}, limit=20, valid_limit=4, teacher=str(teacher / "0"))
    src, tgt, soft = task.batches(0, torch.Generator().manual_seed(2), 4)[0]

    class Logits(torch.nn.Module):  # the loss as a function of the logits alone
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, src, tgt_in):
            return type("Out", (), {"logits": self.logits, "log_prob": None})()

    shape = (*tgt[:, 1:].shape, soft.shape[-1])
    logits = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    config = TrainConfig(label_smoothing=0.1)
    assert torch.autograd.gradcheck(lambda x: task.loss(Logits(x), (src, tgt, soft), config)[0], (logits,))


def test_a_distilled_run_resumes_exactly_and_refuses_a_changed_teacher(teacher, tmp_path):
    ens = tmp_path / "ens.safetensors"
    pack([teacher / "0", teacher / "1"], ens)
    task = lambda: G2PTask("rnn", SMALL, limit=40, valid_limit=4, teacher=str(ens), distil=0.5)
    config = TrainConfig(epochs=2, batch_size=16, warmup_steps=1, checkpoint_every=1)
    whole = Trainer(task(), config, tmp_path / "whole", progress=False)
    whole.fit()
    Trainer(task(), config, tmp_path / "cut", progress=False).fit(max_steps=3)
    resumed = Trainer(task(), config, tmp_path / "cut", progress=False)
    resumed.fit(resume=True)
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    doc = checkpoint.read_meta(tmp_path / "cut" / "last.safetensors")["task"]["teacher"]
    assert doc["path"] == str(ens) and doc["distil"] == 0.5 and len(doc["sha256"]) == 64
    assert main(["train", "g2p", "--out", str(tmp_path / "cut"), "--resume", "--no-progress"]) == 0
    pack([teacher / "1", teacher / "0"], ens)  # the same file name, another teacher
    with pytest.raises(AttentionError, match="was written for another configuration"):
        Trainer(task(), config, tmp_path / "cut", progress=False).fit(resume=True)


def test_init_starts_from_the_checkpoints_weights(teacher, tmp_path):
    task = G2PTask("rnn", {"dropout": 0.2}, limit=20, valid_limit=4, init=str(teacher / "0"))
    start = checkpoint.load(teacher / "0" / "best.safetensors")[0]
    assert task.model_config == {**G2PTask("rnn", SMALL, limit=1, valid_limit=1).model_config, "dropout": 0.2}
    model = task.build()
    assert model.config.dropout == 0.2
    assert all(torch.equal(v, start[f"model.{k}"]) for k, v in model.state_dict().items())
    assert task.describe()["init"]["path"] == str(teacher / "0")
    Trainer(task, TrainConfig(epochs=1, batch_size=16, warmup_steps=1), tmp_path / "run", progress=False).fit()
    best = G2P.load(tmp_path / "run")
    assert best.parameters() == G2P.load(teacher / "0").parameters()


def test_bad_teachers_and_inits_are_named(teacher, tmp_path):
    with pytest.raises(AttentionError, match=r"init '.*ens.safetensors' is an ensemble; expected one 'rnn' model"):
        G2PTask("rnn", limit=10, valid_limit=2, init=str(teacher / "ens.safetensors"))
    with pytest.raises(AttentionError, match=r"init '.*' is a 'rnn' model; expected one 'transformer' model"):
        G2PTask("transformer", limit=10, valid_limit=2, init=str(teacher / "0"))
    with pytest.raises(checkpoint.CheckpointError, match=r"does not match the model \(shape: "):
        G2PTask("rnn", {"hidden_dim": 32}, limit=10, valid_limit=2, init=str(teacher / "0"))
    with pytest.raises(AttentionError, match="was trained with other letters or phonemes than this task"):
        G2PTask("rnn", SMALL, phrases=10, valid_limit=2, teacher=str(teacher / "0"))
    with pytest.raises(AttentionError, match=r"distil must be a number in \(0, 1\], got 1.5"):
        G2PTask("rnn", limit=10, valid_limit=2, teacher=str(teacher / "0"), distil=1.5)
    for distil in (0.3, 0.5):  # the default weight too: without a teacher no weight means anything
        with pytest.raises(AttentionError, match=f"distil={distil} weighs a teacher's term; set teacher or leave"):
            G2PTask("rnn", limit=10, valid_limit=2, distil=distil)
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        G2PTask("rnn", limit=10, valid_limit=2, teacher=str(tmp_path / "missing.safetensors"))


def test_a_runs_document_gives_back_its_teacher_and_start(teacher):
    ens, start = str(teacher / "ens.safetensors"), str(teacher / "0")
    described = G2PTask("rnn", limit=20, valid_limit=2, init=start, teacher=ens, distil=0.3).describe()
    assert G2PDoc(**described).sources() == {"init": start, "teacher": ens, "distil": 0.3}
    assert G2PDoc(**{**described, "teacher": None, "init": None}).sources() == {}
    with pytest.raises(AttentionError, match=r"teacher must hold \['path', 'sha256', 'distil'\], got \{'path': 'x'\}"):
        G2PDoc(**{**described, "teacher": {"path": "x"}})
    with pytest.raises(AttentionError, match=r"init must hold \['path', 'sha256'\], got 'x'"):
        G2PDoc(**{**described, "init": "x"})


def test_members_of_other_runs_pack_with_their_teachers_and_starts(teacher, tmp_path):
    run = tmp_path / "kd"
    task = G2PTask("rnn", limit=20, valid_limit=2, init=str(teacher / "0"), teacher=str(teacher / "ens.safetensors"))
    Trainer(task, TrainConfig(epochs=1, batch_size=16, warmup_steps=1), run, progress=False).fit()
    meta = pack([teacher / "1", run], tmp_path / "pair.safetensors")
    assert "teacher" not in meta["task"] and "init" not in meta["task"]
    assert "teacher" not in meta["members"][0] and meta["members"][1]["teacher"]["distil"] == 0.5
    assert meta["members"][1]["init"]["path"] == str(teacher / "0")
    assert len(G2P.load(tmp_path / "pair.safetensors").members) == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--distil", "0.3"], "--distil weighs the teacher's term in the loss; add --teacher CHECKPOINT"),
        (["--teacher", "nowhere.safetensors"], "checkpoint 'nowhere.safetensors' does not exist"),
        (["--init", "nowhere.safetensors"], "does not exist"),
    ],
)
def test_the_cli_answers_bad_distillation_flags_in_one_line(flags, message, tmp_path, capsys):
    assert main(["train", "g2p", "--limit", "10", "--out", str(tmp_path / "r"), *flags]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_resume_refuses_distillation_flags(teacher, tmp_path, capsys):
    out = tmp_path / "r"
    task = G2PTask("rnn", SMALL, limit=10, valid_limit=2)
    Trainer(task, TrainConfig(epochs=1, batch_size=16, warmup_steps=1), out, progress=False).fit()
    assert main(["train", "g2p", "--out", str(out), "--resume", "--teacher", str(teacher / "0")]) != 0
    assert "drop --teacher" in capsys.readouterr().err


def test_the_targets_are_kept_in_the_cache_for_a_resumed_run(teacher, tmp_path, monkeypatch):
    from attnkit.tasks import g2p

    ens = str(teacher / "ens.safetensors")
    first = G2PTask("rnn", SMALL, limit=20, valid_limit=2, teacher=ens, cache=str(tmp_path))
    assert (tmp_path / g2p.TARGETS).is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(g2p.task, "teacher_targets", refuse)  # where G2PTask looks it up
    again = G2PTask("rnn", SMALL, limit=20, valid_limit=2, teacher=ens, cache=str(tmp_path))
    assert torch.equal(again.soft, first.soft) and again.soft_at == first.soft_at
    assert again.describe() == first.describe()  # the cache is not part of the run's configuration
    with pytest.raises(AssertionError, match="computed again"):  # other pairs, other targets
        G2PTask("rnn", SMALL, limit=21, valid_limit=2, teacher=ens, cache=str(tmp_path))
    with pytest.raises(AssertionError, match="computed again"):  # another teacher
        G2PTask("rnn", SMALL, limit=20, valid_limit=2, teacher=str(teacher / "0"), cache=str(tmp_path))
