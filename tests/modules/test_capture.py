"""capture(model): weights of every attnkit module by name, fast paths untouched."""

import pytest
import torch
from torch import nn

import attnkit
from attnkit import NORMALIZERS, Attention, AttentionError, MultiHeadAttention
from attnkit.models import TransformerConfig, TransformerSeq2Seq


def small_transformer():
    torch.manual_seed(0)
    return TransformerSeq2Seq(TransformerConfig(12, 14, d_model=16, heads=2, ff_dim=32)).eval()


SRC = torch.tensor([[4, 5, 6, 7], [7, 8, 0, 0]])
TGT = torch.tensor([[1, 3, 4], [1, 4, 5]])


def test_outputs_are_unchanged_and_every_module_is_named_in_model_order():
    model = small_transformer()
    plain = model(SRC, TGT).logits
    with attnkit.capture(model) as rec:
        captured = model(SRC, TGT).logits
    assert torch.equal(plain, captured)  # bit for bit: the fast path still ran
    assert rec.names() == [
        "encoder.0.attn", "encoder.1.attn", "encoder.2.attn",
        "decoder.0.self_attn", "decoder.0.cross_attn", "decoder.1.self_attn",
        "decoder.1.cross_attn", "decoder.2.self_attn", "decoder.2.cross_attn",
    ]  # fmt: skip


def test_recorded_weights_are_the_modules_own_weights():
    model = small_transformer()
    memory = model.encode(SRC)
    with attnkit.capture(model) as rec:
        model.decode(memory, TGT, need_weights=False)
    want = model.decode(memory, TGT, need_weights=True).weights  # last layer, mean of heads
    got = rec["decoder.2.cross_attn"]  # (B, H, Tq, Tk), every head
    assert got.shape == (2, 2, 3, 4)
    torch.testing.assert_close(got.mean(1), want.detach(), atol=1e-6, rtol=1e-5)
    assert got[1, :, :, 2:].abs().max() == 0  # padding gets no weight
    torch.testing.assert_close(rec["decoder.0.self_attn"].sum(-1), torch.ones(2, 2, 3))
    assert rec["decoder.0.self_attn"].triu(1).abs().max() == 0  # causal


def test_every_call_is_kept_and_a_one_step_query_records_b_by_tk():
    torch.manual_seed(0)
    att = Attention(8, score="general")
    keys = torch.randn(2, 5, 8)
    with attnkit.capture(att) as rec:
        outs = [att(torch.randn(2, 8), keys, need_weights=True) for _ in range(3)]
    calls = rec.calls("")
    assert len(calls) == 3 and calls[0].shape == (2, 5)
    for out, w in zip(outs, calls):
        torch.testing.assert_close(w, out.weights)


def test_random_weights_are_the_draws_of_the_real_call():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, normalize=NORMALIZERS["sample"](k=1))
    x = torch.randn(2, 4, 8)
    with attnkit.capture(mha) as rec:
        out, weights = mha(x)
    assert weights is None  # not asked for: the recorder's request does not leak out
    w = rec[""]  # (B, H, Tq, Tk) one-hot draws
    assert set(w.unique().tolist()) <= {0.0, 1.0}
    v = mha.v_proj(x).view(2, 4, 2, 4).transpose(1, 2)  # (B, H, Tk, Dh)
    want = mha.out_proj((w @ v).transpose(1, 2).reshape(2, 4, 8))
    torch.testing.assert_close(out, want)  # the output was made from exactly these draws


def test_nothing_is_recorded_outside_the_block():
    model = small_transformer()
    with attnkit.capture(model) as rec:
        pass
    model(SRC, TGT)
    assert rec.names() == []
    with pytest.raises(
        AttentionError, match=r"no weights recorded for 'encoder.0.attn'; recorded: none \(did the model run\?\)"
    ):
        rec["encoder.0.attn"]


def test_a_model_without_attnkit_attention_is_an_error():
    with pytest.raises(AttentionError, match="Linear contains no attnkit attention module to capture"):
        attnkit.capture(nn.Linear(2, 2)).__enter__()


def test_weights_are_recomputed_from_a_snapshot_of_the_parameters():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, score="general")
    x = torch.randn(1, 3, 8)
    want = mha(x, need_weights=True, average_weights=False).weights.detach()
    with attnkit.capture(mha) as rec:
        mha(x)
    with torch.no_grad():
        for p in mha.parameters():
            p.add_(1.0)  # a training step after the call does not change what was recorded
    torch.testing.assert_close(rec[""], want)
