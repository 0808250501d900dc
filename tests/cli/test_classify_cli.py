"""``attnkit train classify`` / ``eval`` / ``explain``: they work on the one trainer, eval dispatches on
the checkpoint's task, and bad input is one line on stderr and exit 2."""

import json
import sys

import pytest
import torch
from cli_errors import one_line_error

from attnkit.cli import main
from attnkit.tasks.classify import Classifier
from attnkit.train import checkpoint

RUNS = {
    "gloss-rnn": ["--task", "gloss", "--model", "rnn", "--embed-dim", "8", "--hidden-dim", "8"],
    "document-han": ["--task", "document", "--embed-dim", "8", "--hidden-dim", "4"],
    "pair-abcnn3": ["--task", "pair", "--model", "abcnn3", "--embed-dim", "8", "--channels", "8"],
}
SMALL = ["--limit", "60", "--valid-limit", "20", "--batch-size", "16", "--epochs", "2", "--no-progress"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classify-runs")
    for name, argv in RUNS.items():
        assert main(["train", "classify", *argv, *SMALL, "--out", str(folder / name)]) == 0
    return folder


def test_smoke_train_writes_checkpoints_and_history(runs):
    for name in RUNS:
        run = runs / name
        assert {p.name for p in run.iterdir()} >= {
            "best.safetensors",
            "last.safetensors",
            "config.json",
            "history.json",
        }
        assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1, 2]
    task = json.loads((runs / "pair-abcnn3" / "config.json").read_text())["task"]
    assert (task["name"], task["task"], task["model"]) == ("classify", "pair", "abcnn3")
    assert task["model_config"] == {"embed_dim": 8, "channels": 8} and task["labels"] == ["other", "match"]


@pytest.mark.parametrize("name", list(RUNS))
def test_eval_dispatches_on_the_checkpoint_task_and_prints_its_metrics(runs, name, tmp_path, capsys):
    assert main(["eval", str(runs / name), "--limit", "30", "--json", str(tmp_path / "m.json")]) == 0
    figures = json.loads((tmp_path / "m.json").read_text())
    expected = Classifier.load(runs / name).evaluate("test", limit=30)
    assert figures["examples"] == 30 and figures["split"] == "test"
    names = ["accuracy", "f1", "map"] if name.startswith("pair") else ["accuracy"]
    assert {k: figures[k] for k in figures if k in ("accuracy", "f1", "map")} == {k: expected[k] for k in names}
    out = capsys.readouterr().out
    assert f"{figures['accuracy']:.2f}" in out and name.split("-")[1] in out


@pytest.fixture(scope="module")
def g2p_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("g2p-run")
    tiny = ["--hidden-dim", "8", "--embed-dim", "4", "--limit", "20", "--valid-limit", "5", "--batch-size", "16"]
    assert main(["train", "g2p", *tiny, "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    return out


def test_eval_still_scores_g2p_checkpoints(g2p_run, tmp_path, capsys):
    assert main(["eval", str(g2p_run), "--limit", "5", "--beam", "1", "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "WER %" in out and "WER % by word length" in out and "% with a weight above 0.99" in out
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["beam"] == 1
    assert sum(b["words"] for b in m["by_length"].values()) == m["words"] == 5
    assert m["attention"]["rows"] >= 5 and 0 <= m["attention"]["saturated"] <= 1


def test_resume_of_a_finished_run_changes_nothing(runs, capsys):
    run = runs / "gloss-rnn"
    before = (run / "best.safetensors").read_bytes()
    assert main(["train", "classify", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert (run / "best.safetensors").read_bytes() == before


def test_explain_prints_the_label_and_pictures_the_word_weights(runs, tmp_path, capsys):
    text = "a small domesticated feline"
    assert main(["explain", str(runs / "gloss-rnn"), text, "--plot", str(tmp_path / "w.png")]) == 0
    label = Classifier.load(runs / "gloss-rnn").explain(text).label
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == label and lines[1] == f"attention: {tmp_path / 'w.png'}"
    assert (tmp_path / "w.png").read_bytes()[:8] == PNG


def test_explain_pictures_word_and_sentence_weights_of_han(runs, tmp_path, capsys):
    text = "a small domesticated feline; the cat purred. cats like milk"
    explanation = Classifier.load(runs / "document-han").explain(text)
    assert explanation.tokens == [
        ["a", "small", "domesticated", "feline"],
        ["the", "cat", "purred"],
        ["cats", "like", "milk"],
    ]
    assert explanation.sentences.shape == (3,) and explanation.words.shape == (3, 4)
    assert main(["explain", str(runs / "document-han"), text, "--plot", str(tmp_path / "d.png")]) == 0
    assert (tmp_path / "d.png").read_bytes()[:8] == PNG


def test_explain_pictures_both_abcnn3_matrices(runs, tmp_path, capsys):
    argv = ["explain", str(runs / "pair-abcnn3"), "a small feline", "the cat purred", "--plot", str(tmp_path / "p.png")]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        f"attention: {tmp_path / 'p.png'}",
        f"attention: {tmp_path / 'p-conv.png'}",
    ]
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG and (tmp_path / "p-conv.png").read_bytes()[:8] == PNG


def test_explain_without_matplotlib_says_how_to_get_it(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    one_line_error(
        capsys,
        ["explain", str(runs / "gloss-rnn"), "a cat", "--plot", str(tmp_path / "x.png")],
        "pictures need matplotlib: pip install 'attnkit[viz]'",
    )


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["train", "classify", "--task", "poems"],
            "--task 'poems' is unknown; expected one of ['gloss', 'document', 'pair']",
        ),
        (
            ["train", "classify", "--model", "lstm"],
            "--model 'lstm' is unknown; expected one of ['rnn', 'cnn', 'transformer', 'han', 'bcnn', 'abcnn1', 'abcnn2', 'abcnn3']",
        ),
        (
            ["train", "classify", "--task", "pair", "--model", "rnn"],
            "model='rnn' does not read the pair task's input; use one of ['bcnn', 'abcnn1', 'abcnn2', 'abcnn3']",
        ),
        (["train", "classify", "--model", "rnn", "--channels", "8"], "--channels does not apply to --model rnn"),
        (
            ["train", "classify", "--pooling", "sum"],
            "pooling='sum' is unknown; expected one of ['last', 'mean', 'max', 'attention']",
        ),
        (["train", "classify", "--resume"], "--resume needs --out"),
        (["eval", "no/such/file.safetensors"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, expected):
    one_line_error(capsys, argv, expected)


@pytest.mark.parametrize(
    "texts, expected",
    [
        ([""], "text is empty; give at least one word"),
        (["  "], "text is empty; give at least one word"),
        (["!!!"], "text '!!!' has no words (letters or digits)"),
        (["a cat", "a dog"], "model 'rnn' (gloss task) needs one text, got 2"),
    ],
)
def test_explain_rejects_bad_text(runs, capsys, texts, expected):
    one_line_error(capsys, ["explain", str(runs / "gloss-rnn"), *texts], expected)


def test_explain_of_a_pair_model_needs_two_texts(runs, capsys):
    one_line_error(
        capsys,
        ["explain", str(runs / "pair-abcnn3"), "a cat"],
        "model 'abcnn3' (pair task) needs two texts, the definition and the example, got 1",
    )


def test_missing_wordnet_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ATTNKIT_WORDNET_DIR", str(tmp_path))
    one_line_error(
        capsys,
        ["train", "classify", "--out", str(tmp_path / "run")],
        f"WordNet data not found: {str(tmp_path)!r} has no data.noun, data.verb, data.adj, data.adv; "
        "install it with `apt-get install wordnet-base`, or set ATTNKIT_WORDNET_DIR",
    )


def test_checkpoints_of_other_tasks_are_named(runs, g2p_run, tmp_path, capsys):
    foreign = tmp_path / "poems.safetensors"
    checkpoint.save(foreign, {}, {"task": {"name": "poems"}})
    one_line_error(capsys, ["eval", str(foreign)], "holds a 'poems' model; attnkit eval knows ['classify', 'g2p']")
    one_line_error(capsys, ["explain", str(g2p_run), "cat"], "is not a classifier (task 'g2p')")
    one_line_error(capsys, ["eval", str(runs / "gloss-rnn"), "--beam", "2"], "--beam applies to G2P checkpoints only")


def test_training_into_a_used_folder_needs_resume(runs, capsys):
    run = str(runs / "gloss-rnn")
    one_line_error(
        capsys, ["train", "classify", *RUNS["gloss-rnn"], *SMALL, "--out", run], "already holds a run; add --resume"
    )
    one_line_error(capsys, ["train", "classify", "--out", run, "--resume", "--epochs", "3"], "drop --epochs")
    one_line_error(capsys, ["train", "classify", "--out", run, "--resume", "--model", "cnn"], "drop --model")


def test_a_killed_run_resumes_exactly(tmp_path):
    from attnkit.tasks.classify import ClassifyTask
    from attnkit.train import TrainConfig, Trainer

    def task():
        return ClassifyTask("gloss", "cnn", {"embed_dim": 8, "channels": 8, "hidden_dim": 4}, limit=48, valid_limit=8)

    config = TrainConfig(epochs=2, batch_size=16, checkpoint_every=1, warmup_steps=2)
    whole = Trainer(task(), config, tmp_path / "whole", progress=False)
    whole.fit()
    Trainer(task(), config, tmp_path / "killed", progress=False).fit(max_steps=4)  # stopped inside epoch 2
    resumed = Trainer(task(), config, tmp_path / "killed", progress=False)
    resumed.fit(resume=True)
    assert resumed.losses == whole.losses[4:]
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_eval_shows_progress_on_a_terminal(runs, capsys, monkeypatch):
    import re

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws as on a terminal
    assert main(["eval", str(runs / "gloss-rnn"), "--limit", "30"]) == 0
    err = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().err)
    assert "classifying test" in err and "30/30" in err


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("model_config", "rnn", "task.model_config must be an object, got a string 'rnn'"),
        ("words", {"cat": 1}, "task.words must be a list, got an object"),
        ("labels", [], "labels is empty"),
        ("task", "poems", "task='poems' is unknown"),
        ("freeze_vectors", "yes", "task.freeze_vectors must be a boolean"),
    ],
)
def test_damaged_classifier_metadata_is_one_line(runs, tmp_path, capsys, path, value, expected):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(runs / "gloss-rnn" / "best.safetensors"), framework="pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta = json.loads(header["attnkit"])
    meta["task"][path] = value
    header["attnkit"] = json.dumps(meta)
    header[checkpoint.CHECKSUM] = checkpoint.checksum(tensors, header)  # whole, but damaged
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=header)
    one_line_error(capsys, ["eval", str(tmp_path / "bad.safetensors"), "--limit", "5"], expected)
    one_line_error(capsys, ["explain", str(tmp_path / "bad.safetensors"), "a cat"], expected)
