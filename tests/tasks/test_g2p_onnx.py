"""A G2P model exported to ONNX (issue 25): the padded encoder is the packed one, and ONNX Runtime's
greedy decoding gives PyTorch's phones, probabilities and attention weights, for the shipped model
on 1,000 test words and for small random models of every kind that exports."""

import json
import warnings

import numpy as np
import pytest
import torch

from attnkit import AttentionError
from attnkit.data import cmudict
from attnkit.data.vocab import EOS
from attnkit.models import RNNConfig, RNNSeq2Seq, TransformerConfig, TransformerSeq2Seq
from attnkit.models.ensemble import Ensemble
from attnkit.tasks.g2p import G2P, LengthLimitWarning, decode_words
from attnkit.tasks.g2p.onnx_export import FILES, OnnxG2P, PaddedEncoder, export

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.usefixtures("one_thread")

LETTERS, PHONEMES = cmudict.letters(), cmudict.phonemes()
ATOL = 1e-5  # float32: the same sums in another order (ORT's kernels, another batch size)


def words(n: int) -> list[str]:
    """``n`` test words, spread over the alphabetical split."""
    return [e.word for e in cmudict.spread(cmudict.load("test"), n)]


def rnn(seed: int = 0, **fields) -> RNNSeq2Seq:
    torch.manual_seed(seed)
    config = RNNConfig(src_vocab=len(LETTERS), tgt_vocab=len(PHONEMES), hidden_dim=16, embed_dim=8, **fields)
    return RNNSeq2Seq(config).eval()


def g2p(model) -> G2P:
    return G2P(model, {"letters": LETTERS.symbols, "phonemes": PHONEMES.symbols, "longest": 20}, "random")


def ending(model: RNNSeq2Seq, sample: list[str]) -> RNNSeq2Seq:
    """``model`` with sharper outputs (its weights x3) and its EOS logit raised until about half of
    ``sample``'s greedy outputs end and half are cut at their length limit: both ends of greedy."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
        best = None
        for bias in np.arange(0.0, 6.0, 0.25):
            model.out.bias[EOS] += bias
            ended = sum(h.finished for h in decode_words(model, sample, LETTERS, PHONEMES, beam=1)) / len(sample)
            if best is None or abs(ended - 0.5) < abs(best[1] - 0.5):
                best = (bias, ended)
            model.out.bias[EOS] -= bias
        model.out.bias[EOS] += best[0]
    return model


# -- the encoder without packed sequences -----------------------------------------------------------
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("layers", [1, 2])
def test_the_padded_encoder_is_the_packed_one(cell, bidirectional, layers):
    model = rnn(cell=cell, bidirectional=bidirectional, layers=layers)
    batch = ["a", "attention", "x-ray", "cat", "o'clock", "supercalifragilistic", "b"]  # ragged, unsorted
    src = LETTERS.pad([LETTERS.encode(w) for w in batch])  # (7, 20)
    with torch.no_grad():
        packed, padded = model.encode(src), PaddedEncoder(model)(src)
    for name in ("states", "context", "keys"):
        torch.testing.assert_close(getattr(padded, name), getattr(packed, name), atol=ATOL, rtol=0)
    assert torch.equal(padded.padding, packed.padding)
    # padded positions are 0, as packing leaves them
    assert padded.states.masked_select(src.eq(0)[..., None]).eq(0).all()


# -- ONNX Runtime against PyTorch -----------------------------------------------------------------
KINDS = {
    "gru-bi-2-feed-general-scaled": {"cell": "gru", "layers": 2, "input_feed": True, "scaled": True},
    "lstm-uni-1-dot": {"cell": "lstm", "bidirectional": False, "input_feed": False, "attention": "luong-dot"},
}


@pytest.fixture(scope="module", params=list(KINDS))
def exported(request, tmp_path_factory):
    """A small random model of one kind, and its export."""
    with torch.random.fork_rng():
        model = ending(rnn(**KINDS[request.param]), words(100))
    folder = tmp_path_factory.mktemp(request.param)
    export(g2p(model), folder)
    return model, folder


def same_hypotheses(ours, theirs) -> None:
    """ONNX Runtime's hypotheses are PyTorch's: tokens, ends, scores and weights."""
    assert [h.tokens for h in ours] == [h.tokens for h in theirs]
    assert [h.finished for h in ours] == [h.finished for h in theirs]
    np.testing.assert_allclose([h.score for h in ours], [h.score for h in theirs], atol=1e-4, rtol=1e-5)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.weights, b.weights, atol=ATOL, rtol=0)


def test_onnx_greedy_is_pytorch_greedy(exported):
    model, folder = exported
    sample = words(300)
    theirs = decode_words(model, sample, LETTERS, PHONEMES, beam=1, cap=g2p(model).cap)
    assert 0 < sum(h.finished for h in theirs) < len(sample)  # outputs that end and outputs cut at their limit
    same_hypotheses(OnnxG2P(folder).decode(sample, batch_size=64), theirs)


def test_the_files_and_their_document(exported):
    model, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    doc = json.loads((folder / "g2p.json").read_text())
    assert doc["letters"] == LETTERS.symbols and doc["phonemes"] == PHONEMES.symbols
    assert doc["cap"] == g2p(model).cap and doc["model"]["members"][0]["config"]["cell"] == model.config.cell
    assert doc["opset"] >= 18


def test_pronounce_reads_words_and_warns_as_g2p_does(exported):
    model, folder = exported
    runner = OnnxG2P(folder)
    given = [" Cat", "X-RAY", "attention", "supercalifragilisticexpialidocious"]  # the last: past `longest`
    with warnings.catch_warnings(record=True) as ours_said:
        warnings.simplefilter("always")
        ours = runner.pronounce(given)
    with warnings.catch_warnings(record=True) as theirs_said:
        warnings.simplefilter("always")
        theirs = g2p(model).pronounce(given, beam=1)
    assert [r.word for r in ours] == ["cat", "x-ray", "attention", "supercalifragilisticexpialidocious"]
    assert [(r.phones, r.cut) for r in ours] == [(r.phones, r.cut) for r in theirs]
    np.testing.assert_allclose([r.probability for r in ours], [r.probability for r in theirs], rtol=1e-4)
    assert [str(w.message) for w in ours_said] == [str(w.message) for w in theirs_said]
    assert all(issubclass(w.category, LengthLimitWarning) for w in ours_said)
    assert any("longer than the model's longest training word" in str(w.message) for w in ours_said)
    with pytest.raises(AttentionError, match=r"words\[1\]: 'c4t' has \['4'\] outside the letters vocabulary"):
        runner.pronounce(["cat", "c4t"])
    with pytest.raises(AttentionError, match=r"words\[0\]: ' ' is empty"):
        runner.pronounce([" "])


def test_an_ensemble_of_different_members(tmp_path):
    """Members of different kinds (cell, directions, attention, input feeding), their log-probabilities combined."""
    members = [
        rnn(0, cell="lstm", layers=2, input_feed=True),
        rnn(1, cell="gru", bidirectional=False, input_feed=False, attention="luong-concat"),
    ]
    model = Ensemble(members, combine="log").eval()
    for m in members:
        ending(m, words(50))
    export(g2p(model), tmp_path)
    sample = words(200)
    theirs = decode_words(model, sample, LETTERS, PHONEMES, beam=1, cap=g2p(model).cap)
    same_hypotheses(OnnxG2P(tmp_path).decode(sample), theirs)


@pytest.mark.parametrize("name, count", [("fast", 1000), ("accurate", 200)])
def test_the_shipped_models_on_test_words(tmp_path, name, count):
    """The shipped models (the default GRU; the ensemble of three 2-layer LSTMs): ONNX Runtime's phones
    are ``G2P.pronounce(beam=1)``'s in float32, every one."""
    shipped = G2P.load(name, int8=False)
    export(shipped, tmp_path)
    sample = words(count)
    theirs = shipped.pronounce(sample, beam=1)
    ours = OnnxG2P(tmp_path).pronounce(sample)
    assert [r.phones for r in ours] == [r.phones for r in theirs]
    assert [r.cut for r in ours] == [r.cut for r in theirs]
    np.testing.assert_allclose([r.probability for r in ours], [r.probability for r in theirs], rtol=1e-4)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.weights, b.weights, atol=1e-4, rtol=0)


# -- what does not export, and what is refused ------------------------------------------------------
def test_models_that_do_not_export_are_named(tmp_path):
    transformer = TransformerSeq2Seq(
        TransformerConfig(
            src_vocab=len(LETTERS),
            tgt_vocab=len(PHONEMES),
            d_model=16,
            heads=2,
            ff_dim=16,
            encoder_layers=1,
            decoder_layers=1,
        )
    )
    with pytest.raises(
        AttentionError, match="takes RNN models .RNNSeq2Seq. and ensembles of them, got TransformerSeq2Seq"
    ):
        export(g2p(transformer), tmp_path)
    with pytest.raises(AttentionError, match="takes the attentions .*, got attention='bahdanau'"):
        export(g2p(rnn(attention="bahdanau")), tmp_path)
    with pytest.raises(AttentionError, match="ensemble member 1: .* got attention='local-m'"):
        export(g2p(Ensemble([rnn(), rnn(attention="local-m")])), tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_existing_files_and_bad_opsets_are_refused(tmp_path):
    (tmp_path / "step.onnx").write_text("mine")
    with pytest.raises(AttentionError, match="step.onnx' already exists; pass force=True"):
        export(g2p(rnn()), tmp_path)
    assert (tmp_path / "step.onnx").read_text() == "mine"
    for opset in (14, 10_000, "18"):
        with pytest.raises(AttentionError, match="opset must be an int from 18"):
            export(g2p(rnn()), tmp_path / "new", opset=opset)
    with pytest.raises(AttentionError, match="is not an ONNX export"):
        OnnxG2P(tmp_path)
    for name in FILES:
        (tmp_path / name).write_text("{}")
    with pytest.raises(AttentionError, match="g2p.json' is not the g2p.json of an export"):
        OnnxG2P(tmp_path)
