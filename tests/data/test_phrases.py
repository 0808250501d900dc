"""CMUdict phrases (long inputs for the bottleneck experiment): determinism, split purity, the
spelling and pronunciation rule, the phrase alphabets, bad arguments, and a G2P task on phrases
whose checkpoint reloads with the phrase vocabularies."""

import dataclasses

import pytest

from attnkit import AttentionError
from attnkit.cli import main
from attnkit.data import cmudict
from attnkit.tasks.g2p import G2P, G2PDoc, G2PTask
from attnkit.train import TrainConfig, Trainer, checkpoint
from attnkit.train.schema import from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def _words(split):
    return {e.word: e for e in cmudict.load(split)}


def test_same_arguments_give_the_same_phrases_and_the_seed_changes_them():
    a = cmudict.phrases("train", 50, max_words=4, seed=3)
    assert a == cmudict.phrases("train", 50, max_words=4, seed=3)
    assert a != cmudict.phrases("train", 50, max_words=4, seed=4)
    assert cmudict.phrases("train", 10, max_words=4, seed=3) == a[:10]  # a longer draw extends a shorter one


@pytest.mark.parametrize("split", cmudict.SPLITS)
def test_phrases_hold_words_of_their_split_only(split):
    own = _words(split)
    others = set().union(*(_words(s) for s in cmudict.SPLITS if s != split))
    for e in cmudict.phrases(split, 300, max_words=8, seed=1):
        words = e.word.split(cmudict.SEPARATOR)
        assert all(w in own and w not in others for w in words), e.word


def test_word_counts_cover_one_to_max_words():
    counts = [len(e.word.split("_")) for e in cmudict.phrases("valid", 400, max_words=5)]
    assert set(counts) == {1, 2, 3, 4, 5}  # 400 uniform draws over 5 values miss none
    assert {len(e.word.split("_")) for e in cmudict.phrases("valid", 50, max_words=1)} == {1}


def test_spelling_and_pronunciation_join_the_words_and_their_first_pronunciations():
    own = _words("test")
    for e in cmudict.phrases("test", 100, max_words=8, seed=2):
        words = e.word.split("_")
        assert len(e.pronunciations) == 1  # one reference: each word's first pronunciation
        expected = []
        for i, w in enumerate(words):
            expected += ["_"] * (i > 0) + list(own[w].pronunciations[0])
        assert e.pronunciations[0] == tuple(expected)
        assert e.pronunciations[0].count("_") == len(words) - 1


def test_phrase_alphabets_extend_the_word_ones_and_encode_every_phrase():
    letters, phonemes = cmudict.phrase_letters(), cmudict.phrase_phonemes()
    assert letters.symbols == cmudict.letters().symbols + ["_"]
    assert phonemes.symbols == cmudict.phonemes().symbols + ["_"]
    assert "_" not in cmudict.LETTERS and cmudict.PHRASE_LETTERS == cmudict.LETTERS + "_"
    for e in cmudict.phrases("train", 200, seed=5):
        assert letters.decode(letters.encode(e.word)) == list(e.word)
        assert tuple(phonemes.decode(phonemes.encode(e.pronunciations[0]))) == e.pronunciations[0]
    with pytest.raises(AttentionError, match="outside the letters vocabulary"):
        cmudict.letters().encode("a_b")  # word models are unchanged: no separator


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "dev", "count": 3}, "split='dev' is unknown; expected one of ('train', 'valid', 'test')"),
        ({"split": "train", "count": 0}, "count must be an int in 1..2**62, got 0"),
        ({"split": "train", "count": 2.0}, "count must be an int in 1..2**62, got 2.0 (float)"),
        ({"split": "train", "count": 3, "max_words": 0}, "max_words must be an int in 1..2**62, got 0"),
        ({"split": "train", "count": 3, "max_words": True}, "max_words must be an int in 1..2**62, got True (bool)"),
        ({"split": "train", "count": 3, "seed": -1}, "seed must be an int in 0..2**62, got -1"),
    ],
)
def test_bad_arguments_are_errors_that_name_them(kwargs, message):
    with pytest.raises(AttentionError) as err:
        cmudict.phrases(**kwargs)
    assert str(err.value) == message


TINY = {"hidden_dim": 16, "embed_dim": 8, "dropout": 0.0, "attention": "bahdanau"}


def test_a_phrase_task_trains_and_its_checkpoint_reloads_with_the_phrase_vocabularies(tmp_path):
    task = G2PTask("rnn", TINY, phrases=24, max_words=3, valid_limit=4)
    assert len(task.pairs) == 24 and task.valid == cmudict.phrases("valid", 4, max_words=3)
    assert task.pairs[0][0] == task.letters.encode(cmudict.phrases("train", 1, max_words=3)[0].word)
    Trainer(task, TrainConfig(epochs=1, batch_size=8, warmup_steps=1), tmp_path, progress=False).fit()
    meta = checkpoint.load(tmp_path / "best.safetensors")[1]
    doc = G2PDoc.read(meta, tmp_path / "best.safetensors")
    assert (doc.phrases, doc.max_words, doc.valid_limit, doc.limit) == (24, 3, 4, None)
    g2p = G2P.load(tmp_path)
    assert g2p.letters == cmudict.phrase_letters() and g2p.phonemes == cmudict.phrase_phonemes()
    out = g2p.pronounce(["cat_dog"], beam=1)[0]
    assert out.word == "cat_dog" and set(out.phones) <= set(cmudict.phrase_phonemes().symbols[3:])
    assert out.weights.shape[1] == len("cat_dog")  # the separator is a source position like a letter
    with pytest.raises(AttentionError, match="trained with other letters or phonemes"):
        g2p.evaluate("test", limit=2)  # a phrase model is not scored on single words
    before = (tmp_path / "best.safetensors").read_bytes()
    assert main(["train", "g2p", "--out", str(tmp_path), "--resume", "--no-progress"]) == 0  # rebuilt as phrases
    assert (tmp_path / "best.safetensors").read_bytes() == before


def test_word_tasks_describe_themselves_as_before_and_old_documents_read_as_words():
    task = G2PTask("rnn", TINY, limit=3, valid_limit=2)
    doc = task.describe()
    assert "phrases" not in doc and "max_words" not in doc and task.letters == cmudict.letters()
    read = from_dict(G2PDoc, doc, "task")  # a document without the phrase fields: a word model
    assert (read.phrases, read.max_words) == (None, 8)
    assert {f.name for f in dataclasses.fields(G2PDoc)} >= set(
        G2PTask("rnn", TINY, phrases=2, valid_limit=1).describe()
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"phrases": 0}, "phrases must be an int in 1..2**62, got 0"),
        ({"phrases": 5, "limit": 5}, "limit=5 counts training words, phrases=5 training phrases; give one of them"),
        ({"max_words": 3}, "max_words=3 applies to phrases only; set phrases or leave max_words"),
        ({"phrases": 5, "max_words": 0}, "max_words must be an int in 1..2**62, got 0"),
    ],
)
def test_bad_phrase_options_are_rejected_when_the_task_is_built(kwargs, message):
    with pytest.raises(AttentionError) as err:
        G2PTask("rnn", TINY, **kwargs)
    assert str(err.value) == message


def test_train_g2p_takes_phrases_from_the_command_line(tmp_path, capsys):
    tiny = ["--hidden-dim", "8", "--embed-dim", "4", "--valid-limit", "4", "--batch-size", "16", "--epochs", "1"]
    out = tmp_path / "run"
    assert main(["train", "g2p", "--phrases", "24", "--max-words", "3", *tiny, "--out", str(out), "--no-progress"]) == 0
    task = checkpoint.read_meta(out / "best.safetensors")["task"]
    assert (task["phrases"], task["max_words"], task["valid_limit"]) == (24, 3, 4)
    assert "_" in task["letters"] and "_" in task["phonemes"]
    capsys.readouterr()
    assert main(["train", "g2p", "--out", str(out), "--resume", "--phrases", "30"]) == 2
    assert "drop --phrases" in capsys.readouterr().err


def test_max_words_without_phrases_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "g2p", "--max-words", "3", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_words=3 applies to phrases only" in err
