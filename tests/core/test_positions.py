"""Position-aware score modifiers (attnkit.positions): RoPE, ALiBi, T5's relative bias and soft-capping.

Each against its peer in float64 (Hugging Face's Llama rotary and T5 bucket/bias, x-transformers'
rotary, ALiBi and relative bias, Gemma 2's eager soft-capped attention), gradients against finite
differences, and every modifier composed with the dot-family scores, three normalizers and masks
against a hand-written reference; every backend that accepts a call agrees with the reference."""

import math
import types

import pytest
import torch
from tolerances import TOLERANCES

import attnkit
from attnkit import AttentionError, masks, positions
from attnkit.backends import BACKENDS, explain
from attnkit.core.functional import prepare
from attnkit.core.positions import ALiBi, RelativeBias, Rotary, T5RelativeBias, soft_cap

D64 = torch.float64


def randn(*shape, dtype=D64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def hand_rotate(x, positions_, dim, base, interleaved=False):
    """RoPE written out: pair (a, b) at position p turns by p · base^(-2f/R), in float64."""
    r = dim
    f = torch.arange(r // 2, dtype=D64)
    theta = positions_.to(D64)[..., None] * base ** (-2 * f / r)  # (..., T, R/2)
    c, s = theta.cos(), theta.sin()
    if interleaved:
        a, b = x[..., 0:r:2], x[..., 1:r:2]
        turned = torch.stack((a * c - b * s, b * c + a * s), -1).flatten(-2)
    else:
        a, b = x[..., : r // 2], x[..., r // 2 : r]
        turned = torch.cat((a * c - b * s, b * c + a * s), -1)
    return torch.cat((turned, x[..., r:]), -1)


# ---------------------------------------------------------------------------------------- RoPE


def llama_rotary(dh, base):
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=4 * dh,
        num_attention_heads=4,
        head_dim=dh,
        rope_parameters={"rope_type": "default", "rope_theta": base},
        max_position_embeddings=256,
    )
    return llama, llama.LlamaRotaryEmbedding(config)


@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_rotary_equals_hugging_face_llama(dtype):
    llama, hf = llama_rotary(8, 500.0)
    rope = Rotary(8, base=500.0)
    q, k = randn(2, 3, 6, 8, dtype=dtype), randn(2, 3, 6, 8, dtype=dtype, seed=1)
    offsets = torch.tensor([0, 37])
    cos, sin = hf(q, offsets[:, None] + torch.arange(6))  # (B, T, Dh), position ids per row
    want_q, want_k = llama.apply_rotary_pos_emb(q, k, cos, sin)
    got_q, got_k = rope.rotate(q, offsets), rope.rotate(k, offsets)
    # float32: the same float32 angles as Hugging Face; float64: ours are float64, theirs float32
    tol = 1e-6 if dtype == torch.float32 else 1e-5
    torch.testing.assert_close(got_q, want_q, atol=tol, rtol=tol)
    torch.testing.assert_close(got_k, want_k, atol=tol, rtol=tol)
    assert got_q.dtype == dtype


def test_rotary_float64_equals_the_formula_and_float32_stays_close_far_out():
    rope = Rotary(8)
    x = randn(2, 5, 8)
    pos = torch.arange(5) + 1000
    torch.testing.assert_close(rope.rotate(x, 1000), hand_rotate(x, pos, 8, 10000.0), atol=1e-12, rtol=1e-12)
    got32 = rope.rotate(x.float(), 1000).double()
    torch.testing.assert_close(got32, hand_rotate(x, pos, 8, 10000.0), atol=1e-3, rtol=1e-3)


def xt_rotary(dim, base, positions_):
    """x-transformers' rotary frequencies in float64 (its inv_freq recomputed in float64)."""
    xt = pytest.importorskip("x_transformers.x_transformers")
    emb = xt.RotaryEmbedding(dim, base=base)
    emb.inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=D64) / dim))
    freqs, _ = emb(positions_)
    return xt, freqs  # (1, T, R), interleaved


@pytest.mark.parametrize("dim", [8, 4])  # 4 < Dh = 8: partial rotary, the rest passes unrotated
def test_rotary_equals_x_transformers(dim):
    t, offset = 6, 5
    xt, freqs = xt_rotary(dim, 10000.0, torch.arange(t + offset))
    x = randn(2, 3, t, 8)
    want = xt.apply_rotary_pos_emb(x, freqs)  # its last T positions: offset .. offset + T - 1
    got = Rotary(dim, interleaved=True).rotate(x, offset)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got[..., dim:], x[..., dim:], atol=0, rtol=0)
    # the rotate-half layout is the interleaved one with the pairs' features gathered into halves
    perm = torch.cat((torch.arange(0, dim, 2), torch.arange(1, dim, 2), torch.arange(dim, 8)))
    half = Rotary(dim).rotate(x[..., perm], offset)
    torch.testing.assert_close(half, want[..., perm], atol=1e-12, rtol=1e-12)


def test_rotary_scores_depend_on_the_distance_only_and_keep_norms():
    rope = Rotary(6)
    q, k = randn(4, 6), randn(4, 6, seed=1)
    near = rope.rotate(q, 3) @ rope.rotate(k, 1).T
    far = rope.rotate(q, 1003) @ rope.rotate(k, 1001).T
    torch.testing.assert_close(near, far, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(rope.rotate(q, 77).norm(dim=-1), q.norm(dim=-1), atol=1e-12, rtol=1e-12)


def test_rotary_per_row_offsets_equal_one_call_per_row():
    rope = Rotary(4)
    x = randn(3, 2, 5, 4)
    offsets = torch.tensor([[0], [4], [9]])  # (B, 1)
    got = rope.rotate(x, offsets)
    for b in range(3):
        torch.testing.assert_close(got[b], rope.rotate(x[b], int(offsets[b])), atol=0, rtol=0)


def test_rotary_gradcheck():
    rope = Rotary(4)
    x = randn(2, 3, 6).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: rope.rotate(t, 2), (x,))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Rotary(3), "rotary dim must be even"),
        (lambda: Rotary(0), "rotary dim must be an int in 2"),
        (lambda: Rotary(4, base=0.0), "rotary base must be a finite number > 0"),
        (lambda: Rotary(4, base=float("nan")), "rotary base must be a finite number > 0"),
        (lambda: Rotary(4, interleaved="yes"), "rotary interleaved must be a bool"),
        (lambda: Rotary(8).rotate(torch.randn(2, 5, 6)), r"x has shape \(2, 5, 6\) but expected .*Dh >= 8"),
        (lambda: Rotary(4).rotate(torch.ones(2, 5, 4, dtype=torch.long)), "x has dtype torch.int64"),
        (lambda: Rotary(4).rotate(torch.randn(2, 5, 4), -1), "rotary offset must be an int in 0"),
        (lambda: Rotary(4).rotate(torch.randn(2, 5, 4), torch.tensor([1.0, 2.0])), r"rotary offset has shape \(2,\)"),
        (lambda: Rotary(4).rotate(torch.randn(2, 5, 4), torch.tensor([1, 2, 3])), r"with B = 2"),
        (lambda: Rotary(4).rotate(torch.randn(2, 5, 4), torch.tensor([1, -2])), "rotary offset must be >= 0"),
        (lambda: attnkit.attention(*[torch.randn(1, 3, 4)] * 3, rotary=4), "rotary must be an attnkit.positions.Rotary"),
        (lambda: attnkit.attention(torch.randn(1, 3, 2), torch.randn(1, 3, 2), torch.randn(1, 3, 2), rotary=Rotary(4)),
         r"query has shape \(1, 3, 2\) but expected \(\.\.\., T, Dh\) with Dh >= 4"),
    ],
)  # fmt: skip
def test_rotary_bad_input_raises(make, match):
    with pytest.raises(AttentionError, match=match):
        make()


# ---------------------------------------------------------------------------------------- ALiBi


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5, 6, 8, 12, 16])
def test_alibi_slopes_are_x_transformers(heads):
    xt = pytest.importorskip("x_transformers.x_transformers")
    assert positions.alibi_slopes(heads) == xt.AlibiPositionalBias._get_slopes(heads)


@pytest.mark.parametrize("heads, total", [(4, 4), (3, 3), (6, 6), (3, 5)])
def test_alibi_bias_equals_x_transformers(heads, total):
    xt = pytest.importorskip("x_transformers.x_transformers")
    peer = xt.AlibiPositionalBias(heads, total)
    tq, tk = 3, 7
    want = peer(tq, tk)  # (total, Tq, Tk): queries at Tk - Tq .. Tk - 1 (bottom-right), in float32
    slopes = tuple(positions.alibi_slopes(heads)) + (0.0,) * (total - heads)  # x-transformers' unbiased heads
    got = ALiBi(total, offset=tk - tq, slopes=None if heads == total else slopes).bias((2, total, tq, tk))
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_causal_alibi_equals_x_transformers_bias_with_a_causal_mask():
    xt = pytest.importorskip("x_transformers.x_transformers")
    q, k, v = randn(2, 6, 5, 4), randn(2, 6, 5, 4, seed=1), randn(2, 6, 5, 3, seed=2)
    bias = xt.AlibiPositionalBias(6)(5, 5).to(D64)  # (H, T, T)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-2, -1) / 2 + bias).masked_fill(~causal, float("-inf"))
    want = torch.softmax(scores, -1)
    for mask, w_want in ((ALiBi(6) & masks.causal(), want), (ALiBi(6), torch.softmax(q @ k.mT / 2 + bias, -1))):
        _, w = attnkit.attention(q, k, v, mask=mask, need_weights=True)
        torch.testing.assert_close(w, w_want, atol=1e-6, rtol=1e-6)  # x-transformers' slopes are float32


@pytest.mark.parametrize("heads", [1, 4, 5])
def test_directional_alibi_leans_each_head_one_way(heads):
    """Keys left of query i at -m_h (i - j), right of it at -m_(H-1-h) (j - i); the symmetric form
    where the two agree; a KV cache's offset and a selection of heads keep each head's pair."""
    m = torch.tensor(positions.alibi_slopes(heads), dtype=D64)
    tq, tk, offset = 4, 9, 3
    i = torch.arange(tq)[:, None] + offset
    j = torch.arange(tk)[None, :]
    want = torch.where(j <= i, -m[:, None, None] * (i - j), -m.flip(0)[:, None, None] * (j - i))  # (H, Tq, Tk)
    got = ALiBi(heads, offset, directional=True).bias((1, heads, tq, tk), dtype=D64)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    picked = positions.select_heads(ALiBi(heads, offset, directional=True), [heads - 1])
    torch.testing.assert_close(picked.bias((1, 1, tq, tk), dtype=D64), want[-1:], atol=0, rtol=0)
    symmetric = ALiBi(heads, offset).bias((1, heads, tq, tk), dtype=D64)
    assert torch.equal(symmetric == got, (j <= i).expand_as(got) | (m == m.flip(0))[:, None, None].expand_as(got))


def test_directional_alibi_tells_a_sequence_from_its_reverse():
    """Symmetric ALiBi is reversal-equivariant, so order-blind pooling of its outputs cannot tell
    a sequence from its reverse; the directional form can."""
    x = randn(1, 6, 8)
    outs = {}
    for directional in (False, True):
        torch.manual_seed(0)
        mha = attnkit.MultiHeadAttention(8, 2, position="alibi", alibi_directional=directional).double()
        outs[directional] = (mha(x).output.sum(1), mha(x.flip(1)).output.sum(1))
    torch.testing.assert_close(*outs[False], atol=1e-12, rtol=0)
    assert (outs[True][0] - outs[True][1]).abs().max() > 1e-3


def test_alibi_is_finite_in_half_precision_far_away():
    bias = ALiBi(2, offset=10**7).bias((1, 2, 2, 3), dtype=torch.float16)
    assert bias.isfinite().all() and bias.min() == torch.finfo(torch.float16).min


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ALiBi(0), "ALiBi heads must be an int in 1"),
        (lambda: ALiBi(2, slopes=(0.5,)), "ALiBi slopes must be 2 finite numbers"),
        (lambda: ALiBi(2, slopes=(0.5, float("inf"))), "ALiBi slopes must be 2 finite numbers"),
        (lambda: ALiBi(3).bias((2, 4, 5, 5)), (r"ALiBi\(heads=3, offset=0\) holds a bias for H=3 heads but the scores "
                                               r"have shape \(2, 4, 5, 5\)")),
        (lambda: attnkit.attention(*[torch.randn(2, 5, 4)] * 3, mask=ALiBi(3)), r"scores have shape \(2, 5, 5\)"),
    ],
)  # fmt: skip
def test_alibi_bad_input_raises(make, match):
    with pytest.raises(AttentionError, match=match):
        make()


# ------------------------------------------------------------------------------------------ T5


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20), (6, 7)])
def test_t5_bucket_equals_hugging_face_and_x_transformers(bidirectional, num_buckets, max_distance):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    xt = pytest.importorskip("x_transformers.x_transformers")
    rel = torch.arange(-300, 301)[None, :] + torch.tensor([[0], [1]])  # key - query positions
    got = positions.t5_bucket(rel, bidirectional, num_buckets, max_distance)
    hf = t5.T5Attention._relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    peer = xt.RelativePositionBias._relative_position_bucket(rel, not bidirectional, num_buckets, max_distance)
    assert torch.equal(got, hf) and torch.equal(got, peer)
    assert got.min() >= 0 and got.max() == num_buckets - 1
    bias = T5RelativeBias(2, num_buckets, max_distance, bidirectional)
    assert torch.equal(bias.bucket(rel), hf)


def hf_t5_attention(heads, num_buckets, max_distance, decoder):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    from transformers import T5Config

    config = T5Config(
        d_model=4 * heads,
        d_kv=4,
        num_heads=heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=max_distance,
        is_decoder=decoder,
        dropout_rate=0.0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return t5.T5Attention(config, has_relative_attention_bias=True, layer_idx=0).double().eval()


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_bias_equals_hugging_face_and_x_transformers(bidirectional):
    xt = pytest.importorskip("x_transformers.x_transformers")
    hf = hf_t5_attention(3, 8, 20, decoder=not bidirectional)
    ours = T5RelativeBias(3, 8, 20, bidirectional).double()
    with torch.no_grad():
        ours.bias.weight.copy_(hf.relative_attention_bias.weight)
    for tq, tk, offset in ((9, 9, 0), (2, 30, 28), (4, 6, 11)):
        want = hf.compute_bias(tq, tk, past_seen_tokens=offset)[0]  # (H, Tq, Tk)
        torch.testing.assert_close(ours(tq, tk, offset), want, atol=0, rtol=0)
        torch.testing.assert_close(ours.mask(offset).bias((2, 3, tq, tk), dtype=D64), want, atol=0, rtol=0)
    peer = xt.RelativePositionBias(scale=0.5, causal=not bidirectional, num_buckets=8, max_distance=20, heads=3)
    peer = peer.double()
    with torch.no_grad():
        peer.relative_attention_bias.weight.copy_(ours.bias.weight)
    # x-transformers multiplies the bias by its attention scale; its queries are the last Tq positions
    torch.testing.assert_close(0.5 * ours(4, 10, 6), peer(4, 10), atol=1e-15, rtol=1e-15)


def test_t5_table_gradcheck_through_attention():
    q, k, v = randn(1, 2, 4, 3), randn(1, 2, 5, 3, seed=1), randn(1, 2, 5, 2, seed=2)
    table = randn(6, 2, seed=3).requires_grad_()

    def run(t):
        return attnkit.attention(q, k, v, score="dot", mask=RelativeBias(t, 6, 9, False, 1)).output

    assert torch.autograd.gradcheck(run, (table,))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: T5RelativeBias(2, num_buckets=3), "T5 num_buckets must be an int in 4"),
        (lambda: T5RelativeBias(2, num_buckets=8, max_distance=2), "T5 max_distance must be an int in 3"),
        (lambda: T5RelativeBias(2, bidirectional=1), "T5 bidirectional must be a bool"),
        (lambda: RelativeBias(torch.zeros(5, 2), num_buckets=6), r"T5 bias table has shape \(5, 2\)"),
        (lambda: T5RelativeBias(2).mask().bias((1, 3, 4, 4)), r"holds a bias for H=2 heads"),
    ],
)  # fmt: skip
def test_t5_bad_input_raises(make, match):
    with pytest.raises(AttentionError, match=match):
        make()


# ------------------------------------------------------------------------------------ soft cap


SCORES = ("dot", "scaled_dot", "general", "cosine")


def score_params(name, d):
    if name == "general":
        return {"W": randn(d, d, seed=7) / 2}
    if name == "cosine":
        return {"temperature": torch.tensor(0.25, dtype=D64)}
    return {}


def hand_scores(name, q, k, params):
    """The four scores written out."""
    if name == "dot":
        return q @ k.transpose(-2, -1)
    if name == "scaled_dot":
        return q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])
    if name == "general":
        return q @ params["W"] @ k.transpose(-2, -1)
    qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    return qn @ kn.transpose(-2, -1) / params["temperature"]


@pytest.mark.parametrize("name", SCORES)
def test_soft_cap_equals_the_formula(name):
    q, k, v = randn(2, 5, 4) * 3, randn(2, 6, 4, seed=1) * 3, randn(2, 6, 3, seed=2)
    params = score_params(name, 4)
    cap = 2.0
    w_want = torch.softmax(cap * torch.tanh(hand_scores(name, q, k, params) / cap), -1)
    for score in (soft_cap(name, cap), name):
        extra = {} if score is not name else {"softcap": cap}
        out, w = attnkit.attention(q, k, v, score=score, score_params=params, need_weights=True, **extra)
        torch.testing.assert_close(w, w_want, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(out, w_want @ v, atol=1e-12, rtol=1e-12)
    assert soft_cap(name, cap).name == f"{name}+softcap"
    assert soft_cap(name, cap).formula == "score(q, k) = cap · tanh(base(q, k) / cap)"


def test_soft_cap_with_scale_equals_gemma2_eager_attention():
    gemma2 = pytest.importorskip("transformers.models.gemma2.modeling_gemma2")
    q, k, v = randn(2, 4, 5, 8) * 4, randn(2, 2, 5, 8, seed=1) * 4, randn(2, 2, 5, 8, seed=2)
    blocked = torch.ones(5, 5, dtype=torch.bool).triu(1)
    additive = torch.zeros(5, 5, dtype=D64).masked_fill(blocked, torch.finfo(D64).min)
    module = types.SimpleNamespace(num_key_value_groups=2, training=False, head_dim=8)
    want, w_want = gemma2.eager_attention_forward(module, q, k, v, additive, scaling=0.3, softcap=5.0)
    got, w = attnkit.attention(
        q, k, v, score="dot", scale=0.3, softcap=5.0, mask=masks.causal(), enable_gqa=True, need_weights=True
    )
    # Gemma 2 normalizes in float32 (softmax(..., dtype=torch.float32))
    torch.testing.assert_close(w, w_want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got, want.transpose(1, 2), atol=1e-6, rtol=1e-6)


def test_soft_cap_is_applied_before_a_float_mask():
    q, k, v = randn(1, 3, 4) * 5, randn(1, 4, 4, seed=1) * 5, randn(1, 4, 2, seed=2)
    bias = randn(3, 4, seed=3) * 20  # beyond the cap: it must keep its size
    _, w = attnkit.attention(q, k, v, score="dot", softcap=1.5, mask=bias, need_weights=True)
    want = torch.softmax(1.5 * torch.tanh(q @ k.mT / 1.5) + bias, -1)
    torch.testing.assert_close(w, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", SCORES)
def test_soft_cap_gradcheck(name):
    q, k, v = (randn(1, 3, 4, seed=s).requires_grad_() for s in range(3))
    params = {n: p.requires_grad_() for n, p in score_params(name, 4).items()}

    def run(q, k, v, *ps):
        named = dict(zip(params, ps))
        return attnkit.attention(q, k, v, score=name, score_params=named, softcap=1.5).output

    assert torch.autograd.gradcheck(run, (q, k, v, *params.values()))


def test_fused_backends_decline_a_capped_score():
    q = randn(1, 2, 4, 8)
    choice = explain(q, q, q, softcap=3.0)
    assert choice.backend == "reference"
    assert "score='scaled_dot+softcap' is not one of" in choice.passed_over["sdpa"]
    assert explain(q, q, q).backend == "sdpa"  # the same call uncapped


@pytest.mark.parametrize(
    "call, match",
    [
        ({"softcap": 0.0}, "softcap must be a finite number > 0"),
        ({"softcap": -2.0}, "softcap must be a finite number > 0"),
        ({"softcap": float("nan")}, r"softcap must be a finite number > 0 .*got nan"),
        ({"softcap": float("inf")}, "softcap must be a finite number > 0"),
        ({"softcap": True}, r"softcap must be a finite number > 0 .*\(bool\)"),
        ({"softcap": "30"}, r"softcap must be a finite number > 0 .*\(str\)"),
        ({"score": soft_cap("dot", 5.0), "scale": 0.5}, "scale= cannot rescale the soft-capped score 'dot\\+softcap'"),
    ],
)  # fmt: skip
def test_soft_cap_bad_input_raises(call, match):
    q = randn(1, 3, 4)
    with pytest.raises(AttentionError, match=match):
        attnkit.attention(q, q, q, **call)


# --------------------------------------------------------------------------------- composition


H, T = 3, 5
MODIFIERS = ("rope", "alibi", "t5", "softcap", "rope+alibi+softcap")


def hand_normalize(name, scores):
    if name == "softmax":
        return torch.softmax(scores, -1)
    entmax = pytest.importorskip("entmax")
    return {"sparsemax": entmax.sparsemax, "entmax15": entmax.entmax15}[name](scores, dim=-1)


@pytest.mark.parametrize("mask_name", ["causal", "padding"])
@pytest.mark.parametrize("normalize", ["softmax", "sparsemax", "entmax15"])
@pytest.mark.parametrize("name", SCORES)
@pytest.mark.parametrize("modifier", MODIFIERS)
def test_each_modifier_composes_with_scores_normalizers_and_masks(modifier, name, normalize, mask_name):
    q, k, v = randn(2, H, T, 4), randn(2, H, T, 4, seed=1), randn(2, H, T, 3, seed=2)
    params = score_params(name, 4)
    table = randn(8, H, seed=4)
    if mask_name == "causal":
        mask, allowed = masks.causal(), torch.ones(T, T, dtype=torch.bool).tril()
    else:
        mask, allowed = masks.padding(torch.tensor([5, 3])), (torch.arange(T) < torch.tensor([[5], [3]]))[:, None, None]
    kwargs, qh, kh, bias, cap = {}, q, k, 0.0, None
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    if "rope" in modifier:
        kwargs["rotary"] = Rotary(4)
        qh, kh = hand_rotate(q, torch.arange(T), 4, 10000.0), hand_rotate(k, torch.arange(T), 4, 10000.0)
    if "alibi" in modifier:
        mask = ALiBi(H) & mask
        bias = bias - torch.tensor(positions.alibi_slopes(H), dtype=D64)[:, None, None] * (i - j).abs()
    if "t5" in modifier:
        mask = mask & RelativeBias(table, 8, 12, True)
        bias = bias + table[positions.t5_bucket(j - i, True, 8, 12)].permute(2, 0, 1)
    if "softcap" in modifier:
        kwargs["softcap"] = cap = 2.5
    scores = hand_scores(name, qh, kh, params)
    scores = scores if cap is None else cap * torch.tanh(scores / cap)
    w_want = hand_normalize(normalize, (scores + bias).masked_fill(~allowed, -1e4))
    args = dict(score=name, score_params=params, normalize=normalize, mask=mask, **kwargs)
    out, w = attnkit.attention(q, k, v, need_weights=True, backend="reference", **args)
    torch.testing.assert_close(w, w_want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out, w_want @ v, atol=1e-10, rtol=1e-10)
    # every backend that accepts the call (without weights) gives the reference's output
    call = prepare(q, k, v, **args)
    accepted = [b for b in BACKENDS if BACKENDS[b].reason(call, forced=True) is None]
    fused = normalize == "softmax" and cap is None  # SDPA takes biases, not a capped score
    assert ("sdpa" in accepted) == fused, accepted
    for backend in accepted:
        atol, rtol = TOLERANCES.get((backend, D64), (1e-12, 1e-10))
        got = attnkit.attention(q, k, v, backend=backend, **args).output
        torch.testing.assert_close(got, out, atol=atol, rtol=rtol, msg=backend)
    torch.testing.assert_close(attnkit.attention(q, k, v, **args).output, out, atol=1e-10, rtol=1e-10)


def test_position_biases_keep_the_nonfinite_rules_and_empty_rows():
    q, k, v = randn(2, H, 4, 4), randn(2, H, 4, 4, seed=1), randn(2, H, 4, 3, seed=2)
    k[0, :, 3] = float("nan")  # a NaN key behind the padding of row 0: no effect
    mask = ALiBi(H) & masks.padding(torch.tensor([3, 0]), 4)  # row 1 has no key at all
    out, w = attnkit.attention(q, k, v, mask=mask, softcap=3.0, need_weights=True)
    assert out.isfinite().all() and w.isfinite().all()
    assert out[1].eq(0).all() and w[1].eq(0).all()
    clean = attnkit.attention(q[:1], k[:1, :, :3], v[:1, :, :3], mask=ALiBi(H), softcap=3.0).output
    torch.testing.assert_close(out[:1], clean, atol=1e-12, rtol=1e-12)


def test_select_heads_takes_the_heads_biases():
    table = randn(8, 4, seed=1)
    mask = ALiBi(4, offset=2) & masks.causal() & RelativeBias(table, 8, 12)
    picked = positions.select_heads(mask, [3, 1])
    full = mask.bias((1, 4, 3, 5), dtype=D64)
    torch.testing.assert_close(picked.bias((1, 2, 3, 5), dtype=D64), full[[3, 1]], atol=0, rtol=0)
    assert positions.select_heads(masks.causal(), [0]) == masks.causal()
    assert positions.POSITIONS == {"rope": Rotary, "alibi": ALiBi, "t5": T5RelativeBias}
