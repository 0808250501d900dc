"""``attnkit export g2p --onnx FOLDER`` (issue 25): it writes the three files ONNX Runtime pronounces
with, refuses to overwrite them without --force, and bad input is one line and exit 2."""

import importlib.util

import pytest
import torch
from cli_errors import one_line_error

from attnkit.cli import main
from attnkit.data import cmudict
from attnkit.models import RNNConfig, RNNSeq2Seq, TransformerConfig, TransformerSeq2Seq
from attnkit.tasks.g2p import G2P
from attnkit.tasks.g2p.onnx_export import FILES, OnnxG2P
from attnkit.train import checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.usefixtures("one_thread")

LETTERS, PHONEMES = cmudict.letters(), cmudict.phonemes()
SMALL = {"hidden_dim": 8, "embed_dim": 4, "cell": "gru", "bidirectional": False, "input_feed": False}


def save(path, kind: str, config: dict, model) -> None:
    """``model`` as the G2P checkpoint ``path`` (untrained: its outputs run to their length limit)."""
    doc = {
        "name": "g2p",
        "model": kind,
        "model_config": config,
        "limit": None,
        "valid_limit": None,
        "letters": LETTERS.symbols,
        "phonemes": PHONEMES.symbols,
        "longest": 20,
    }
    checkpoint.save(path, {f"model.{k}": v for k, v in model.state_dict().items()}, {"task": doc})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "best.safetensors"
    save(path, "rnn", SMALL, RNNSeq2Seq(RNNConfig(src_vocab=len(LETTERS), tgt_vocab=len(PHONEMES), **SMALL)))
    return path


@pytest.mark.filterwarnings("ignore::attnkit.tasks.g2p.LengthLimitWarning")  # untrained: every output is cut
def test_export_writes_what_onnx_runtime_pronounces_with(tiny, tmp_path, capsys):
    out = tmp_path / "new" / "g2p"  # made, folders above it too
    assert main(["export", "g2p", "--onnx", str(out), "--model", str(tiny)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(out / name) for name in FILES]
    words = ["cat", "attention", "x-ray"]
    expected = G2P.load(tiny).pronounce(words, beam=1)
    assert [r.phones for r in OnnxG2P(out).pronounce(words)] == [r.phones for r in expected]


def test_an_export_is_not_overwritten_without_force(tiny, tmp_path, capsys):
    (tmp_path / "g2p.json").write_text("mine")
    one_line_error(
        capsys,
        ["export", "g2p", "--onnx", str(tmp_path), "--model", str(tiny)],
        f"--onnx: {str(tmp_path / 'g2p.json')!r} already exists; add --force to overwrite it",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g2p.json"] and (tmp_path / "g2p.json").read_text() == "mine"
    assert main(["export", "g2p", "--onnx", str(tmp_path), "--model", str(tiny), "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    assert OnnxG2P(tmp_path).doc["source"] == str(tiny)


def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, capsys):
    out = str(tmp_path / "out")
    one_line_error(capsys, ["export", "g2p"], "the following arguments are required: --onnx")
    one_line_error(
        capsys, ["export", "g2p", "--onnx", out, "--model", str(tmp_path / "no.safetensors")], "does not exist"
    )
    (tmp_path / "file").write_text("")
    one_line_error(capsys, ["export", "g2p", "--onnx", str(tmp_path / "file")], "is a file; --onnx takes a folder")
    one_line_error(capsys, ["export", "g2p", "--onnx", out, "--opset", "12"], "--opset must be an int from 18")
    one_line_error(capsys, ["export", "g2p", "--onnx", out, "--opset", "x"], "--opset: must be a whole number")
    config = {"d_model": 16, "heads": 2, "ff_dim": 16, "encoder_layers": 1, "decoder_layers": 1}
    transformer = TransformerSeq2Seq(TransformerConfig(src_vocab=len(LETTERS), tgt_vocab=len(PHONEMES), **config))
    save(tmp_path / "transformer.safetensors", "transformer", config, transformer)
    one_line_error(
        capsys,
        ["export", "g2p", "--onnx", out, "--model", str(tmp_path / "transformer.safetensors")],
        "ONNX export takes RNN models (RNNSeq2Seq) and ensembles of them, got TransformerSeq2Seq",
    )
    assert not (tmp_path / "out").exists()  # nothing written


def test_without_the_onnx_extra_it_says_what_to_install(tmp_path, capsys, monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else found(name, *a))
    one_line_error(capsys, ["export", "g2p", "--onnx", str(tmp_path)], "need onnxscript: pip install 'attnkit[onnx]'")
