"""Training a G2P model on a lexicon file (a teacher's outputs over more words: sequence-level
distillation): its pronunciations are the training pairs, no validation or test word may be among
them, the run names the file with its SHA-256 and a resumed run refuses a changed file."""

from __future__ import annotations

import pytest

from attnkit import AttentionError
from attnkit.cli import main
from attnkit.data import cmudict
from attnkit.tasks.g2p import G2PTask
from attnkit.train import TrainConfig, Trainer, checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"hidden_dim": 16, "embed_dim": 8}


def _lexicon(path, entries) -> str:
    path.write_text("".join(f"{w} {' '.join(p)}\n" for w, p in entries), encoding="utf-8")
    return str(path)


def test_the_lexicons_pronunciations_are_the_training_pairs(tmp_path):
    train = cmudict.load("train")[:30]
    entries = [(e.word, p) for e in train for p in e.pronunciations] + [("zorbly", ("Z", "AO1", "R", "B", "L", "IY0"))]
    task = G2PTask("rnn", SMALL, valid_limit=4, train_lexicon=_lexicon(tmp_path / "lex.txt", entries))
    assert task.pairs == [(task.letters.encode(w), task.phonemes.encode(p)) for w, p in entries]
    doc = task.describe()["train_lexicon"]
    assert doc["path"] == str(tmp_path / "lex.txt") and len(doc["sha256"]) == 64
    assert "train_lexicon" not in G2PTask("rnn", SMALL, limit=5, valid_limit=4).describe()
    limited = G2PTask("rnn", SMALL, limit=10, valid_limit=4, train_lexicon=str(tmp_path / "lex.txt"))
    spread = cmudict.spread(cmudict.parse((tmp_path / "lex.txt").read_text()), 10)
    assert limited.pairs == [
        (task.letters.encode(e.word), task.phonemes.encode(p)) for e in spread for p in e.pronunciations
    ]


@pytest.mark.parametrize("split", ["valid", "test"])
def test_a_held_out_word_in_the_lexicon_is_refused(tmp_path, split):
    held = cmudict.load(split)[3]
    path = _lexicon(tmp_path / "lex.txt", [("cat", ("K", "AE1", "T")), (held.word, held.pronunciations[0])])
    with pytest.raises(AttentionError, match=rf"holds 1 words of the validation or test split \(e.g. '{held.word}'\)"):
        G2PTask("rnn", SMALL, valid_limit=4, train_lexicon=path)


def test_bad_lexicons_are_named(tmp_path):
    with pytest.raises(AttentionError, match="phonemes"):
        G2PTask("rnn", SMALL, valid_limit=4, train_lexicon=_lexicon(tmp_path / "a.txt", [("cat", ("K", "XX9", "T"))]))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(AttentionError, match="holds no pronunciations"):
        G2PTask("rnn", SMALL, valid_limit=4, train_lexicon=str(tmp_path / "empty.txt"))
    with pytest.raises(AttentionError, match="does not exist"):
        G2PTask("rnn", SMALL, valid_limit=4, train_lexicon=str(tmp_path / "none.txt"))
    with pytest.raises(AttentionError, match="train_lexicon holds words; phrases are drawn from the training split"):
        G2PTask("rnn", SMALL, phrases=10, train_lexicon=str(tmp_path / "a.txt"))


def test_a_resumed_run_reads_the_same_file_and_refuses_a_changed_one(tmp_path, capsys):
    entries = [(e.word, e.pronunciations[0]) for e in cmudict.load("train")[:40]]
    lexicon = _lexicon(tmp_path / "lex.txt", entries)
    out = tmp_path / "run"
    flags = ["--hidden-dim", "16", "--embed-dim", "8", "--valid-limit", "4", "--batch-size", "16"]
    argv = ["train", "g2p", "--train-lexicon", lexicon, "--out", str(out), "--no-progress", *flags]
    assert main([*argv, "--epochs", "2", "--warmup-steps", "1"]) == 0
    task = checkpoint.read_meta(out / "last.safetensors")["task"]
    assert task["train_lexicon"]["path"] == lexicon
    assert main(["train", "g2p", "--out", str(out), "--resume", "--no-progress"]) == 0
    _lexicon(tmp_path / "lex.txt", entries[:-1])  # the same name, other pronunciations
    capsys.readouterr()
    assert main(["train", "g2p", "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "written for another configuration" in capsys.readouterr().err
    trainer = Trainer(
        G2PTask("rnn", SMALL, valid_limit=4, train_lexicon=lexicon), TrainConfig(epochs=1, batch_size=16), out
    )
    with pytest.raises(AttentionError, match="written for another configuration"):
        trainer.fit(resume=True)
