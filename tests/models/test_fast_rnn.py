"""FastRNN, the inference form of RNNSeq2Seq: the same memories, steps and decoded outputs as the
model it copies (float64 to rounding), int8 close to float32, and clear errors for what it does not run."""

from __future__ import annotations

import pytest
import torch

from attnkit.errors import AttentionError
from attnkit.models import Ensemble, RNNConfig, RNNSeq2Seq, beam_search, greedy
from attnkit.models.fast_rnn import FastRNN, int8_available

CONFIGS = [
    {"cell": cell, "layers": layers, "bidirectional": bi, "input_feed": feed, "attention": att, "scaled": scaled}
    for cell in ("gru", "lstm")
    for layers, bi, feed, att, scaled in [
        (1, True, False, "luong-general", True),
        (2, True, True, "luong-dot", True),
        (2, False, False, "luong-dot", False),
        (1, True, True, "luong-general", False),
        (3, True, False, "luong-general", True),
    ]
]

# ragged rows: full, short, one letter, one padded position, and a row whose letters repeat
SRC = torch.tensor(
    [[3, 4, 5, 6, 7, 8], [8, 9, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0], [4, 4, 4, 4, 4, 0], [10, 3, 11, 2, 0, 0]]
)


def _model(seed: int = 0, dtype=torch.float64, **kwargs) -> RNNSeq2Seq:
    torch.manual_seed(seed)
    cfg = RNNConfig(src_vocab=12, tgt_vocab=9, embed_dim=6, hidden_dim=8, **kwargs)
    return RNNSeq2Seq(cfg).to(dtype).eval()


@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_memory_and_steps_equal_the_model(kwargs):
    model = _model(**kwargs)
    fast = FastRNN(model)
    a, b = model.encode(SRC), fast.encode(SRC)
    torch.testing.assert_close(b.states, a.states, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.context, a.context, rtol=0, atol=1e-12)
    assert torch.equal(b.padding, a.padding)
    if a.keys is not None:
        torch.testing.assert_close(b.keys, a.keys, rtol=0, atol=1e-12)
    sa, sb = model.start(a), fast.start(b)
    token = torch.tensor([1, 3, 4, 5, 6])
    for t in range(4):
        la, sa, wa, _ = model.step(a, sa, token, t)
        lb, sb, wb, _ = fast.step(b, sb, token, t)
        torch.testing.assert_close(lb, la, rtol=0, atol=1e-12)
        torch.testing.assert_close(wb, wa, rtol=0, atol=1e-12)
        for x, y in zip(sb, sa):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
        token = la.argmax(-1)


@pytest.mark.parametrize("kwargs", CONFIGS[:4], ids=lambda k: "-".join(str(v) for v in k.values()))
def test_greedy_and_beam_search_decode_the_same_outputs(kwargs):
    model = _model(seed=1, **kwargs)
    fast = FastRNN(model)
    for decode in (lambda m: greedy(m, SRC, max_len=7), lambda m: beam_search(m, SRC, beam=3, max_len=7)):
        for x, y in zip(decode(fast), decode(model)):
            assert x.tokens == y.tokens and x.finished == y.finished
            assert x.score == pytest.approx(y.score, abs=1e-10)
            torch.testing.assert_close(x.weights, y.weights, rtol=0, atol=1e-12)


def test_an_ensemble_of_fast_members_is_the_ensemble():
    members = [_model(seed=s, cell="lstm", layers=2, input_feed=False, scaled=True) for s in (2, 3)]
    plain, fast = Ensemble(members), Ensemble([FastRNN(m) for m in members])
    for x, y in zip(beam_search(fast, SRC, beam=4, max_len=6), beam_search(plain, SRC, beam=4, max_len=6)):
        assert x.tokens == y.tokens
        assert x.score == pytest.approx(y.score, abs=1e-10)


def test_a_float32_model_decodes_as_in_float32():
    model = _model(seed=4, dtype=torch.float32, cell="gru", input_feed=False, scaled=True)
    fast = FastRNN(model)
    assert not fast.int8
    a, b = model.encode(SRC), fast.encode(SRC)
    torch.testing.assert_close(b.states, a.states, rtol=1e-5, atol=1e-6)
    assert [h.tokens for h in greedy(fast, SRC, max_len=7)] == [h.tokens for h in greedy(model, SRC, max_len=7)]


@pytest.mark.skipif(not int8_available(), reason="this torch build has no quantized CPU engine")
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_int8_products_stay_close_to_float32(cell):
    torch.manual_seed(5)
    cfg = RNNConfig(src_vocab=30, tgt_vocab=40, cell=cell, embed_dim=32, hidden_dim=64, layers=2, scaled=True)
    model = RNNSeq2Seq(cfg).eval()
    exact, int8 = FastRNN(model), FastRNN(model, int8=True)
    assert int8.int8 and not exact.int8
    src = torch.randint(3, 30, (64, 9))
    src[::3, 6:] = 0
    a, b = exact.encode(src), int8.encode(src)
    assert (b.states - a.states).norm() / a.states.norm() < 0.03  # quantized to 8 bits: ~1% relative
    sa, sb = exact.start(a), int8.start(b)
    token = torch.full((64,), 1)
    la, _, wa, _ = exact.step(a, sa, token, 0)
    lb, _, wb, _ = int8.step(b, sb, token, 0)
    assert (lb - la).norm() / la.norm() < 0.03
    assert (wb - wa).abs().max() < 0.05
    torch.testing.assert_close(wb.sum(-1), torch.ones(64))


def test_outputs_carry_no_graph():
    model = _model(seed=6, dtype=torch.float32, cell="lstm", input_feed=True)
    fast = FastRNN(model)
    memory = fast.encode(SRC)
    logits, state, weights, _ = fast.step(memory, fast.start(memory), torch.ones(5, dtype=torch.long), 0)
    assert not any(t.requires_grad for t in (memory.states, logits, weights, state.h, state.c, state.feed))


def test_what_it_does_not_run_is_named():
    with pytest.raises(AttentionError, match=r"model must be an RNNSeq2Seq, got Linear"):
        FastRNN(torch.nn.Linear(2, 2))
    for attention in ("bahdanau", "none", "local-p", "sparsemax"):
        with pytest.raises(AttentionError, match=rf"this model has attention='{attention}': decode the model itself"):
            FastRNN(_model(attention=attention))


def test_later_changes_to_the_model_are_not_seen():
    model = _model(seed=7, cell="gru", scaled=True)
    fast = FastRNN(model)
    before = fast.encode(SRC).keys.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.testing.assert_close(fast.encode(SRC).keys, before, rtol=0, atol=0)
