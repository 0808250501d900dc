"""Linear attention (attnkit.core.linear) against an explicit quadratic reference in float64: the
features φ computed from their formulas (not the library's maps), scores φ(q)φ(k)ᵀ masked
(padding, causal), row-normalised, times V. Also: chunk sizes agree, Performer estimates softmax
attention better as m grows, its random features are orthogonal with chi norms and reproducible,
gradients match finite differences, bad input raises.

Shape legend: B batch, H heads, T positions, Dh head dim, Dv value dim, m features.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import FEATURE_MAPS, AttentionError, linear_attention, masks
from attnkit.core.linear import Performer

F64 = torch.float64
B, H, T, DH, DV = 2, 2, 13, 4, 3  # T odd: not a multiple of the chunks 7 or 64
LENGTHS = [13, 9]


def inputs(t=T, dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, t, DH, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(B, H, t, DV, generator=gen, dtype=dtype)
    return q, k, v


def make_map(name):
    return Performer(DH, nb_features=16, seed=1) if name == "performer" else name


def features(fm, x):
    """φ(x) from its formula, in x's dtype, without any stabilisation."""
    if fm == "elu":
        return F.elu(x) + 1
    if fm == "relu":
        return F.relu(x)
    w = fm.projection.to(x.dtype)  # (..., m, Dh)
    d, m = x.shape[-1], w.shape[-2]
    xs = x * d**-0.25
    return torch.exp(xs @ w.transpose(-2, -1) - (xs * xs).sum(-1, keepdim=True) / 2) / math.sqrt(m)


def reference(q, k, v, fm, causal=False, valid=None):
    """(output, weights): scores φ(q_i)·φ(k_j), masked, row-normalised (a row with no mass: 0), times V."""
    scores = features(fm, q) @ features(fm, k).transpose(-2, -1)  # (B, H, Tq, Tk)
    allowed = torch.ones(scores.shape[-2:], dtype=torch.bool)
    if causal:
        allowed = allowed.tril()
    if valid is not None:
        allowed = allowed & valid[:, None, None, :]  # (B, 1, 1, Tk)
    scores = torch.where(allowed, scores, 0.0)
    total = scores.sum(-1, keepdim=True)
    weights = torch.where(total > 0, scores / torch.where(total > 0, total, 1.0), 0.0)
    return weights @ v, weights


def padding():
    return masks.padding(torch.tensor(LENGTHS), T).valid  # (B, T), True = real key


CASES = [(False, None)] + [(True, c) for c in (None, 1, 7, T)]


@pytest.mark.parametrize("causal, chunk", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("name", ["elu", "relu", "performer"])
@pytest.mark.parametrize("padded", [False, True], ids=["all-keys", "key-padding"])
def test_equals_the_quadratic_reference(name, causal, chunk, padded):
    q, k, v = inputs()
    fm, valid = make_map(name), padding() if padded else None
    out, w = linear_attention(q, k, v, feature_map=fm, causal=causal, key_padding=valid, chunk=chunk, need_weights=True)
    want_out, want_w = reference(q, k, v, fm, causal, valid)
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w, want_w, rtol=1e-10, atol=1e-12)
    alone, none = linear_attention(q, k, v, feature_map=fm, causal=causal, key_padding=valid, chunk=chunk)
    assert none is None
    torch.testing.assert_close(alone, out, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["elu", "performer"])
@pytest.mark.parametrize("causal", [False, True])
def test_weights_rows_sum_to_one_and_are_zero_where_blocked(name, causal):
    q, k, v = inputs()
    valid = padding()
    out, w = linear_attention(q, k, v, feature_map=make_map(name), causal=causal, key_padding=valid, need_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T, dtype=F64), rtol=0, atol=1e-12)
    assert w[1, ..., LENGTHS[1] :].eq(0).all()  # padded keys
    if causal:
        assert w.triu(1).eq(0).all()  # future keys
    assert w.ge(0).all()
    torch.testing.assert_close(out, w @ v, rtol=1e-10, atol=1e-12)


def test_key_padding_takes_a_bool_tensor_or_a_key_padding_mask():
    q, k, v = inputs()
    lengths = torch.tensor(LENGTHS)
    by_tensor = linear_attention(q, k, v, key_padding=padding(), causal=True).output
    by_mask = linear_attention(q, k, v, key_padding=masks.padding(lengths, T), causal=True).output
    torch.testing.assert_close(by_mask, by_tensor, rtol=0, atol=0)


def test_padded_keys_and_values_have_no_influence_whatever_they_hold():
    q, k, v = inputs()
    valid = padding()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    dirty_k, dirty_v = leaves[1].clone(), leaves[2].clone()
    with torch.no_grad():
        dirty_k[1, :, LENGTHS[1] :] = float("nan")
        dirty_v[1, :, LENGTHS[1] :] = float("inf")
    for fm in ("elu", make_map("performer")):
        got = linear_attention(leaves[0], dirty_k, dirty_v, feature_map=fm, key_padding=valid).output
        want = linear_attention(q, k, v, feature_map=fm, key_padding=valid).output
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        got.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_a_query_with_no_key_gets_zero_not_nan():
    q, k, v = inputs()
    nothing = torch.zeros(B, T, dtype=torch.bool)
    for causal in (False, True):
        out = linear_attention(q, k, v, key_padding=nothing, causal=causal).output
        assert out.eq(0).all()
    # relu: a query whose positive features meet no key's
    q = torch.tensor([[[1.0, -1.0]]], dtype=F64)  # (1, 1, 2)
    k = torch.tensor([[[-1.0, 1.0], [-2.0, 3.0]]], dtype=F64)  # (1, 2, 2)
    out, w = linear_attention(q, k, torch.randn(1, 2, 3, dtype=F64), feature_map="relu", need_weights=True)
    assert out.eq(0).all() and w.eq(0).all()


def test_chunked_causal_result_is_the_same_for_every_chunk_size():
    """The algorithmic property behind the O(T·m + T·Dv + C²) memory: the running state across
    chunks gives what one (T, T) chunk gives."""
    q, k, v = (x.float() for x in inputs(t=50, seed=3))
    outs = [linear_attention(q, k, v, causal=True, chunk=c).output for c in (1, 16, 50, 64)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-6)


def test_leading_dims_broadcast():
    q, k, v = inputs()
    k1, v1 = k[:, :1], v[:, :1]  # (B, 1, T, D): one key/value head for every query head
    out = linear_attention(q, k1, v1, causal=True, key_padding=padding()).output
    want, _ = reference(q, k1.expand_as(k), v1.expand_as(v), "elu", True, padding())
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)


def test_half_precision_is_computed_in_float32_and_returned_in_its_dtype():
    q, k, v = (x.float() for x in inputs(t=40))
    want = linear_attention(q, k, v, causal=True).output
    got = linear_attention(*(x.bfloat16() for x in (q, k, v)), causal=True).output
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)


# -- Performer ------------------------------------------------------------------------------------


def test_performer_approaches_softmax_attention_as_nb_features_grows():
    """A statistical property, seeded: the error of the random-feature estimate of the softmax
    weights falls as 1/√m, so at m = 4096 it is well under half of m = 64's."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (0.5 * torch.randn(3, 1, 16, 16, generator=gen, dtype=F64)).unbind(0)  # (1, T, Dh)
    softmax = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(16), dim=-1)

    def error(m):
        errs = []
        for seed in range(3):
            w = linear_attention(q, k, v, feature_map=Performer(16, m, seed=seed), need_weights=True).weights
            errs.append(float((w - softmax).abs().mean()))
        return sum(errs) / len(errs)

    small, large = error(64), error(4096)
    assert large < 0.5 * small and large < 0.01, (small, large)


def test_performer_features_are_block_orthogonal_with_chi_norms():
    dim, m = 8, 20  # blocks of 8, 8 and 4 rows
    w = Performer(dim, m, seed=0).projection.to(F64)
    assert w.shape == (m, dim)
    unit = w / w.norm(dim=-1, keepdim=True)
    for start in range(0, m, dim):
        block = unit[start : start + dim]
        torch.testing.assert_close(block @ block.T, torch.eye(len(block), dtype=F64), rtol=0, atol=1e-6)
    # squared norms ~ chi² with dim degrees of freedom: mean dim, variance 2·dim (not all √dim)
    sq = Performer(16, 4096, seed=0).projection.to(F64).norm(dim=-1) ** 2
    assert abs(float(sq.mean()) - 16) < 0.6 and 20 < float(sq.var()) < 45


def test_performer_is_reproducible_and_can_be_redrawn():
    a, b, c = Performer(8, 16, seed=3), Performer(8, 16, seed=3), Performer(8, 16, seed=4)
    assert a.projection.equal(b.projection) and not a.projection.equal(c.projection)
    a.redraw()  # the next seed
    assert a.seed == 4 and a.projection.equal(c.projection)
    a.redraw(seed=3)
    assert a.projection.equal(b.projection)
    assert FEATURE_MAPS["performer"] is Performer


def test_performer_from_a_fixed_projection_per_head():
    q, k, v = inputs()
    w = torch.randn(H, 16, DH, generator=torch.Generator().manual_seed(5), dtype=F64)  # (H, m, Dh)
    fm = Performer.from_projection(w)
    assert fm.nb_features == 16 and fm.projection.equal(w)
    out, weights = linear_attention(q, k, v, feature_map=fm, causal=True, need_weights=True)
    want_out, want_w = reference(q, k, v, fm, causal=True)
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weights, want_w, rtol=1e-10, atol=1e-12)
    redrawn = fm.redraw(seed=0).projection
    assert redrawn.shape == (H, 16, DH) and not redrawn.equal(w)


def test_performer_is_stable_where_the_plain_formula_overflows():
    """Inputs of large norm: exp(ωᵀx' - |x'|²/2) under- or overflows float32, the stabilised
    features do not, and float32 agrees with float64."""
    q, k, v = inputs(seed=2)
    q, k = 12 * q, 12 * k
    fm = Performer(DH, 64, seed=0)
    plain = features(fm, k.float())  # (B, H, T, m)
    assert plain.eq(0).all(-1).any() or not torch.isfinite(plain).all()  # a key with no feature left, or inf
    for causal in (False, True):
        want = linear_attention(q, k, v, feature_map=fm, causal=causal).output
        got = linear_attention(q.float(), k.float(), v.float(), feature_map=fm, causal=causal).output
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-3)


def test_performer_by_name_is_seed_zero_with_256_features():
    q, k, v = inputs()
    by_name = linear_attention(q, k, v, feature_map="performer").output
    by_object = linear_attention(q, k, v, feature_map=Performer(DH, 256, seed=0)).output
    torch.testing.assert_close(by_name, by_object, rtol=0, atol=0)


# -- gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["elu", "performer"])
@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck(name, causal):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 5, 3, generator=gen, dtype=F64, requires_grad=True) for _ in range(3))
    fm = Performer(3, 8, seed=0) if name == "performer" else name
    valid = torch.tensor([[True, True, True, True, False]])

    def fn(q, k, v):
        return linear_attention(
            q, k, v, feature_map=fm, causal=causal, key_padding=valid, chunk=2 if causal else None, need_weights=True
        )

    assert torch.autograd.gradcheck(lambda *x: tuple(fn(*x)), (q, k, v))


# -- bad input ------------------------------------------------------------------------------------


def test_bad_inputs_raise_naming_the_argument():
    q, k, v = inputs()
    with pytest.raises(AttentionError, match=r"feature_map='softmax' is unknown; expected one of \['elu', 'performer'"):
        linear_attention(q, k, v, feature_map="softmax")
    with pytest.raises(AttentionError, match=r"causal=True needs as many queries as keys.*Tq=5\) and key .*Tk=13\)"):
        linear_attention(q[..., :5, :], k, v, causal=True)
    for mask in (masks.causal(), masks.sliding_window(2, 0)):
        with pytest.raises(AttentionError, match="linear attention takes key padding and causal only"):
            linear_attention(q, k, v, key_padding=mask)
    with pytest.raises(AttentionError, match=r"query has dtype torch.int64 but expected a real floating dtype"):
        linear_attention(q.long(), k, v)
    with pytest.raises(AttentionError, match=r"key has dtype torch.float32 but expected torch.float64"):
        linear_attention(q, k.float(), v)
    with pytest.raises(AttentionError, match=r"key_padding has shape \(2, 5\) but expected \(B, Tk\) = \(2, 13\)"):
        linear_attention(q, k, v, key_padding=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(AttentionError, match=r"key_padding has dtype torch.float32 but expected torch.bool"):
        linear_attention(q, k, v, key_padding=torch.ones(2, 13))
    with pytest.raises(AttentionError, match=r"key has shape \(2, 2, 13, 3\) but expected \(\.\.\., Tk, Dh=4\)"):
        linear_attention(q, k[..., :3], v)
    with pytest.raises(AttentionError, match=r"value has shape \(2, 2, 12, 3\) but expected \(\.\.\., Tk=13, Dv\)"):
        linear_attention(q, k, v[..., :12, :])
    with pytest.raises(AttentionError, match=r"feature_map Performer\(dim=8\) got an input of shape \(2, 2, 13, 4\)"):
        linear_attention(q, k, v, feature_map=Performer(8, 16))
    with pytest.raises(AttentionError, match="chunk must be an int in 1..2"):
        linear_attention(q, k, v, causal=True, chunk=0)
    with pytest.raises(AttentionError, match="chunk=7 applies to causal=True only"):
        linear_attention(q, k, v, chunk=7)
    with pytest.raises(AttentionError, match=r"eps must be a finite number > 0 .*got 0"):
        linear_attention(q, k, v, eps=0)
    with pytest.raises(AttentionError, match="causal must be a bool"):
        linear_attention(q, k, v, causal="yes")
    with pytest.raises(AttentionError, match=r"nb_features must be an int in 1\.\.2\*\*62, got 0"):
        Performer(4, 0)


def test_exported_from_the_package_and_core():
    assert attnkit.linear_attention is attnkit.core.linear_attention is linear_attention
    assert attnkit.FEATURE_MAPS is attnkit.core.FEATURE_MAPS and set(FEATURE_MAPS) == {"elu", "relu", "performer"}
