"""Keys projected once per source (``Attention.project_keys``) give the same attention as the keys
themselves, and the RNN decoder's one-step cells are the ``nn.LSTM`` / ``nn.GRU`` they step."""

import math

import pytest
import torch

from attnkit import SCORES, Attention, AttentionError, capture
from attnkit.models import RNNConfig, RNNSeq2Seq

F64 = torch.float64
PROJECTED = sorted(name for name, score in SCORES.items() if score.project is not None)


def test_the_scores_with_a_key_side_are_general_and_additive():
    assert PROJECTED == ["additive", "general", "scaled_general"]


@pytest.mark.parametrize("score", PROJECTED)
@pytest.mark.parametrize("region", ["global", "local-m", "local-p"])
def test_projected_keys_give_the_same_outputs_weights_and_gradients(score, region):
    torch.manual_seed(0)
    window = None if region == "global" else 1
    att = Attention(6, 4, score=score, region=region, window=window, hidden_dim=5).double()
    q = torch.randn(3, 2, 6, dtype=F64, requires_grad=True)  # (B, Tq, Dq)
    k = torch.randn(3, 5, 4, dtype=F64, requires_grad=True)  # (B, Tk, Dk)
    v = torch.randn(3, 5, 2, dtype=F64, requires_grad=True)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] + [True] * 4])
    results, grads = [], []
    for projected in (False, True):
        kw = {"projected_key": att.project_keys(k)} if projected else {}
        r = att(q, k, v, key_padding_mask=padding, need_weights=True, query_start=1, **kw)
        (r.output.square().sum() + (r.weights * torch.arange(5.0, dtype=F64)).sum()).backward()
        results.append(r)
        grads.append([t.grad.clone() for t in (q, k, v, *att.parameters())])
        for t in (q, k, v, *att.parameters()):
            t.grad = None
    torch.testing.assert_close(results[1].output, results[0].output, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[1].weights, results[0].weights, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_projected_keys_one_step_and_captured():
    torch.manual_seed(1)
    att = Attention(4, 4, score="general").double()
    q, k = torch.randn(2, 4, dtype=F64), torch.randn(2, 3, 4, dtype=F64)
    with capture(att) as rec:
        r = att(q, k, projected_key=att.project_keys(k), need_weights=True)
    want = torch.softmax(((q @ att.score_params["W"])[:, None] * k).sum(-1), -1)  # (B, Tk)
    torch.testing.assert_close(r.weights, want)
    torch.testing.assert_close(rec[rec.names()[0]], want)  # recomputed on the reference path


def test_scaled_general_is_general_over_root_dk():
    torch.manual_seed(2)
    q, k, w = torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 5, 7, dtype=F64), torch.randn(4, 7, dtype=F64)
    torch.testing.assert_close(SCORES["scaled_general"](q, k, {"W": w}), SCORES["general"](q, k, {"W": w}) / math.sqrt(7))


def test_projected_key_needs_a_score_with_a_key_side():
    att = Attention(4, score="dot")
    q, k = torch.randn(2, 4), torch.randn(2, 3, 4)
    assert att.project_keys(k) is None
    with pytest.raises(AttentionError, match="projected_key is given but score 'dot' has no key projection"):
        att(q, k, projected_key=k)
    with pytest.raises(AttentionError, match="score 'dot' has no key-side projection"):
        SCORES["dot"].project_key(k, {})


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 3])
def test_decoder_cells_step_as_the_rnn_module_does(cell, layers):
    """``RNNSeq2Seq._rnn`` steps each layer with the cell function over the ``nn.LSTM`` / ``nn.GRU``
    weights: one step equals the module's own call on a length-1 sequence (the state dict is the
    module's, so checkpoints trained before are read unchanged)."""
    torch.manual_seed(3)
    model = RNNSeq2Seq(RNNConfig(10, 12, cell=cell, layers=layers, hidden_dim=4, embed_dim=3)).double().eval()
    memory = model.encode(torch.tensor([[4, 5, 6], [7, 8, 0]]))
    state = model.start(memory)
    state = state._replace(h=torch.randn_like(state.h), c=None if state.c is None else torch.randn_like(state.c))
    x = torch.randn(2, model.decoder.input_size, dtype=F64)
    out, got = model._rnn(x, state)
    h0 = state.h.transpose(0, 1).contiguous()
    want_out, want = model.decoder(x[:, None], h0 if state.c is None else (h0, state.c.transpose(0, 1).contiguous()))
    torch.testing.assert_close(out, want_out[:, 0])
    if cell == "lstm":
        torch.testing.assert_close(got.h, want[0].transpose(0, 1))
        torch.testing.assert_close(got.c, want[1].transpose(0, 1))
    else:
        torch.testing.assert_close(got.h, want.transpose(0, 1))


def test_input_feeding_off_shrinks_the_decoder_input():
    on = RNNSeq2Seq(RNNConfig(10, 12, hidden_dim=4, embed_dim=3))
    off = RNNSeq2Seq(RNNConfig(10, 12, hidden_dim=4, embed_dim=3, input_feed=False))
    assert on.decoder.input_size == 3 + 8 and off.decoder.input_size == 3
