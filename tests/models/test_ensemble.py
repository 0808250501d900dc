"""Ensembles decode as one model: the combined distribution is the members' mean, an ensemble of
copies is the model itself (greedy, beam search, teacher forcing; RNN and Transformer members),
int8 storage is within half a step of the weights, and packed checkpoints load as ensembles."""

import math

import pytest
import torch
from safetensors import safe_open

from attnkit import AttentionError
from attnkit.cli import main
from attnkit.data import cmudict
from attnkit.data.vocab import BOS, EOS
from attnkit.models import (
    Ensemble,
    RNNConfig,
    RNNSeq2Seq,
    TransformerConfig,
    TransformerSeq2Seq,
    beam_search,
    greedy,
)
from attnkit.tasks.g2p import G2P, G2PTask, pack
from attnkit.train import TrainConfig, Trainer, checkpoint

from test_viz_cli import page_data  # tests/cli, on pytest's pythonpath

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = torch.tensor([[3, 4, 5, 6, 0], [7, 8, 0, 0, 0], [5, 5, 4, 3, 9]])


def _rnn(seed: int) -> RNNSeq2Seq:
    torch.manual_seed(seed)
    return RNNSeq2Seq(RNNConfig(src_vocab=11, tgt_vocab=13, hidden_dim=16, embed_dim=8, dropout=0.0)).eval()


def _transformer(seed: int) -> TransformerSeq2Seq:
    torch.manual_seed(seed)
    config = TransformerConfig(src_vocab=11, tgt_vocab=13, d_model=16, heads=2, ff_dim=32, dropout=0.0)
    return TransformerSeq2Seq(config).eval()


def _same(a, b):
    assert [h.tokens for h in a] == [h.tokens for h in b]
    torch.testing.assert_close(torch.tensor([h.score for h in a]), torch.tensor([h.score for h in b]))
    for x, y in zip(a, b):
        torch.testing.assert_close(x.weights, y.weights)


@pytest.mark.parametrize("build", [_rnn, _transformer])
@pytest.mark.parametrize("combine", ["probability", "log"])
def test_an_ensemble_of_copies_decodes_as_the_model(build, combine):
    model = build(0)
    ensemble = Ensemble([model, build(0), build(0)], combine).eval()  # three equal members
    _same(greedy(ensemble, SRC, max_len=7), greedy(model, SRC, max_len=7))
    _same(beam_search(ensemble, SRC, beam=3, max_len=7), beam_search(model, SRC, beam=3, max_len=7))


@pytest.mark.parametrize("combine", ["probability", "log"])
def test_each_step_is_the_mean_of_the_members_distributions(combine):
    members = [_rnn(0), _rnn(1), _transformer(2)]  # a Transformer's cache beside RNN states
    ensemble = Ensemble(members, combine)
    memory = ensemble.encode(SRC)
    state = ensemble.start(memory)
    token = torch.tensor([1, 1, 1])
    mems = [m.encode(SRC) for m in members]
    states = [m.start(mem) for m, mem in zip(members, mems)]
    for t in range(3):
        logp, state, weights, _ = ensemble.step(memory, state, token, t)
        probs, ws = [], []
        for i, m in enumerate(members):
            logits, states[i], w, _ = m.step(mems[i], states[i], token, t, True)
            probs.append(logits.softmax(-1))
            ws.append(w)
        stacked = torch.stack(probs)
        expected = stacked.mean(0) if combine == "probability" else stacked.log().mean(0).softmax(-1)
        torch.testing.assert_close(logp.exp(), expected)
        torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3))
        torch.testing.assert_close(weights, torch.stack(ws).mean(0))  # the members' mean attention
        token = logp.argmax(-1)


def test_beam_search_reorders_every_members_state():
    """A beam of an RNN and a Transformer member against a search that recomputes every prefix from
    scratch: reordered caches or states that went wrong would change the scores."""
    ensemble = Ensemble([_rnn(0), _transformer(1)])
    hyps = beam_search(ensemble, SRC, beam=4, max_len=6, alpha=0.0)
    for i, h in enumerate(hyps):
        target = [*h.tokens, EOS] if len(h.tokens) < 6 else h.tokens  # after 6 steps: stopped, no EOS
        with torch.no_grad():
            logp = ensemble.decode(ensemble.encode(SRC[i : i + 1]), torch.tensor([[BOS, *target[:-1]]])).logits[0]
        rescored = sum(float(logp[t, tok]) for t, tok in enumerate(target))  # teacher-forced, from scratch
        assert math.isclose(h.score, rescored, rel_tol=1e-4, abs_tol=1e-4), (i, h.score, rescored)


def test_the_combination_has_exact_gradients():
    ensemble = Ensemble([_rnn(0), _rnn(1)])
    for combine in ("probability", "log"):
        ensemble.combine = combine
        logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x: ensemble._combine(x), (logits,))


def test_bad_ensembles_are_refused():
    with pytest.raises(AttentionError, match="members is empty"):
        Ensemble([])
    with pytest.raises(AttentionError, match=r"combine='max' is unknown; expected one of \['probability', 'log'\]"):
        Ensemble([_rnn(0)], combine="max")


def test_int8_storage_is_within_half_a_step_of_every_weight():
    torch.manual_seed(0)
    tensors = {"w": torch.randn(6, 4, 3) * 3, "zero": torch.zeros(2, 5), "b": torch.randn(7), "n": torch.arange(4)}
    stored = checkpoint.quantize(tensors)
    assert stored["w"].dtype == torch.int8 and stored["w:int8_scale"].shape == (6,)
    assert stored["b"] is tensors["b"] and stored["n"] is tensors["n"]  # 1-dim and integer tensors stay
    back = checkpoint.dequantize(stored)
    assert set(back) == set(tensors)
    step = tensors["w"].abs().amax((1, 2), keepdim=True) / 127
    assert bool(((back["w"] - tensors["w"]).abs() <= step / 2 + 1e-6).all())
    assert back["zero"].eq(0).all()
    with pytest.raises(checkpoint.CheckpointError, match="already holds integer scales"):
        checkpoint.quantize(stored)


def test_int4_storage_is_within_half_a_step_of_every_weight_in_its_group():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 256) * 2
    w[1, 2, 128:] = 0  # an all-zero group
    tensors = {"w": w, "odd": torch.randn(4, 7), "short": torch.randn(3, 6), "b": torch.randn(7), "e": torch.ones(0, 4)}
    stored = checkpoint.quantize(tensors, bits=4)
    assert stored["w"].dtype == torch.uint8 and stored["w"].shape == (5, 3, 128)  # two weights a byte
    assert stored["w:int4_scale"].shape == (5, 3, 2)  # one scale per 128 weights of the last dim
    assert stored["short:int4_scale"].shape == (3, 1)  # 6 is no multiple of 128: one group a row
    assert stored["odd"].dtype == torch.int8 and "odd:int8_scale" in stored  # an odd last dim: int8
    assert stored["b"] is tensors["b"] and stored["e"] is tensors["e"]  # an empty matrix stays
    back = checkpoint.dequantize(stored)
    assert set(back) == set(tensors) and back["w"].shape == w.shape
    step = w.reshape(5, 3, 2, 128).abs().amax(-1, keepdim=True) / 7
    assert bool(((back["w"] - w).reshape(5, 3, 2, 128).abs() <= step / 2 + 1e-6).all())
    assert back["w"][1, 2, 128:].eq(0).all()
    levels = (back["w"].reshape(5, 3, 2, 128) / torch.where(step > 0, step, 1)).round()
    assert levels.abs().max() == 7 and levels.unique().numel() == 15  # all of -7..7, the extremes hit
    step = tensors["short"].abs().amax(-1, keepdim=True) / 7
    assert bool(((back["short"] - tensors["short"]).abs() <= step / 2 + 1e-6).all())
    with pytest.raises(checkpoint.CheckpointError, match="already holds integer scales"):
        checkpoint.quantize(stored, bits=4)
    with pytest.raises(checkpoint.CheckpointError, match="bits=3 is not supported; expected 4 or 8"):
        checkpoint.quantize(tensors, bits=3)
    with pytest.raises(checkpoint.CheckpointError, match="group=5 must be an even int >= 2"):
        checkpoint.quantize(tensors, bits=4, group=5)


@pytest.mark.parametrize(
    "bits, shape, bad",
    [
        (8, (4, 3), r"int8 scales 'w:int8_scale' \(2,\) do not match tensor 'w' \(torch.int8 \(4, 3\)\)"),
        (4, (4, 256), r"int4 scales 'w:int4_scale' \(2, 2\) do not match tensor 'w' \(torch.uint8 \(4, 128\)\)"),
    ],
)
def test_quantized_checkpoints_load_as_float_and_bad_scales_are_named(tmp_path, bits, shape, bad):
    path = tmp_path / "q.safetensors"
    w = torch.randn(*shape)
    checkpoint.save(path, checkpoint.quantize({"w": w}, bits=bits), {})
    loaded, _ = checkpoint.load(path)
    levels = 127 if bits == 8 else 7
    assert loaded["w"].dtype == torch.float32 and (loaded["w"] - w).abs().max() < w.abs().max() / levels
    broken = checkpoint.quantize({"w": w}, bits=bits)
    broken[f"w:int{bits}_scale"] = broken[f"w:int{bits}_scale"][:2]
    checkpoint.save(path, broken, {})
    with pytest.raises(checkpoint.CheckpointError, match=r"q.safetensors' is corrupt: " + bad):
        checkpoint.load(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny G2P models of the same shape, trained for one epoch with different seeds."""
    folder = tmp_path_factory.mktemp("runs")
    task = G2PTask("rnn", {"hidden_dim": 16, "embed_dim": 8}, limit=60, valid_limit=4)
    for seed in (0, 1):
        config = TrainConfig(epochs=1, batch_size=16, warmup_steps=1, seed=seed)
        Trainer(task, config, folder / str(seed), progress=False).fit()
    return [folder / "0", folder / "1"]


@pytest.mark.parametrize("storage", ["float16", "int8", "int4"])
def test_packed_members_decode_as_their_ensemble(runs, tmp_path, storage):
    words = [e.word for e in cmudict.spread(cmudict.load("valid"), 20)]
    path = tmp_path / "ens.safetensors"
    meta = pack(runs, path, storage=storage)
    assert meta["ensemble"] == {"members": 2, "combine": "probability"} and meta["storage"] == storage
    packed = G2P.load(path)
    assert isinstance(packed.model, Ensemble) and len(packed.members) == 2
    members = [G2P.load(r) for r in runs]
    for m, loaded in zip(members, packed.members):  # each member as it is stored: rounded to float16, int8 or int4
        tensors = m.model.state_dict()
        stored = (
            checkpoint.dequantize(checkpoint.quantize(tensors, bits={"int8": 8, "int4": 4}[storage]))
            if storage != "float16"
            else {k: v.half().float() for k, v in tensors.items()}
        )
        m.model.load_state_dict(stored)
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in stored.items())
    expected = G2P(Ensemble([m.model for m in members]), members[0].task_doc, "expected")
    assert [p.phones for p in packed.pronounce(words)] == [p.phones for p in expected.pronounce(words)]
    single = tmp_path / "one.safetensors"
    assert "ensemble" not in pack(runs[:1], single)
    assert not isinstance(G2P.load(single).model, Ensemble)


def test_each_storage_holds_the_bytes_it_promises(runs, tmp_path):
    """float16: 2 bytes a weight; int8: 1 byte a matrix weight plus a float32 scale a row; int4:
    half a byte a matrix weight (all last dims here are even) plus a float32 scale per group of the
    last dim; vectors kept in float32; the file is those bytes plus its header."""
    tensors = [v for r in runs for v in checkpoint.load(r / "best.safetensors")[0].values()]
    matrices, vectors = [t for t in tensors if t.dim() >= 2], [t for t in tensors if t.dim() < 2]
    expected = {
        "float16": 2 * sum(t.numel() for t in tensors),
        "int8": sum(t.numel() + 4 * t.shape[0] for t in matrices) + 4 * sum(t.numel() for t in vectors),
        "int4": sum(t.numel() // 2 + 4 * t.numel() // _group(t.shape[-1]) for t in matrices)
        + 4 * sum(t.numel() for t in vectors),
    }
    for storage, size in expected.items():
        path = tmp_path / storage
        pack(runs, path, storage=storage)
        with safe_open(str(path), framework="pt") as f:
            stored = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())  # noqa: SIM118
        assert stored == size and path.stat().st_size - stored < 20_000, (storage, stored, size)


def _group(last: int) -> int:
    return checkpoint.GROUP if last % checkpoint.GROUP == 0 else last


def test_pack_refuses_other_models_ensembles_and_bad_options(runs, tmp_path):
    other = tmp_path / "other"
    task = G2PTask("rnn", {"hidden_dim": 8, "embed_dim": 8}, limit=20, valid_limit=2)
    Trainer(task, TrainConfig(epochs=1, batch_size=16, warmup_steps=1), other, progress=False).fit()
    with pytest.raises(AttentionError, match="is another model or vocabulary than"):
        pack([runs[0], other], tmp_path / "x")
    pack(runs, tmp_path / "ens")
    with pytest.raises(AttentionError, match="is an ensemble already"):
        pack([tmp_path / "ens"], tmp_path / "y")
    with pytest.raises(
        AttentionError, match=r"storage='int2' is unknown; expected one of \['float16', 'int8', 'int4'\]"
    ):
        pack(runs, tmp_path / "z", storage="int2")
    with pytest.raises(AttentionError, match="sources is empty"):
        pack([], tmp_path / "z")
    tensors, meta = checkpoint.load(tmp_path / "ens")
    meta.pop("format")
    meta["ensemble"] = {"members": 0, "combine": "probability"}
    checkpoint.save(tmp_path / "bad", tensors, meta)
    with pytest.raises(checkpoint.CheckpointError, match=r"'.*bad': ensemble must be \{'members': an int in 1..64"):
        G2P.load(tmp_path / "bad")


def test_viz_shows_every_members_attention(runs, tmp_path):
    pack(runs, tmp_path / "ens.safetensors")
    assert main(["viz", "g2p", "cat", "--checkpoint", str(tmp_path / "ens.safetensors"), "--out", str(tmp_path)]) == 0
    (view,) = page_data(tmp_path / "g2p-cat.html")["views"]
    assert view["layers"] == ["members.0.attention", "members.1.attention"]
    weights = torch.tensor(view["weights"])  # (members, heads, T, S)
    assert weights.shape[0] == 2 and weights.shape[-1] == 3
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-3, rtol=0)  # the page rounds


def test_viz_of_a_transformer_ensemble_keeps_encoder_and_decoder_apart(tmp_path):
    task = G2PTask("transformer", {"d_model": 16, "heads": 2, "ff_dim": 32, "encoder_layers": 1, "decoder_layers": 1},
                   limit=40, valid_limit=2)  # fmt: skip
    for seed in (0, 1):
        Trainer(task, TrainConfig(epochs=1, batch_size=16, warmup_steps=1, seed=seed), tmp_path / str(seed),
                progress=False).fit()  # fmt: skip
    pack([tmp_path / "0", tmp_path / "1"], tmp_path / "ens.safetensors")
    assert main(["viz", "g2p", "cat", "--checkpoint", str(tmp_path / "ens.safetensors"), "--out", str(tmp_path)]) == 0
    views = {v["name"]: v["layers"] for v in page_data(tmp_path / "g2p-cat.html")["views"]}
    assert [n.split(".")[:3] for n in views["encoder self-attention"]] == [
        ["members", "0", "encoder"],
        ["members", "1", "encoder"],
    ]
    for name in ("decoder self-attention", "cross-attention"):
        assert len(views[name]) == 2 and not any(".encoder." in n for n in views[name]), views[name]
