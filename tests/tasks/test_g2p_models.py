"""The shipped G2P models by name (fast, the default; accurate), their decoding settings in the
checkpoint, and the fast decoder behind G2P.pronounce: the same outputs as the model itself, rebuilt
when the model's weights change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnkit.data import cmudict
from attnkit.data.vocab import EOS
from attnkit.errors import AttentionError
from attnkit.models import Ensemble
from attnkit.models.fast_rnn import FastRNN, int8_available
from attnkit.tasks.g2p import G2P, pack
from attnkit.tasks.g2p.predictor import BEAM, DEFAULT, NAMED, read_decoding
from attnkit.train import checkpoint

BENCH = Path(__file__).parents[2] / "benchmarks" / "g2p"
WORDS = [e.word for e in cmudict.spread(cmudict.load("valid"), 300)]


@pytest.fixture(scope="module")
def fast():
    return G2P.load(int8=False)  # float32: its fast decoder gives the model's own outputs


def test_the_default_is_the_fast_model_and_names_load_the_shipped_files(fast):
    assert DEFAULT == "fast" and fast.path == str(G2P.shipped_path("fast"))
    assert G2P.load("fast").path == fast.path
    accurate = G2P.load("accurate")
    assert accurate.path == str(G2P.shipped_path("accurate")) == str(G2P.shipped_path())
    assert isinstance(accurate.model, Ensemble) and not isinstance(fast.model, Ensemble)
    # their decoding as chosen on valid and recorded beside the scripts that chose it
    for g2p, record in ((G2P.load(), "fast.json"), (accurate, "accurate.json")):
        chosen = json.loads((BENCH / record).read_text())["chosen"]
        assert (g2p.beam, g2p.int8) == (chosen["beam"], chosen["int8"] and int8_available())
    with pytest.raises(AttentionError, match=r"'slow' is not a shipped model; expected one of \['fast', 'accurate'\]"):
        G2P.shipped_path("slow")


def test_the_fast_decoder_gives_the_models_own_outputs(fast):
    assert isinstance(fast.fast, FastRNN)
    quick = fast.pronounce(WORDS)
    fast.use_fast = False
    try:
        plain = fast.pronounce(WORDS)
    finally:
        fast.use_fast = True
    assert [r.phones for r in quick] == [r.phones for r in plain]
    for a, b in zip(quick, plain):
        assert a.probability == pytest.approx(b.probability, rel=1e-4)
        torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=1e-4)


def test_the_accurate_ensemble_decodes_as_itself_at_beam_5():
    accurate = G2P.load("accurate", int8=False)  # float32: the same outputs as the model's own modules
    words = WORDS[:40]
    quick = accurate.pronounce(words, beam=5)
    accurate.use_fast = False
    plain = accurate.pronounce(words, beam=5)
    assert [r.phones for r in quick] == [r.phones for r in plain]
    assert [r.probability for r in quick] == pytest.approx([r.probability for r in plain], rel=1e-4)


def test_a_change_to_the_weights_reaches_the_fast_decoder():
    g2p = G2P.load()
    before = g2p.fast
    assert g2p.fast is before  # built once while the weights stay
    with torch.no_grad():
        g2p.model.out.bias[EOS] = -30.0  # the end all but ruled out
    with pytest.warns(UserWarning, match="output cut at the length limit"):
        (r,) = g2p.pronounce(["cat"])
    assert g2p.fast is not before and r.cut and len(r.phones) == 2 * 3 + 10


@pytest.mark.skipif(not int8_available(), reason="this torch build has no quantized CPU engine")
def test_int8_decoding_agrees_with_float32_on_most_words(fast):
    int8 = G2P.load(int8=True)
    assert int8.int8 and not fast.int8
    same = sum(a.phones == b.phones for a, b in zip(int8.pronounce(WORDS), fast.pronounce(WORDS)))
    assert same >= 0.95 * len(WORDS)


@pytest.mark.parametrize(
    "doc",
    [{"beam": 0, "int8": False}, {"beam": 101, "int8": False}, {"beam": 2.0, "int8": False}, {"beam": 1},
     {"beam": 1, "int8": 1}, {"beam": 1, "int8": False, "alpha": 0.6}, [1, False], "beam 1"],
)
def test_bad_decoding_documents_are_refused(doc, tmp_path):
    with pytest.raises(AttentionError, match=r"decoding must be \{'beam': an int in 1..100, 'int8': a bool\}, got"):
        read_decoding(doc)
    tensors, meta = checkpoint.load(G2P.shipped_path("fast"))
    bad = tmp_path / "bad.safetensors"
    checkpoint.save(bad, tensors, {**meta, "decoding": doc})
    with pytest.raises(checkpoint.CheckpointError, match=r"bad.safetensors': decoding must be"):
        G2P.load(bad)
    with pytest.raises(AttentionError, match="decoding must be"):
        pack([G2P.shipped_path("fast")], tmp_path / "never.safetensors", decoding=doc)
    assert not (tmp_path / "never.safetensors").exists()


def test_pack_writes_the_decoding_that_load_reads(tmp_path):
    tensors, meta = checkpoint.load(G2P.shipped_path("fast"))
    plain = tmp_path / "plain.safetensors"
    checkpoint.save(plain, tensors, {k: v for k, v in meta.items() if k != "decoding"})
    assert G2P.load(plain).beam == BEAM  # none written: beam 5, float32
    target = tmp_path / "packed.safetensors"
    pack([plain], target, decoding={"beam": 3, "int8": int8_available()})
    g2p = G2P.load(target)
    assert checkpoint.read_meta(target)["decoding"] == {"beam": 3, "int8": int8_available()}
    assert g2p.beam == 3 and g2p.int8 == int8_available()
    assert G2P.load(target, int8=False).int8 is False
    with pytest.raises(AttentionError, match="int8 must be a bool"):
        G2P.load(target, int8="yes")


def test_the_default_beam_and_an_explicit_one(fast):
    greedy = fast.pronounce(WORDS[:50])
    assert [r.phones for r in greedy] == [r.phones for r in fast.pronounce(WORDS[:50], beam=1)]
    alternatives = fast.pronounce(["read"], nbest=3)  # nbest without a beam: a beam that holds them
    assert len(alternatives[0]) >= 2


def test_the_command_line_takes_the_names(capsys):
    from attnkit.cli import main

    assert main(["pronounce", "--model", "accurate", "--format", "jsonl", "cat"]) == 0
    accurate = capsys.readouterr().out
    assert main(["pronounce", "--format", "jsonl", "cat"]) == 0
    default = capsys.readouterr().out
    assert '"phones": ["K", "AE1", "T"]' in accurate and '"phones": ["K", "AE1", "T"]' in default
    assert accurate != default  # two models: two probabilities
    assert main(["eval", "accurate", "--limit", "20", "--beam", "1"]) == 0
    assert f"{NAMED['accurate']}: 20 test words, beam 1" in capsys.readouterr().out
