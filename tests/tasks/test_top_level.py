"""The main job from Python in one line (issue 24): ``attnkit.pronounce`` and ``attnkit.G2P``."""

import subprocess
import sys

import pytest

import attnkit
from attnkit.tasks import g2p as task


def test_pronounce_is_the_shipped_models_pronunciations():
    words = ["cat", "attention", "x-ray"]
    ours = attnkit.pronounce(words, beam=1)
    theirs = task.G2P.load().pronounce(words, beam=1)
    assert [(p.word, p.phones) for p in ours] == [(p.word, p.phones) for p in theirs]
    assert [p.phones for p in attnkit.pronounce("cat  attention\nx-ray", beam=1)] == [p.phones for p in ours]


def test_pronounce_loads_a_model_once(monkeypatch):
    loads = []
    real = task.G2P.load.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(task.G2P, "load", classmethod(counting))
    attnkit._loaded.cache_clear()
    for _ in range(3):
        attnkit.pronounce(["cat"], beam=1)
    assert len(loads) == 1
    attnkit._loaded.cache_clear()


def test_g2p_is_the_task_class_and_import_attnkit_does_not_load_it():
    assert attnkit.G2P is task.G2P
    code = "import sys, attnkit; print(any(m.startswith('attnkit.tasks') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.parametrize("words", [None, 3, [b"cat"], ["cat", 1]])
def test_pronounce_names_words_that_are_not_strings(words):
    with pytest.raises(attnkit.AttentionError, match="words must be a list of str or one str"):
        attnkit.pronounce(words)


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'G2p'"):
        attnkit.G2p
