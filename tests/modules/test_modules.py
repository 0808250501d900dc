"""Modules checked against PyTorch (nn.MultiheadAttention, SDPA) and against their definitions."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnkit
from attnkit import Attention, AttentionPooling, HierarchicalAttention, MultiHeadAttention, masks

F64 = torch.float64


def _torch_mha(embed_dim=16, heads=4, kdim=None, vdim=None, bias=True):
    torch.manual_seed(0)
    return nn.MultiheadAttention(embed_dim, heads, bias=bias, kdim=kdim, vdim=vdim, batch_first=True).to(F64).eval()


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("masking", ["none", "padding", "causal", "both", "float"])
def test_mha_matches_torch_self_attention(masking, average):
    ref = _torch_mha()
    ours = MultiHeadAttention.from_torch(ref).eval()
    x = torch.randn(3, 7, 16, dtype=F64)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[1, 5:] = True  # example 1 has 5 real keys
    kpm[2, 3:] = True
    blocked = torch.ones(7, 7, dtype=torch.bool).triu(1)  # torch polarity: True = blocked
    float_mask = torch.randn(7, 7, dtype=F64)
    torch_kw, our_kw = {}, {}
    if masking in ("padding", "both"):
        torch_kw["key_padding_mask"] = our_kw["key_padding_mask"] = kpm
    if masking in ("causal", "both"):
        torch_kw["attn_mask"], our_kw["mask"] = blocked, ~blocked  # ours: True = may attend
    if masking == "float":
        torch_kw["attn_mask"], our_kw["mask"] = float_mask, float_mask
    want_out, want_w = ref(x, x, x, average_attn_weights=average, **torch_kw)
    got_out, got_w = ours(x, need_weights=True, average_weights=average, **our_kw)
    torch.testing.assert_close(got_out, want_out, atol=1e-10, rtol=0)
    torch.testing.assert_close(got_w, want_w, atol=1e-10, rtol=0)


def test_mha_matches_torch_cross_attention_with_kdim_vdim_and_no_bias():
    ref = _torch_mha(kdim=10, vdim=6, bias=False)
    ours = MultiHeadAttention.from_torch(ref).eval()
    q, k, v = torch.randn(2, 4, 16, dtype=F64), torch.randn(2, 9, 10, dtype=F64), torch.randn(2, 9, 6, dtype=F64)
    kpm = torch.zeros(2, 9, dtype=torch.bool)
    kpm[0, 6:] = True
    want_out, want_w = ref(q, k, v, key_padding_mask=kpm)
    got_out, got_w = ours(q, k, v, key_padding_mask=kpm, need_weights=True)
    torch.testing.assert_close(got_out, want_out, atol=1e-10, rtol=0)
    torch.testing.assert_close(got_w, want_w, atol=1e-10, rtol=0)


def test_mha_causal_flag_equals_explicit_causal_mask():
    ref = _torch_mha()
    causal = MultiHeadAttention.from_torch(ref, causal=True).eval()
    plain = MultiHeadAttention.from_torch(ref).eval()
    x = torch.randn(2, 6, 16, dtype=F64)
    got = causal(x, need_weights=True)
    want = plain(x, mask=masks.causal(), need_weights=True)
    torch.testing.assert_close(got.output, want.output, atol=1e-12, rtol=0)
    assert got.weights.triu(1).eq(0).all()


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
def test_functional_scaled_dot_matches_sdpa(mask_kind):
    q, k, v = (torch.randn(2, 3, 5, 8, dtype=F64) for _ in range(3))
    kw_sdpa, kw_ours = {}, {}
    if mask_kind == "bool":
        m = torch.rand(5, 5) > 0.3
        m[:, 0] = True  # SDPA gives NaN on a fully masked row; ours gives zeros (tested elsewhere)
        kw_sdpa["attn_mask"] = kw_ours["mask"] = m
    elif mask_kind == "float":
        m = torch.randn(2, 1, 5, 5, dtype=F64)
        kw_sdpa["attn_mask"] = kw_ours["mask"] = m
    elif mask_kind == "causal":
        kw_sdpa["is_causal"], kw_ours["mask"] = True, masks.causal()
    want = F.scaled_dot_product_attention(q, k, v, **kw_sdpa)
    got, _ = attnkit.attention(q, k, v, **kw_ours)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_mha_fully_masked_row_gives_zero_attention_and_finite_gradients():
    ours = MultiHeadAttention(16, 4).double()
    x = torch.randn(2, 5, 16, dtype=F64, requires_grad=True)
    allowed = torch.ones(5, 5, dtype=torch.bool)
    allowed[2] = False  # query 2 may attend nothing
    out, w = ours(x, mask=allowed, need_weights=True, average_weights=False)
    assert w[:, :, 2].eq(0).all()
    # zero attention output, so the layer's output is the output projection's bias alone
    torch.testing.assert_close(out[:, 2], ours.out_proj.bias.expand(2, 16), atol=0, rtol=0)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "score", ["general", "additive", "cosine", "concat", ["additive", "scaled_dot", "additive"]]
)
def test_mha_gives_each_head_its_own_score_parameters(score):
    torch.manual_seed(1)
    mha = MultiHeadAttention(12, 3, score=score).double().eval()
    per_head = [score] * 3 if isinstance(score, str) else score
    x = torch.randn(2, 4, 12, dtype=F64)
    got = mha(x, need_weights=True, average_weights=False)
    heads = []
    for h in range(3):
        sl = slice(4 * h, 4 * h + 4)
        q = x @ mha.q_proj.weight[sl].T + mha.q_proj.bias[sl]
        k = x @ mha.k_proj.weight[sl].T + mha.k_proj.bias[sl]
        v = x @ mha.v_proj.weight[sl].T + mha.v_proj.bias[sl]
        name = per_head[h]
        g = mha.groups[name].index(h)  # this head's row in its score group's parameters
        params = {p: t[g] for p, t in mha.score_params[name].items()}
        out, w = attnkit.attention(q, k, v, score=name, score_params=params, need_weights=True)
        torch.testing.assert_close(got.weights[:, h], w, atol=1e-12, rtol=0)
        heads.append(out)
    want = mha.out_proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(got.output, want, atol=1e-12, rtol=0)


def test_mha_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2, dropout=0.5).double()
    x = torch.randn(2, 6, 16, dtype=F64)
    train_a, train_b = mha(x).output, mha(x).output
    assert not torch.allclose(train_a, train_b)
    mha.eval()
    torch.testing.assert_close(mha(x).output, mha(x).output, atol=0, rtol=0)


def test_mha_gradcheck_float64():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, score="additive").double()
    x = torch.randn(2, 3, 8, dtype=F64, requires_grad=True)
    kpm = torch.tensor([[False, False, True], [False, False, False]])
    assert torch.autograd.gradcheck(lambda x: mha(x, key_padding_mask=kpm).output, (x,))


def test_attention_step_query_equals_sequence_of_one():
    att = Attention(6, 4, score="additive").double()
    q, k = torch.randn(3, 6, dtype=F64), torch.randn(3, 5, 4, dtype=F64)
    kpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 5])
    step = att(q, k, key_padding_mask=kpm, need_weights=True)
    seq = att(q[:, None], k, key_padding_mask=kpm, need_weights=True)
    torch.testing.assert_close(step.output, seq.output[:, 0], atol=0, rtol=0)
    torch.testing.assert_close(step.weights, seq.weights[:, 0], atol=0, rtol=0)
    assert step.weights[1, 3:].eq(0).all()


def test_attention_local_m_step_is_centred_on_its_position():
    att = Attention(4, region="local-m", window=1).double()
    q, k = torch.randn(2, 4, dtype=F64), torch.randn(2, 7, 4, dtype=F64)
    w = att(q, k, need_weights=True, query_start=3).weights  # step t = 3 attends source 2..4
    assert w[:, [0, 1, 5, 6]].eq(0).all() and (w[:, 2:5] > 0).all()
    full = att(torch.randn(2, 7, 4, dtype=F64), k, need_weights=True).weights
    assert (full > 0).eq(masks.sliding_window(1, 1).materialize((7, 7))).all()


def test_attention_local_p_matches_luong_definition():
    torch.manual_seed(0)
    att = Attention(5, region="local-p", window=2, score="general").double()
    q, k = torch.randn(2, 3, 5, dtype=F64), torch.randn(2, 8, 5, dtype=F64)
    kpm = torch.zeros(2, 8, dtype=torch.bool)
    kpm[1, 6:] = True  # S = 8 and 6
    got = att(q, k, key_padding_mask=kpm, need_weights=True).weights  # (B, Tq, Tk)
    p = att.centre_params
    lengths = torch.tensor([8.0, 6.0], dtype=F64)
    centre = (lengths[:, None] - 1) * torch.sigmoid(torch.tanh(q @ p["W_p"]) @ p["v_p"])  # (B, Tq)
    s = torch.arange(8, dtype=F64)
    scores = (q @ att.score_params["W"]) @ k.transpose(1, 2)
    inside = ((s - centre[..., None]).abs() <= 2) & ~kpm[:, None, :]
    align = torch.softmax(scores.masked_fill(~inside, -math.inf), dim=-1)
    want = align * torch.exp(-((s - centre[..., None]) ** 2) / (2 * 1.0**2))  # sigma = D/2 = 1
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert (centre >= 0).all() and (centre <= lengths[:, None] - 1).all()


def test_attention_pooling_is_the_han_attention_layer():
    torch.manual_seed(0)
    pool = AttentionPooling(6, hidden_dim=5).double()
    h = torch.randn(2, 4, 6, dtype=F64)
    valid = torch.tensor([[True] * 4, [True, True, False, False]])
    out, w = pool(h, mask=valid, need_weights=True)
    p = pool.attend.score_params
    u = torch.tanh(h @ p["W_k"] + pool.query @ p["W_q"])  # (B, T, A): bias b = W_q q
    a = torch.softmax((u @ p["v"]).masked_fill(~valid, -math.inf), dim=-1)  # (B, T)
    torch.testing.assert_close(w, a, atol=1e-12, rtol=0)
    torch.testing.assert_close(out, (a[..., None] * h).sum(1), atol=1e-12, rtol=0)


def test_attention_pooling_multiple_queries_are_separate_views():
    pool = AttentionPooling(6, num_queries=3, score="scaled_dot").double()
    h = torch.randn(2, 4, 6, dtype=F64)
    out, w = pool(h, need_weights=True)
    assert out.shape == (2, 3, 6) and w.shape == (2, 3, 4)
    torch.testing.assert_close(out, w @ h, atol=1e-12, rtol=0)


def test_hierarchical_attention_composes_two_poolings_over_real_sentences():
    torch.manual_seed(0)
    han = HierarchicalAttention(6, 4, sentence_encoder=nn.Linear(6, 4)).double()
    words = torch.randn(2, 3, 5, 6, dtype=F64)
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[0, 2] = False  # document 0 has two sentences
    mask[1, 1, 2:] = False  # sentence 1 of document 1 has two words
    r = han(words, mask)
    torch.testing.assert_close(r.sentence_weights.sum(-1), torch.ones(2, dtype=F64), atol=1e-12, rtol=0)
    assert r.sentence_weights[0, 2] == 0 and r.word_weights[0, 2].eq(0).all()
    assert r.word_weights[1, 1, 2:].eq(0).all()
    real = mask.any(-1)
    torch.testing.assert_close(r.word_weights.sum(-1), real.to(F64), atol=1e-12, rtol=0)
    sentence_vectors = han.word_pool(words.reshape(6, 5, 6), mask=mask.reshape(6, 5)).output.reshape(2, 3, 6)
    doc, _ = han.sentence_pool(han.sentence_encoder(sentence_vectors), mask=real)
    torch.testing.assert_close(r.document, doc, atol=1e-12, rtol=0)


def test_attention_pooling_with_sampling_returns_log_prob_for_reinforce():
    torch.manual_seed(0)
    pool = AttentionPooling(4, normalize=attnkit.NORMALIZERS["sample"](k=1)).double()
    h = torch.randn(3, 5, 4, dtype=F64)
    torch.manual_seed(1)
    out, w = pool(h, need_weights=True)
    picked = w.argmax(-1)  # (B,): the sampled position, weight 1
    torch.testing.assert_close(out, h[torch.arange(3), picked], atol=0, rtol=0)
    torch.manual_seed(1)  # the same draws again
    log_prob = pool(h).log_prob  # (B,)
    scores = pool.attend.score(pool.query.expand(3, 1, 4), h, dict(pool.attend.score_params))[:, 0]  # (B, T)
    want = torch.log_softmax(scores, -1)[torch.arange(3), picked]
    torch.testing.assert_close(log_prob, want, atol=1e-12, rtol=0)
