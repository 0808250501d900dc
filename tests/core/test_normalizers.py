"""Normalizers (scores -> weights) and their estimators, checked against references written here.

Shape legend: B batch, Tq query positions, Tk key positions. Masks: True = may attend.
Everything that compares numbers runs in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import NORMALIZERS, SCORES, AttentionError, reinforce_loss

F64 = torch.float64
Softmax, Sparsemax, Entmax15 = NORMALIZERS["softmax"], NORMALIZERS["sparsemax"], NORMALIZERS["entmax15"]
Hard, TopK, Sample, Gumbel = NORMALIZERS["hard"], NORMALIZERS["topk"], NORMALIZERS["sample"], NORMALIZERS["gumbel"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# references, one row (a list of floats) at a time


def _sparsemax_sort(z: list[float]) -> tuple[float, list[float]]:
    """The generic sort algorithm: support size k* = max{k : 1 + k z_(k) > Σ_{j<=k} z_(j)}."""
    zs = sorted(z, reverse=True)
    cum, k_star, cum_star = 0.0, 0, 0.0
    for k, zk in enumerate(zs, start=1):
        cum += zk
        if 1 + k * zk > cum:
            k_star, cum_star = k, cum
    tau = (cum_star - 1) / k_star
    return tau, [max(x - tau, 0.0) for x in z]


def _entmax15_bisect(z: list[float], iters: int = 200) -> tuple[float, list[float]]:
    """Solve Σ [z_i/2 - τ]₊² = 1 for τ by bisection; p_i = [z_i/2 - τ]₊².

    f(τ) = Σ [z_i/2 - τ]₊² - 1 is decreasing; f(max z/2 - 1) >= 0 and f(max z/2) = -1.
    """
    x = [zi / 2 for zi in z]
    lo, hi = max(x) - 1.0, max(x)
    for _ in range(iters):
        mid = (lo + hi) / 2
        if sum(max(xi - mid, 0.0) ** 2 for xi in x) - 1 >= 0:
            lo = mid
        else:
            hi = mid
    tau = (lo + hi) / 2
    return tau, [max(xi - tau, 0.0) ** 2 for xi in x]


def _rows(scores: torch.Tensor, allowed: torch.Tensor):
    """Yield (row index, list of allowed positions, list of their scores) for every row of (..., Tq, Tk)."""
    allowed = allowed.expand_as(scores)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in scores.shape[:-1]]).reshape(
        -1, scores.dim() - 1
    ).tolist():
        idx = tuple(idx)
        keys = [j for j in range(scores.shape[-1]) if allowed[idx + (j,)]]
        yield idx, keys, [float(scores[idx + (j,)]) for j in keys]


# ---------------------------------------------------------------------------------------------
# sparsemax and entmax-1.5: closed forms and references


def test_sparsemax_hand_computed_cases():
    # z = [1, 0.5, -1], sorted already. k=1: 1 + 1*1 = 2 > 1 yes; k=2: 1 + 2*0.5 = 2 > 1.5 yes;
    # k=3: 1 + 3*(-1) = -2 > 0.5 no. So |S| = 2, τ = (1 + 0.5 - 1) / 2 = 0.25, p = [0.75, 0.25, 0].
    p = Sparsemax()(torch.tensor([1.0, 0.5, -1.0], dtype=F64)).weights
    torch.testing.assert_close(p, torch.tensor([0.75, 0.25, 0.0], dtype=F64), rtol=0, atol=1e-15)
    assert p[2].item() == 0.0  # an exact zero, not a tiny number
    # z = [0, 0, 0]: |S| = 3, τ = -1/3, p uniform
    p = Sparsemax()(torch.zeros(3, dtype=F64)).weights
    torch.testing.assert_close(p, torch.full((3,), 1 / 3, dtype=F64), rtol=0, atol=1e-15)
    # z = [2, 0, -1]: k=2: 1 + 2*0 = 1 > 2 no, so |S| = 1, τ = 2 - 1 = 1, p = [1, 0, 0]
    p = Sparsemax()(torch.tensor([2.0, 0.0, -1.0], dtype=F64)).weights
    assert p.tolist() == [1.0, 0.0, 0.0]
    # shift invariance: z + c gives the same p; order does not matter
    p = Sparsemax()(torch.tensor([-1.0, 101.0, 100.5], dtype=F64)).weights
    torch.testing.assert_close(p, torch.tensor([0.0, 0.75, 0.25], dtype=F64), rtol=0, atol=1e-13)


def test_sparsemax_matches_sort_algorithm_and_is_a_projection():
    gen = _gen(0)
    z = torch.randn(6, 4, 7, generator=gen, dtype=F64) * torch.tensor([0.1, 1.0, 3.0, 10.0], dtype=F64)[:, None]
    z = z.reshape(-1, 7)  # rows at several scales: dense to very sparse
    p = Sparsemax()(z).weights
    for row, got in zip(z.tolist(), p):
        tau, want = _sparsemax_sort(row)
        torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=0, atol=1e-12)
        # KKT of argmin ‖p - z‖² on the simplex: p_i = z_i - τ on the support, z_i <= τ off it
        for zi, pi in zip(row, got.tolist()):
            assert (pi > 0 and abs(pi - (zi - tau)) < 1e-12) or (pi == 0 and zi <= tau + 1e-12)


def _assert_rows_match(p, z, allowed, reference, atol):
    """Each row of p equals ``reference`` applied to its allowed scores alone, 0 elsewhere."""
    for idx, keys, vals in _rows(z, allowed):
        want = torch.zeros(z.shape[-1], dtype=F64)
        if keys:
            want[keys] = torch.tensor(reference(vals)[1], dtype=F64)
        torch.testing.assert_close(p[idx], want, rtol=0, atol=atol)


def test_sparsemax_masked_equals_sparsemax_of_allowed_keys():
    gen = _gen(1)
    z = torch.randn(3, 5, 6, generator=gen, dtype=F64) * 2
    allowed = torch.rand(3, 5, 6, generator=gen) < 0.6
    allowed[0, 0] = False  # a fully masked row
    _assert_rows_match(Sparsemax()(z, allowed).weights, z, allowed, _sparsemax_sort, atol=1e-12)


def test_entmax15_matches_bisection_of_defining_equation():
    gen = _gen(2)
    z = torch.randn(5, 4, 8, generator=gen, dtype=F64) * torch.tensor([0.1, 1.0, 3.0, 10.0, 30.0], dtype=F64)[
        :, None, None
    ]
    allowed = torch.rand(5, 4, 8, generator=gen) < 0.7
    allowed[1, 2] = False  # a fully masked row
    _assert_rows_match(Entmax15()(z, allowed).weights, z, allowed, _entmax15_bisect, atol=1e-10)
    # without a mask too
    for row, got in zip(z.reshape(-1, 8).tolist(), Entmax15()(z).weights.reshape(-1, 8)):
        torch.testing.assert_close(got, torch.tensor(_entmax15_bisect(row)[1], dtype=F64), rtol=0, atol=1e-10)


def test_entmax15_hand_computed_cases():
    # z = [0, 0]: p = [1/2, 1/2] since τ = -1/√2 gives 2 (1/√2)² = 1
    torch.testing.assert_close(Entmax15()(torch.zeros(2, dtype=F64)).weights, torch.full((2,), 0.5, dtype=F64))
    # z = [4, 0]: x = [2, 0]; with τ = 1 the first gives (2-1)² = 1 and the second [0 - 1]₊ = 0
    assert Entmax15()(torch.tensor([4.0, 0.0], dtype=F64)).weights.tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------
# gradcheck for every differentiable (score x normalizer) pair, through attnkit.attention

SCORE_CASES = ["dot", "scaled_dot", "general", "scaled_general", "cosine", "cosine_temp", "concat", "additive"]

NORMALIZER_CASES = {
    "softmax": lambda: Softmax(),
    "sparsemax": lambda: Sparsemax(),
    "entmax15": lambda: Entmax15(),
    "topk": lambda: TopK(k=2),
    # a fresh generator per call: the same noise at every evaluation gradcheck makes
    "gumbel": lambda: Gumbel(temperature=0.7, hard=False, generator=_gen(0)),
}
K_TOPK = 2
MARGIN = 1e-3  # smallest distance of any score from a support / selection boundary (gradcheck eps is 1e-6)


def test_gradcheck_cases_cover_registries():
    assert {"cosine" if s == "cosine_temp" else s for s in SCORE_CASES} == set(SCORES)
    differentiable = {n for n, cls in NORMALIZERS.items() if cls.differentiable}
    assert differentiable == set(NORMALIZER_CASES)


def _make_inputs(case: str, seed: int):
    gen = _gen(seed)
    name = "cosine" if case == "cosine_temp" else case
    dq, dk = (3, 3) if SCORES[name].same_dim else (2, 3)
    q = torch.randn(2, 3, dq, generator=gen, dtype=F64)  # (B, Tq, Dq)
    k = torch.randn(2, 5, dk, generator=gen, dtype=F64)  # (B, Tk, Dk)
    v = torch.randn(2, 5, 2, generator=gen, dtype=F64)  # (B, Tk, Dv)
    params = SCORES[name].init_params(dq, dk, hidden_dim=4, dtype=F64)
    params = {n: torch.randn(t.shape, generator=gen, dtype=F64) for n, t in params.items()}
    if case == "cosine":
        params = {}
    elif case == "cosine_temp":
        params["temperature"] = torch.tensor(0.4, dtype=F64)
    return name, q, k, v, params


def _mask() -> torch.Tensor:
    allowed = torch.ones(2, 3, 5, dtype=torch.bool)  # (B, Tq, Tk)
    allowed[0, :, 1] = False  # a blocked key for every query of example 0
    allowed[1, 0, 3:] = False
    allowed[0, 1] = False  # a fully masked row
    allowed[1, 2] = torch.tensor([False, False, True, False, False])  # one allowed key (< k for topk)
    return allowed


def _far_from_boundaries(norm: str, scores: torch.Tensor, allowed: torch.Tensor) -> bool:
    for _, keys, vals in _rows(scores, allowed):
        if not keys:
            continue
        if norm == "sparsemax":
            tau, _ = _sparsemax_sort(vals)
            if min(abs(x - tau) for x in vals) < MARGIN:
                return False
        elif norm == "entmax15":
            tau, _ = _entmax15_bisect(vals)
            if min(abs(x / 2 - tau) for x in vals) < MARGIN:
                return False
        elif norm == "topk" and len(vals) > K_TOPK:
            s = sorted(vals, reverse=True)
            if s[K_TOPK - 1] - s[K_TOPK] < MARGIN:
                return False
    return True


GRADCHECK_SEED = 0  # verified below for every case: MARGIN away from every boundary, sparse where it can be


def _inputs_for_gradcheck(case: str, norm: str, allowed: torch.Tensor):
    name, q, k, v, params = _make_inputs(case, GRADCHECK_SEED)
    scores = SCORES[name](q, k, params)
    assert _far_from_boundaries(norm, scores, allowed), f"seed {GRADCHECK_SEED} is near a boundary for {case} x {norm}"
    if norm in ("sparsemax", "entmax15"):  # the sparse branch of the Jacobian is exercised
        w = NORMALIZER_CASES[norm]()(scores, allowed).weights
        assert ((w == 0) & allowed).any()
    return name, q, k, v, params


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("norm", list(NORMALIZER_CASES))
@pytest.mark.parametrize("case", SCORE_CASES)
def test_gradcheck_attention(case, norm, masked):
    allowed = _mask() if masked else torch.ones(2, 3, 5, dtype=torch.bool)
    name, q, k, v, params = _inputs_for_gradcheck(case, norm, allowed)
    names = list(params)

    def f(q, k, v, *pvals):
        out, w = attnkit.attention(
            q,
            k,
            v,
            score=name,
            normalize=NORMALIZER_CASES[norm](),
            mask=allowed if masked else None,
            score_params=dict(zip(names, pvals)),
            need_weights=True,
        )
        return out, w

    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v, *params.values()))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("norm", list(NORMALIZER_CASES))
@pytest.mark.parametrize("case", SCORE_CASES)
def test_fully_masked_row_has_zero_output_and_exactly_zero_gradient(case, norm):
    name, q, k, v, params = _make_inputs(case, 0)
    allowed = _mask()
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    params = {n: t.clone().requires_grad_() for n, t in params.items()}
    out, w = attnkit.attention(
        q, k, v, score=name, normalize=NORMALIZER_CASES[norm](), mask=allowed, score_params=params, need_weights=True
    )
    assert torch.equal(out[0, 1], torch.zeros_like(out[0, 1]))
    assert torch.equal(w[0, 1], torch.zeros_like(w[0, 1]))
    assert torch.equal(w[~allowed], torch.zeros_like(w[~allowed]))
    (out * torch.randn(out.shape, generator=_gen(9), dtype=F64)).sum().backward()
    assert torch.equal(q.grad[0, 1], torch.zeros_like(q.grad[0, 1]))  # the fully masked query row
    for t in (q, k, v, *params.values()):
        assert torch.isfinite(t.grad).all()
    assert q.grad.abs().sum() > 0  # the other rows do get a gradient


# ---------------------------------------------------------------------------------------------
# hard, topk, sample


def _scores_and_mask(seed: int, shape=(3, 4, 6)):
    gen = _gen(seed)
    s = torch.randn(shape, generator=gen, dtype=F64)
    allowed = torch.rand(shape, generator=gen) < 0.6
    allowed[0, 0] = False  # fully masked row
    allowed[1, 1] = False
    allowed[1, 1, 2] = True  # one allowed key
    s = s.masked_fill(~allowed, 5.0)  # blocked keys score highest: a mask that is ignored shows up
    return s, allowed


def test_hard_is_one_hot_on_argmax_of_allowed_keys():
    s, allowed = _scores_and_mask(0)
    w = Hard()(s.requires_grad_(), allowed).weights
    assert not w.requires_grad  # documented: no gradient to the scores
    for idx, keys, vals in _rows(s.detach(), allowed):
        want = torch.zeros(s.shape[-1], dtype=F64)
        if keys:
            want[keys[max(range(len(vals)), key=vals.__getitem__)]] = 1.0
        assert torch.equal(w[idx], want)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_topk_selects_k_largest_allowed_and_softmaxes_them(k):
    s, allowed = _scores_and_mask(1)
    w = TopK(k=k)(s, allowed).weights
    for idx, keys, vals in _rows(s, allowed):
        row = w[idx]
        n_sel = min(k, len(keys))
        assert int((row != 0).sum()) == n_sel
        if not keys:
            assert torch.equal(row, torch.zeros_like(row))
            continue
        torch.testing.assert_close(row.sum(), torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-14)
        order = sorted(range(len(keys)), key=lambda a: -vals[a])
        chosen = [keys[a] for a in order[:n_sel]]
        assert set(torch.nonzero(row).flatten().tolist()) == set(chosen)
        sel = torch.tensor([vals[a] for a in order[:n_sel]], dtype=F64)
        torch.testing.assert_close(row[chosen], torch.exp(sel) / torch.exp(sel).sum(), rtol=1e-13, atol=0)


def test_topk_gradient_flows_only_through_selected_keys():
    s, allowed = _scores_and_mask(2)
    s.requires_grad_()
    w = TopK(k=2)(s, allowed).weights
    c = torch.randn(w.shape, generator=_gen(3), dtype=F64)
    (w * c).sum().backward()
    selected = w.detach() != 0
    assert torch.equal(s.grad[~selected], torch.zeros_like(s.grad[~selected]))
    # on the selected keys: the softmax Jacobian, w ⊙ (c - Σ w c)
    want = w.detach() * (c - (w.detach() * c).sum(-1, keepdim=True))
    torch.testing.assert_close(s.grad, want, rtol=1e-12, atol=1e-15)


def test_topk_and_sample_reject_bad_k():
    with pytest.raises(AttentionError, match=r"topk: k must be an int >= 1, got 0"):
        TopK(k=0)
    with pytest.raises(AttentionError, match=r"topk: k must be an int >= 1, got True"):
        TopK(k=True)
    with pytest.raises(AttentionError, match=r"sample: k must be an int >= 1, got 1.5"):
        Sample(k=1.5)
    with pytest.raises(AttentionError, match=r"topk: k=5 is larger than the number of keys Tk=4"):
        TopK(k=5)(torch.zeros(2, 4))
    with pytest.raises(AttentionError, match=r"gumbel: temperature must be > 0, got 0"):
        Gumbel(temperature=0)


def _log_softmax_allowed(vals: list[float]) -> list[float]:
    m = max(vals)
    lse = m + math.log(sum(math.exp(x - m) for x in vals))
    return [x - lse for x in vals]


def test_sample_k1_weights_are_draws_and_log_prob_is_their_log_probability():
    s, allowed = _scores_and_mask(4, shape=(4, 5, 6))
    res = Sample(k=1, generator=_gen(0))(s, allowed)
    w, log_prob = res.weights, res.log_prob
    assert log_prob.shape == s.shape[:-1]
    for idx, keys, vals in _rows(s, allowed):
        if not keys:
            assert torch.equal(w[idx], torch.zeros_like(w[idx]))
            assert log_prob[idx].item() == 0.0
            continue
        assert sorted(w[idx].unique().tolist()) == ([0.0, 1.0] if len(w[idx]) > 1 else [1.0])
        drawn = int(w[idx].argmax())
        assert drawn in keys and w[idx].sum().item() == 1.0
        want = _log_softmax_allowed(vals)[keys.index(drawn)]
        assert abs(log_prob[idx].item() - want) < 1e-12


def test_sample_k3_weights_are_counts_over_k_and_log_prob_sums_draws():
    k = 3
    s, allowed = _scores_and_mask(5, shape=(4, 5, 6))
    res = Sample(k=k, generator=_gen(1))(s, allowed)
    counts = res.weights * k
    torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-12)  # integers
    assert torch.equal(res.weights[~allowed.expand_as(s)], torch.zeros_like(res.weights[~allowed.expand_as(s)]))
    for idx, keys, vals in _rows(s, allowed):
        if not keys:
            assert res.log_prob[idx].item() == 0.0 and counts[idx].sum().item() == 0.0
            continue
        assert counts[idx].sum().round().item() == k
        logp = _log_softmax_allowed(vals)
        want = sum(round(float(counts[idx + (j,)])) * lp for j, lp in zip(keys, logp))
        assert abs(res.log_prob[idx].item() - want) < 1e-12


def test_sample_is_unbiased_for_softmax():
    s = torch.tensor([0.3, -1.0, 1.5, 0.0, 0.7], dtype=F64)
    allowed = torch.tensor([True, True, True, False, True])
    n = 40_000
    w = Sample(k=1, generator=_gen(2))(s.expand(n, 5), allowed).weights
    p = torch.softmax(s.masked_fill(~allowed, -math.inf), -1)
    # each frequency is a mean of n Bernoulli(p_j): std sqrt(p(1-p)/n) <= 0.0025; 5 std is a
    # deterministic (seeded) bound that a correct sampler misses with probability < 1e-6
    tol = 5 * torch.sqrt(p * (1 - p) / n) + 1e-12
    assert ((w.mean(0) - p).abs() <= tol).all(), (w.mean(0), p)
    assert w[:, 3].sum().item() == 0.0


# ---------------------------------------------------------------------------------------------
# Gumbel-softmax


def _gumbel_noise(shape, seed: int) -> torch.Tensor:
    """The documented draw: u ~ U(0, 1) from the seeded generator, g = -log(-log u)."""
    u = torch.rand(shape, generator=_gen(seed), dtype=F64)
    return -torch.log(-torch.log(u.clamp(torch.finfo(F64).tiny, 1.0 - 1e-7)))


def _masked_softmax(z: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    has_key = allowed.any(-1, keepdim=True)
    z = torch.where(allowed, z, torch.full_like(z, -math.inf))
    z = torch.where(has_key, z, torch.zeros_like(z))  # fully masked rows: harmless finite values
    return torch.where(has_key, torch.softmax(z, -1), torch.zeros_like(z))


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_gumbel_soft_equals_softmax_of_perturbed_scores(temperature):
    s, allowed = _scores_and_mask(6)
    s = s.masked_fill(~allowed, 0.0)
    w = Gumbel(temperature=temperature, hard=False, generator=_gen(3))(s, allowed).weights
    want = _masked_softmax((s + _gumbel_noise(s.shape, 3)) / temperature, allowed)
    torch.testing.assert_close(w, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_straight_through_gumbel_forward_one_hot_backward_soft(temperature):
    s, allowed = _scores_and_mask(7)
    s = s.masked_fill(~allowed, 0.0)
    s1 = s.clone().requires_grad_()
    w = Gumbel(temperature=temperature, hard=True, generator=_gen(4))(s1, allowed).weights
    z = (s + _gumbel_noise(s.shape, 4)) / temperature
    # forward: exactly one-hot on the argmax of the perturbed allowed scores
    one_hot = torch.zeros_like(s)
    for idx, keys, vals in _rows(z, allowed):
        if keys:
            one_hot[idx + (keys[max(range(len(vals)), key=vals.__getitem__)],)] = 1.0
    assert torch.equal(w.detach(), one_hot)
    # backward: the gradient of the soft relaxation with the same noise
    c = torch.randn(s.shape, generator=_gen(5), dtype=F64)
    (w * c).sum().backward()
    s2 = s.clone().requires_grad_()
    (_masked_softmax((s2 + _gumbel_noise(s.shape, 4)) / temperature, allowed) * c).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-12, atol=1e-14)
    assert s1.grad.abs().sum() > 0


@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_gumbel_max_argmax_frequencies_approach_softmax(hard, temperature):
    """argmax(s + g) ~ Categorical(softmax(s)), whatever the temperature (it does not move the argmax)."""
    s = torch.tensor([1.0, 0.0, -0.5, 2.0, 0.3], dtype=F64)
    allowed = torch.tensor([True, True, True, True, False])  # the blocked key is never drawn
    n = 40_000
    w = Gumbel(temperature=temperature, hard=hard, generator=_gen(6))(s.expand(n, 5), allowed).weights
    freq = torch.zeros(5, dtype=F64).index_add_(0, w.argmax(-1), torch.ones(n, dtype=F64)) / n
    p = torch.softmax(s.masked_fill(~allowed, -math.inf), -1)
    # binomial std sqrt(p(1-p)/n) <= 0.0025 for n = 40 000; 5 std, seeded so deterministic
    tol = 5 * torch.sqrt(p * (1 - p) / n) + 1e-12
    assert ((freq - p).abs() <= tol).all(), (freq, p)
    assert freq[4].item() == 0.0


# ---------------------------------------------------------------------------------------------
# REINFORCE with Sample(k=1)

REWARD = torch.tensor([1.0, 3.0, 2.0, 5.0], dtype=F64) + 10.0  # the offset makes a baseline matter
LOGITS = torch.tensor([0.5, -0.3, 1.2, 0.0], dtype=F64)


def _per_sample_gradients(baseline, n: int = 20_000, seed: int = 0) -> torch.Tensor:
    """One row per draw: the gradient of that draw's REINFORCE term w.r.t. the scores, (n, Tk)."""
    scores = LOGITS.repeat(n, 1).requires_grad_()  # (n, Tk), a leaf: row i sees draw i only
    res = Sample(k=1, generator=_gen(seed))(scores)
    drawn = res.weights.argmax(-1)  # (n,)
    reward = REWARD[drawn]
    reinforce_loss(res.log_prob, reward, baseline).backward()
    per = scores.grad * n  # the loss is a mean over the n draws
    # each row is -(r_i - b) (e_i - p), the score-function estimate for one draw
    p = torch.softmax(LOGITS, -1)
    b = 0.0 if baseline is None else float(baseline)
    want = -(reward - b)[:, None] * (torch.nn.functional.one_hot(drawn, 4).to(F64) - p)
    torch.testing.assert_close(per, want, rtol=1e-10, atol=1e-10)
    return per


def _exact_gradient() -> torch.Tensor:
    p = torch.softmax(LOGITS, -1)
    return -p * (REWARD - (p * REWARD).sum())  # ∇_s (-Σ p_j r_j)


@pytest.mark.parametrize("baseline", [None, 7.0, "mean"])
def test_reinforce_estimate_is_unbiased(baseline):
    p = torch.softmax(LOGITS, -1)
    b = float((p * REWARD).sum()) if baseline == "mean" else baseline
    per = _per_sample_gradients(b)
    n = per.shape[0]
    # the mean of n i.i.d. per-draw gradients: 5 standard errors, seeded so deterministic
    tol = 5 * per.std(0) / math.sqrt(n) + 1e-12
    assert ((per.mean(0) - _exact_gradient()).abs() <= tol).all(), (per.mean(0), _exact_gradient(), tol)


def test_reinforce_baseline_lowers_variance():
    p = torch.softmax(LOGITS, -1)
    plain = _per_sample_gradients(None)
    based = _per_sample_gradients(float((p * REWARD).sum()))  # same seed: the very same draws
    # rewards ~ 11..15: without baseline the advantage is ~13, with it |r - b| <= 3
    assert based.var(0).sum() < 0.1 * plain.var(0).sum()


def test_reinforce_learned_baseline_gets_squared_error_gradient():
    n = 1000
    scores = LOGITS.repeat(n, 1).requires_grad_()
    res = Sample(k=1, generator=_gen(1))(scores)
    reward = REWARD[res.weights.argmax(-1)]
    b = torch.tensor(4.0, dtype=F64, requires_grad=True)
    loss = reinforce_loss(res.log_prob, reward, b)
    loss.backward()
    torch.testing.assert_close(b.grad, (2 * (b.detach() - reward)).mean(), rtol=1e-12, atol=0)
    # the added term does not touch the scores: same gradient as with the constant 4.0
    scores2 = LOGITS.repeat(n, 1).requires_grad_()
    res2 = Sample(k=1, generator=_gen(1))(scores2)
    assert torch.equal(res2.weights, res.weights)
    reinforce_loss(res2.log_prob, reward, 4.0).backward()
    torch.testing.assert_close(scores.grad, scores2.grad, rtol=0, atol=0)
    # value: -mean((r - b) log p) + mean((r - b)²)
    want = -((reward - 4.0) * res.log_prob.detach()).mean() + ((reward - 4.0) ** 2).mean()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-12, atol=0)


def test_reinforce_learned_per_row_baseline():
    n = 50
    log_prob = torch.randn(n, generator=_gen(2), dtype=F64, requires_grad=True)
    reward = torch.rand(n, generator=_gen(3), dtype=F64)
    b = torch.zeros(n, dtype=F64, requires_grad=True)
    reinforce_loss(log_prob, reward, b).backward()
    torch.testing.assert_close(b.grad, 2 * (b.detach() - reward) / n, rtol=1e-12, atol=0)
    torch.testing.assert_close(log_prob.grad, -(reward - 0.0) / n, rtol=1e-12, atol=0)


def test_attention_returns_sample_log_prob():
    gen = _gen(8)
    q, k, v = (torch.randn(2, t, 4, generator=gen, dtype=F64) for t in (3, 5, 5))
    norm = Sample(k=1, generator=_gen(0))
    res = attnkit.attention(q, k, v, normalize=norm, need_weights=True)
    direct = Sample(k=1, generator=_gen(0))(SCORES["scaled_dot"](q, k))
    assert torch.equal(res.weights, direct.weights)
    torch.testing.assert_close(res.log_prob, direct.log_prob, rtol=0, atol=0)
    torch.testing.assert_close(res.output, direct.weights @ v, rtol=0, atol=0)
