"""Score functions against an independent per-pair reference, written with Python loops in float64.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dq / Dk feature dims,
A hidden dim of the additive score.
"""

from __future__ import annotations

import inspect
import re
import math

import pytest
import torch

import attnkit
from attnkit import SCORES, AttentionError
from attnkit.core.scores import A, Score

F64 = torch.float64

# ---------------------------------------------------------------------------------------------
# reference: one (q, k) pair at a time, plain vector maths, nothing shared with the implementation


def _pair_score(name: str, q: torch.Tensor, k: torch.Tensor, p: dict[str, torch.Tensor]) -> float:
    """score(q_i, k_j) for one pair; q (Dq,), k (Dk,), every parameter without leading dims."""
    if name == "dot":
        return float(sum(q[d] * k[d] for d in range(len(q))))
    if name == "scaled_dot":
        return float(sum(q[d] * k[d] for d in range(len(q)))) / math.sqrt(len(k))
    if name == "general":  # qᵀ W k = Σ_a Σ_b q_a W_ab k_b
        return float(sum(q[a] * p["W"][a, b] * k[b] for a in range(len(q)) for b in range(len(k))))
    if name == "scaled_general":
        return _pair_score("general", q, k, p) / math.sqrt(len(k))
    if name == "cosine":
        nq = math.sqrt(sum(float(x) ** 2 for x in q))
        nk = math.sqrt(sum(float(x) ** 2 for x in k))
        tau = float(p["temperature"]) if "temperature" in p else 1.0
        return float(sum(q[d] * k[d] for d in range(len(q)))) / (nq * nk * tau)
    if name == "concat":  # wᵀ [q; k]
        qk = list(q) + list(k)
        return float(sum(p["w"][d] * qk[d] for d in range(len(qk))))
    if name == "additive":  # vᵀ tanh(W_qᵀ q + W_kᵀ k), W_q (Dq, A), W_k (Dk, A)
        hidden = p["v"].shape[0]
        total = 0.0
        for a in range(hidden):
            pre = sum(float(q[d] * p["W_q"][d, a]) for d in range(len(q)))
            pre += sum(float(k[d] * p["W_k"][d, a]) for d in range(len(k)))
            total += float(p["v"][a]) * math.tanh(pre)
        return total
    raise AssertionError(name)


def _reference(name, query, key, params, head_dim: int | None):
    """Loop over every leading index and every (i, j); ``head_dim`` is the axis that indexes per-head params."""
    lead = query.shape[:-2]
    out = torch.zeros(*lead, query.shape[-2], key.shape[-2], dtype=F64)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in lead]).reshape(-1, len(lead)).tolist():
        idx = tuple(idx)
        p = {n: (t[idx[head_dim]] if head_dim is not None else t) for n, t in params.items()}
        for i in range(query.shape[-2]):
            for j in range(key.shape[-2]):
                out[idx + (i, j)] = _pair_score(name, query[idx + (i,)], key[idx + (j,)], p)
    return out


def _params(name: str, dq: int, dk: int, hidden: int, lead: tuple[int, ...], gen: torch.Generator):
    def rnd(*shape):
        return torch.randn(*lead, *shape, generator=gen, dtype=F64)

    if name in ("general", "scaled_general"):
        return {"W": rnd(dq, dk)}
    if name == "cosine_temp":
        return {"temperature": torch.rand(lead, generator=gen, dtype=F64) + 0.25}
    if name == "concat":
        return {"w": rnd(dq + dk)}
    if name == "additive":
        return {"W_q": rnd(dq, hidden), "W_k": rnd(dk, hidden), "v": rnd(hidden)}
    return {}


# (test name, registry name); cosine runs with and without its optional temperature
CASES = [
    ("dot", "dot"),
    ("scaled_dot", "scaled_dot"),
    ("general", "general"),
    ("scaled_general", "scaled_general"),
    ("cosine", "cosine"),
    ("cosine_temp", "cosine"),
    ("concat", "concat"),
    ("additive", "additive"),
]


def test_cases_cover_the_registry():
    assert {reg for _, reg in CASES} == set(SCORES)


@pytest.mark.parametrize("case, name", CASES)
def test_score_matches_per_pair_reference_shared_params(case, name):
    gen = torch.Generator().manual_seed(1)
    same = SCORES[name].same_dim
    dq, dk = (4, 4) if same else (3, 5)
    q = torch.randn(2, 3, dq, generator=gen, dtype=F64)  # (B, Tq, Dq)
    k = torch.randn(2, 4, dk, generator=gen, dtype=F64)  # (B, Tk, Dk)
    params = _params(case, dq, dk, hidden=6, lead=(), gen=gen)
    got = SCORES[name](q, k, params)
    want = _reference(name, q, k, params, head_dim=None)
    assert got.dtype == F64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case, name", CASES)
def test_score_matches_per_pair_reference_per_head_params(case, name):
    """Parameters of shape (H, *spec) give head h its own parameters, for query (B, H, Tq, Dq)."""
    gen = torch.Generator().manual_seed(2)
    same = SCORES[name].same_dim
    dq, dk = (3, 3) if same else (2, 4)
    b, h = 2, 3
    q = torch.randn(b, h, 3, dq, generator=gen, dtype=F64)  # (B, H, Tq, Dq)
    k = torch.randn(b, h, 5, dk, generator=gen, dtype=F64)  # (B, H, Tk, Dk)
    params = _params(case, dq, dk, hidden=5, lead=(h,), gen=gen)
    got = SCORES[name](q, k, params)
    want = _reference(name, q, k, params, head_dim=1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case, name", [c for c in CASES if c[0] in ("general", "concat", "additive", "cosine_temp")])
def test_per_head_params_differ_between_heads(case, name):
    """The leading H dim really selects per-head parameters: head 0's params applied to head 1's
    inputs give head 1's scores only if the params are the same (they are not, here)."""
    gen = torch.Generator().manual_seed(3)
    d = 3
    q = torch.randn(1, 2, 2, d, generator=gen, dtype=F64)  # (B, H=2, Tq, D)
    k = torch.randn(1, 2, 3, d, generator=gen, dtype=F64)
    params = _params(case, d, d, hidden=4, lead=(2,), gen=gen)
    both = SCORES[name](q, k, params)  # (1, 2, Tq, Tk)
    head0 = {n: t[0] for n, t in params.items()}
    head1 = {n: t[1] for n, t in params.items()}
    torch.testing.assert_close(both[:, 1], SCORES[name](q[:, 1], k[:, 1], head1), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(both[:, 1], SCORES[name](q[:, 1], k[:, 1], head0))


def test_cosine_zero_vector_scores_zero():
    q = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=F64)  # (Tq=2, D=2), first row is zero
    k = torch.tensor([[3.0, -1.0], [0.0, 0.0]], dtype=F64)  # second key is zero
    s = SCORES["cosine"](q, k)
    assert s[0].tolist() == [0.0, 0.0]
    assert s[1, 1].item() == 0.0
    torch.testing.assert_close(s[1, 0], torch.tensor((3.0 - 2.0) / (math.sqrt(5) * math.sqrt(10)), dtype=F64))


def test_concat_softmax_weights_do_not_depend_on_the_query():
    """wᵀ[q; k] = w_qᵀq + w_kᵀk and softmax over keys cancels w_qᵀq (the documented property)."""
    gen = torch.Generator().manual_seed(4)
    dq, dk = 3, 5
    k = torch.randn(2, 6, dk, generator=gen, dtype=F64)  # (B, Tk, Dk)
    v = torch.randn(2, 6, 2, generator=gen, dtype=F64)
    w = {"w": torch.randn(dq + dk, generator=gen, dtype=F64)}
    q1 = torch.randn(2, 4, dq, generator=gen, dtype=F64)
    q2 = 10 * torch.randn(2, 4, dq, generator=gen, dtype=F64)
    _, w1 = attnkit.attention(q1, k, v, score="concat", score_params=w, need_weights=True)
    _, w2 = attnkit.attention(q2, k, v, score="concat", score_params=w, need_weights=True)
    torch.testing.assert_close(w1, w2, rtol=0, atol=1e-12)
    # every query row gets the same weights: softmax of w_kᵀk_j
    want = torch.softmax(k @ w["w"][dq:], dim=-1)  # (B, Tk)
    torch.testing.assert_close(w1, want[:, None, :].expand_as(w1), rtol=0, atol=1e-12)
    # the raw scores do depend on the query (the cancellation is the softmax's doing)
    assert not torch.allclose(SCORES["concat"](q1, k, w), SCORES["concat"](q2, k, w))


def _expected_trailing(name: str, dq: int, dk: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        "dot": {},
        "scaled_dot": {},
        "general": {"W": (dq, dk)},
        "scaled_general": {"W": (dq, dk)},
        "cosine": {"temperature": ()},
        "concat": {"w": (dq + dk,)},
        "additive": {"W_q": (dq, hidden), "W_k": (dk, hidden), "v": (hidden,)},
    }[name]


@pytest.mark.parametrize("name", sorted(SCORES))
@pytest.mark.parametrize("heads", [None, 3])
@pytest.mark.parametrize("hidden_dim", [None, 7])
def test_init_params_shapes_are_accepted_by_validate(name, heads, hidden_dim):
    score = SCORES[name]
    dq, dk = (4, 4) if score.same_dim else (2, 5)
    params = score.init_params(dq, dk, hidden_dim=hidden_dim, heads=heads, dtype=F64)
    lead = (heads,) if heads else ()
    want = _expected_trailing(name, dq, dk, hidden_dim or dk)
    assert {n: tuple(t.shape) for n, t in params.items()} == {n: lead + s for n, s in want.items()}
    for n, t in params.items():
        assert t.dtype == F64
        spec = score.params(dq, dk)[n]
        if spec.init == "ones":
            assert torch.equal(t, torch.ones_like(t))
        else:  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = the first trailing dim
            bound = 1 / math.sqrt(want[n][0])
            assert t.abs().max() <= bound and t.std() > 0
    q = torch.randn(2, heads or 1, 3, dq, dtype=F64)  # (B, H, Tq, Dq)
    k = torch.randn(2, heads or 1, 4, dk, dtype=F64)  # (B, H, Tk, Dk)
    score.validate(q, k, params)  # accepted: no error
    s = score(q, k, params)
    assert s.shape == (2, heads or 1, 3, 4) and torch.isfinite(s).all()


@pytest.mark.parametrize("name", ["general", "concat", "additive"])
def test_validate_rejects_wrong_param_shape(name):
    score = SCORES[name]
    dq, dk = 2, 5
    params = score.init_params(dq, dk, hidden_dim=3, dtype=F64)
    first = next(iter(params))
    shape = list(params[first].shape)
    shape[0] += 1  # the first dim is Dq (or Dq + Dk), never the free hidden dim A
    bad = dict(params)
    bad[first] = torch.zeros(shape, dtype=F64)
    q, k = torch.randn(3, dq, dtype=F64), torch.randn(4, dk, dtype=F64)
    with pytest.raises(AttentionError, match=rf"score '{name}': params\['{first}'\] has shape"):
        score(q, k, bad)


def test_validate_rejects_additive_hidden_dims_that_disagree():
    p = SCORES["additive"].init_params(2, 3, hidden_dim=4, dtype=F64)
    p["v"] = torch.zeros(5, dtype=F64)  # A = 4 from W_q, 5 here
    with pytest.raises(AttentionError, match=r"params\['v'\] has shape \(5,?\) but expected \(\.\.\., 4\)"):
        SCORES["additive"](torch.randn(3, 2, dtype=F64), torch.randn(4, 3, dtype=F64), p)


def test_validate_rejects_missing_param_and_dim_mismatch():
    q, k = torch.randn(3, 2, dtype=F64), torch.randn(4, 3, dtype=F64)
    with pytest.raises(AttentionError, match=r"score 'general' needs parameter 'W' but params has keys \[\]"):
        SCORES["general"](q, k, {})
    with pytest.raises(AttentionError, match=r"score 'dot' needs query and key of the same last dim"):
        SCORES["dot"](q, k)
    # cosine's temperature is optional: absent is fine, and equals temperature 1
    qq = torch.randn(3, 3, dtype=F64)
    torch.testing.assert_close(
        SCORES["cosine"](qq, qq), SCORES["cosine"](qq, qq, {"temperature": torch.tensor(1.0, dtype=F64)})
    )


def test_additive_param_spec_uses_free_hidden_dim():
    specs = SCORES["additive"].params(2, 3)
    assert specs["W_q"].shape == (2, A) and specs["W_k"].shape == (3, A) and specs["v"].shape == (A,)


@pytest.mark.parametrize("name", sorted(SCORES))
def test_formula_is_first_docstring_line(name):
    score = SCORES[name]
    first = inspect.getdoc(score.fn).splitlines()[0]
    assert score.formula == first
    assert score.formula.strip() != ""
    assert score.formula.startswith("score(q, k) = ")


def test_formula_of_undocumented_score_is_empty():
    score = Score(name="mine", fn=lambda q, k, p: q @ k.transpose(-2, -1), params=lambda dq, dk: {}, same_dim=True)
    assert score.formula == ""


@pytest.mark.parametrize("name", ["general", "cosine", "concat", "additive"])
def test_validate_rejects_param_leading_dims_that_do_not_broadcast(name):
    params = SCORES[name].init_params(4, 4, heads=3, dtype=F64)  # (H=3, ...)
    q, k = torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 5, 4, dtype=F64)  # (B=2, Tq, D), (B=2, Tk, D)
    first = sorted(params)[0] if name != "additive" else "W_q"
    got = tuple(params[first].shape)
    message = (
        f"score {name!r}: params[{first!r}] has shape {got} whose leading dims (3,) do not broadcast to the "
        f"query's and key's leading dims (2,); per-head parameters (H, ...) need query (B, H, Tq, Dq)"
    )
    with pytest.raises(AttentionError, match=re.escape(message)):
        SCORES[name](q, k, params)
    # the same parameters are fine once the query and key carry a head dim
    assert SCORES[name](q[:, None].expand(2, 3, 3, 4), k[:, None].expand(2, 3, 5, 4), params).shape == (2, 3, 3, 5)
