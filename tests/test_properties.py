"""Property tests: the normalizers' contract holds for every score, shape and mask hypothesis draws.

The contract (``attnkit.core.normalizers``): weights are non-negative, exactly 0 where a key is not
allowed, sum to 1 over every row that has an allowed key, are all 0 on a row with none, and nothing
is NaN or inf, forward or backward. Shape legend: B batch, Tq query positions, Tk key positions,
D feature dim. Masks: True = may attend.
"""

from __future__ import annotations

import math

import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import NORMALIZERS, SCORES

F64, F32 = torch.float64, torch.float32
# |Σ weights - 1| on a row with an allowed key; Tk <= 7, so a few ulps of each dtype
SUM_TOL = {F64: 1e-12, F32: 1e-5}
SCORE_CASES = ["dot", "scaled_dot", "general", "cosine", "cosine_temp", "concat", "additive"]
# derandomized: the same examples every run, so the suite is reproducible and its runtime stable
SETTINGS = dict(deadline=None, database=None, derandomize=True)


@st.composite
def problems(draw, float_mask: bool = False):
    b, tq, tk, d = (draw(st.integers(1, hi)) for hi in (3, 6, 7, 8))
    case = draw(st.sampled_from(SCORE_CASES))
    dtype = draw(st.sampled_from([F64, F32]))
    scale = draw(st.sampled_from([0.01, 1.0, 10.0, 100.0]))  # from near-uniform to saturated scores
    seed = draw(st.integers(0, 2**31 - 1))
    flat = draw(st.lists(st.booleans(), min_size=b * tq * tk, max_size=b * tq * tk))
    allowed = torch.tensor(flat, dtype=torch.bool).reshape(b, tq, tk)
    if draw(st.booleans()):  # make sure fully masked rows (and fully allowed ones) are common
        allowed[draw(st.integers(0, b - 1)), draw(st.integers(0, tq - 1))] = False
    if draw(st.booleans()):
        allowed[draw(st.integers(0, b - 1)), draw(st.integers(0, tq - 1))] = True

    gen = torch.Generator().manual_seed(seed)
    name = "cosine" if case == "cosine_temp" else case
    dq, dk = (d, d) if SCORES[name].same_dim else (d, draw(st.integers(1, 8)))
    q = torch.randn(b, tq, dq, generator=gen, dtype=dtype) * math.sqrt(scale)  # (B, Tq, Dq)
    k = torch.randn(b, tk, dk, generator=gen, dtype=dtype) * math.sqrt(scale)  # (B, Tk, Dk)
    v = torch.randn(b, tk, 3, generator=gen, dtype=dtype)  # (B, Tk, Dv)
    params = SCORES[name].init_params(dq, dk, hidden_dim=draw(st.integers(1, 5)), dtype=dtype)
    if case == "cosine":
        params = {}
    elif case == "cosine_temp":
        params["temperature"] = torch.tensor(1 / scale, dtype=dtype)  # a sharp cosine at large scale
    else:
        params = {n: t * math.sqrt(scale) for n, t in params.items()}
    mask = allowed
    if float_mask:  # additive: -inf = blocked, finite biases elsewhere
        bias = torch.randn(b, tq, tk, generator=gen, dtype=dtype) * draw(st.sampled_from([0.1, 1.0, 20.0]))
        mask = bias.masked_fill(~allowed, -math.inf)
    return dict(name=name, q=q, k=k, v=v, params=params, allowed=allowed, mask=mask)


@st.composite
def normalizers(draw, tk_max: int = 7):
    kind = draw(st.sampled_from(sorted(NORMALIZERS)))
    seed = draw(st.integers(0, 2**31 - 1))
    k = draw(st.integers(1, tk_max))  # capped at the problem's Tk when the normalizer is made
    if kind == "topk":
        return kind, lambda tk: NORMALIZERS[kind](k=min(k, tk))
    if kind == "sample":
        return kind, lambda tk: NORMALIZERS[kind](k=min(k, tk), generator=torch.Generator().manual_seed(seed))
    if kind == "gumbel":
        temperature, hard = draw(st.sampled_from([0.1, 1.0, 5.0])), draw(st.booleans())
        return kind, lambda tk: NORMALIZERS[kind](
            temperature=temperature, hard=hard, generator=torch.Generator().manual_seed(seed)
        )
    return kind, lambda tk: NORMALIZERS[kind]()


def test_strategies_cover_every_score_and_normalizer():
    assert {"cosine" if c == "cosine_temp" else c for c in SCORE_CASES} == set(SCORES)
    assert set(NORMALIZERS) == {"softmax", "sparsemax", "entmax15", "hard", "topk", "sample", "gumbel"}


def _check_contract(p, make_normalizer):
    q, k, v = (p[n].clone().requires_grad_() for n in ("q", "k", "v"))
    params = {n: t.clone().requires_grad_() for n, t in p["params"].items()}
    tk = k.shape[-2]
    norm = make_normalizer(tk)
    res = attnkit.attention(
        q, k, v, score=p["name"], normalize=norm, mask=p["mask"], score_params=params, need_weights=True
    )
    out, w = res
    allowed = p["allowed"]
    has_key = allowed.any(-1)  # (B, Tq)
    event(f"normalizer {type(norm).__name__}, score {p['name']}")
    event(f"fully masked row: {bool((~has_key).any())}")
    tol = SUM_TOL[q.dtype]

    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert (w >= 0).all()
    assert torch.equal(w[~allowed], torch.zeros_like(w[~allowed]))  # exactly 0 where blocked
    assert torch.equal(w[~has_key], torch.zeros_like(w[~has_key]))  # and on fully masked rows
    assert torch.equal(out[~has_key], torch.zeros_like(out[~has_key]))
    assert ((w.sum(-1)[has_key] - 1).abs() <= tol).all(), w.sum(-1)
    if res.log_prob is not None:  # sample
        assert res.log_prob.shape == has_key.shape
        assert torch.isfinite(res.log_prob).all() and (res.log_prob <= 0).all()
        assert torch.equal(res.log_prob[~has_key], torch.zeros_like(res.log_prob[~has_key]))

    loss = out.sum() if res.log_prob is None else out.sum() + res.log_prob.sum()
    loss.backward()
    assert torch.isfinite(v.grad).all()
    if type(norm).differentiable or res.log_prob is not None:
        for t in (q, k, *params.values()):
            assert t.grad is not None and torch.isfinite(t.grad).all()
        if type(norm).differentiable:
            assert torch.equal(q.grad[~has_key], torch.zeros_like(q.grad[~has_key]))
    return w


@settings(max_examples=800, **SETTINGS)
@given(p=problems(), normalizer=normalizers())
def test_contract_with_bool_masks(p, normalizer):
    _check_contract(p, normalizer[1])


@settings(max_examples=500, **SETTINGS)
@given(p=problems(float_mask=True), normalizer=normalizers())
def test_contract_with_additive_float_masks(p, normalizer):
    kind, make = normalizer
    w = _check_contract(p, make)
    # a float mask is "blocked where -inf" plus its finite biases added to the scores: the same
    # weights as the normalizer applied to score + bias with the bool mask (same seed for the random ones)
    bias = p["mask"].masked_fill(~p["allowed"], 0.0)
    scores = SCORES[p["name"]](p["q"], p["k"], p["params"]) + bias
    want = make(p["k"].shape[-2])(scores, p["allowed"]).weights
    torch.testing.assert_close(w.detach(), want)  # a fast path may sum in another order


@settings(max_examples=250, **SETTINGS)
@given(p=problems(), normalizer=normalizers())
def test_no_mask_equals_all_true_mask(p, normalizer):
    """mask=None and an all-True mask give the same weights (same seed for the random normalizers)."""
    kind, make = normalizer
    tk = p["k"].shape[-2]
    common = dict(score=p["name"], score_params=p["params"], need_weights=True)
    _, w_none = attnkit.attention(p["q"], p["k"], p["v"], normalize=make(tk), **common)
    all_true = torch.ones_like(p["allowed"])
    _, w_true = attnkit.attention(p["q"], p["k"], p["v"], normalize=make(tk), mask=all_true, **common)
    tol = SUM_TOL[p["q"].dtype]
    if kind in ("hard", "topk", "sample"):  # discrete selections must agree exactly
        assert torch.equal(w_none != 0, w_true != 0)
    torch.testing.assert_close(w_none, w_true, rtol=0, atol=tol)
