"""Property tests: the normalizers' contract holds for every score, shape and mask hypothesis draws.

The contract (``attnkit.core.normalizers``): weights are non-negative, exactly 0 where a key is not
allowed, sum to 1 over every row that has an allowed key, are all 0 on a row with none, and nothing
is NaN or inf, forward or backward. And every fast path that can take a drawn call, forced,
against the reference (outputs, weights, gradients, within tests/tolerances.py). Shape legend:
B batch, Tq query positions, Tk key positions, D feature dim. Masks: True = may attend.
"""

from __future__ import annotations

import copy
import math

import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from tolerances import LOW_PRECISION_FACTOR, TOLERANCES

import attnkit
from attnkit import NORMALIZERS, SCORES

F64, F32 = torch.float64, torch.float32
# |Σ weights - 1| on a row with an allowed key; Tk <= 7, so a few ulps of each dtype
SUM_TOL = {F64: 1e-12, F32: 1e-5}
SCORE_CASES = ["dot", "scaled_dot", "general", "scaled_general", "cosine", "cosine_temp", "concat", "additive"]
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


# ---------------------------------------------------------------------------------------------
# every backend against the reference: random shapes (empty dims too), masks (fully masked rows,
# non-finite keys and values where nobody may attend), dtypes, scores, normalizers, exact ties

BF16 = torch.bfloat16
# not drawn here: flex on CPU has no backward and compiles per shape (~20 s; test_flex.py and
# test_masked_nan.py force it on fixed shapes); additive_triton runs in Triton's interpreter only
# when TRITON_INTERPRET=1 was set before import (test_triton_additive.py)
NOT_DRAWN = {"reference", "flex", "additive_triton"}
FAST_PATHS = [name for name in attnkit.backends.BACKENDS if name not in NOT_DRAWN]
DISCRETE = ("hard", "topk")
# discrete selections are compared on integer-valued inputs and dyadic parameters, whose scores are
# exact in every dtype and summation order: a tie is a tie on every backend, and a near-tie that
# rounding could flip does not exist
EXACT_SCORES = ["dot", "scaled_dot", "general", "concat"]
MASK_KINDS = ["none", "bool", "padding", "causal", "window", "window+padding", "float"]


@st.composite
def backend_problems(draw):
    dtype = draw(st.sampled_from([F64, F32, BF16]))
    lead = draw(st.sampled_from([(1,), (2,), (2, 2)]))
    tq, tk, d = draw(st.integers(0, 6)), draw(st.integers(0, 7)), draw(st.integers(1, 5))
    # aim at one fast path (or none) so that each is drawn often, then draw the rest freely
    target = draw(st.sampled_from([*FAST_PATHS, "any"]))
    normalizers = {"topk_gather": DISCRETE, "sdpa": ["softmax"], "additive_fused": ["softmax"]}
    normalize = draw(st.sampled_from(normalizers.get(target, ["softmax", "sparsemax", "entmax15", *DISCRETE])))
    discrete = normalize in DISCRETE
    scores = {"sdpa": ["dot", "scaled_dot", "general", "cosine"], "additive_fused": ["additive"]}.get(target)
    score = draw(st.sampled_from(EXACT_SCORES if discrete else scores or sorted(SCORES)))
    ties = discrete or draw(st.booleans())  # integer-valued q and k: many exactly equal scores
    k = draw(st.integers(1, max(tk, 1)))
    mask_kind = draw(st.sampled_from(["window", "window+padding"] if target == "banded" else MASK_KINDS))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    if ties:
        q, key = (torch.randint(-1, 2, (*lead, t, d), generator=gen).double() for t in (tq, tk))
    else:
        q, key = (torch.randn(*lead, t, d, generator=gen, dtype=F64) for t in (tq, tk))
    value = torch.randn(*lead, tk, 3, generator=gen, dtype=F64)  # (..., Tk, Dv)
    params = SCORES[score].init_params(d, d, hidden_dim=2, dtype=F64)
    if ties:  # multiples of 1/2: sums of products stay exact in bfloat16 at these sizes
        params = {n: (p * 4).round() / 2 for n, p in params.items()}

    mask, window = None, None
    b = lead[0]
    lengths = [draw(st.integers(0, tk)) for _ in range(b)]
    if mask_kind == "bool":
        mask = (
            torch.rand(b, 1, tq, tk, generator=gen) < 0.6 if len(lead) == 2 else torch.rand(tq, tk, generator=gen) < 0.6
        )
        if tq and tk:
            mask[..., draw(st.integers(0, tq - 1)), :] = False  # a fully masked row
    elif mask_kind == "padding":
        mask = attnkit.masks.padding(lengths, max_len=tk)
    elif mask_kind == "causal":
        mask = attnkit.masks.causal(draw(st.integers(-2, 2)))
    elif mask_kind in ("window", "window+padding"):
        window = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        mask = attnkit.masks.padding(lengths, max_len=tk) if mask_kind == "window+padding" else None
    elif mask_kind == "float":
        bias = torch.randn(tq, tk, generator=gen, dtype=F64)
        mask = bias.masked_fill(torch.rand(tq, tk, generator=gen) < 0.3, -math.inf)

    nan_masked = draw(st.booleans())
    if nan_masked and (mask is not None or window is not None):
        # NaN / ±inf in every key and value row that no query may attend (padding, empty columns)
        call = attnkit.core.prepare(q, key, value, score=score, mask=mask, window=window, score_params=params)
        allowed = call.region.materialize(call.scores_shape).expand(call.scores_shape)
        nobody = ~allowed.any(-2)  # (..., Tk)
        bad = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        key, value = key.clone(), value.clone()
        key[nobody] = bad
        value[nobody] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    else:
        nan_masked = False
    norm = NORMALIZERS["topk"](k=k) if normalize == "topk" else normalize
    need_weights = target != "sdpa" and draw(st.booleans())
    kwargs = {"score": score, "normalize": norm, "mask": mask, "window": window, "need_weights": need_weights}
    inputs = [t.to(dtype) for t in (q, key, value)]
    params = {n: p.to(dtype) for n, p in params.items()}
    label = f"{normalize}, {score}, {mask_kind}, {str(dtype).removeprefix('torch.')}"
    return {"inputs": inputs, "params": params, "kwargs": kwargs, "label": label, "nan_masked": nan_masked}


def _outputs(backend, inputs, params, kwargs, dtype=None):
    """(output, weights, grads of q, k, v and the params) of a fixed linear loss, optionally cast."""
    cast = (lambda t: t.detach().to(dtype)) if dtype is not None else (lambda t: t.detach())
    inputs = [cast(t).requires_grad_() for t in inputs]
    params = {n: cast(p).requires_grad_() for n, p in params.items()}
    mask = kwargs["mask"]
    if dtype is not None and isinstance(mask, torch.Tensor) and mask.is_floating_point():
        kwargs = {**kwargs, "mask": mask.to(dtype)}
    res = attnkit.attention(*inputs, score_params=params, backend=backend, **kwargs)
    out = res.output
    (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = [t.grad for t in (*inputs, *params.values())]
    return [out.detach(), res.weights, *grads]


def _assert_matches_reference(backend, problem):
    inputs, params, kwargs = problem["inputs"], problem["params"], problem["kwargs"]
    dtype = inputs[0].dtype
    got = _outputs(backend, inputs, params, kwargs)
    want = _outputs("reference", inputs, params, kwargs)
    truth = _outputs("reference", inputs, params, kwargs, dtype=F64) if dtype == BF16 else None
    atol, rtol = TOLERANCES[(backend, dtype)]
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None or g is None:  # weights not asked for, or no gradient (hard's scores)
            assert (g is None or not g.any()) and (w is None or not w.any()), i
            continue
        assert torch.isfinite(g).all() and torch.isfinite(w).all(), (backend, i)
        if truth is None:
            torch.testing.assert_close(g, w, atol=atol, rtol=rtol)
        elif g.numel():
            ours, refs = (g.double() - truth[i]).abs().max(), (w.double() - truth[i]).abs().max()
            bound = LOW_PRECISION_FACTOR * refs + atol + rtol * truth[i].abs().max()
            assert ours <= bound, (backend, i, float(ours), float(refs), float(bound))


@settings(max_examples=300, **SETTINGS)
@given(problem=backend_problems())
def test_every_backend_matches_the_reference(problem):
    """Forward, weights and gradients of each fast path that takes the call (forced), within the table."""
    inputs, params, kwargs = problem["inputs"], problem["params"], problem["kwargs"]
    grad = [t.detach().requires_grad_() for t in (*inputs, *params.values())]  # as the runs will be
    call = attnkit.core.prepare(*grad[:3], score_params=dict(zip(params, grad[3:])), **kwargs)
    ran = [name for name in FAST_PATHS if attnkit.backends.BACKENDS[name].reason(call, forced=True) is None]
    event(f"normalizer, score, mask, dtype: {problem['label']}")
    event(f"non-finite keys and values where nobody may attend: {problem['nan_masked']}")
    event(f"empty dim: {0 in call.scores_shape}")
    for name in ran:
        event(f"backend {name}")
    ref = attnkit.attention(*inputs, score_params=params, backend="reference", **kwargs)
    assert torch.isfinite(ref.output).all()  # non-finite keys only where nobody may attend
    for name in ran:
        _assert_matches_reference(name, problem)


@st.composite
def poisoned_problems(draw):
    """One key row with a non-finite entry in its key or value, blocked for some queries only."""
    dtype = draw(st.sampled_from([F64, F32, BF16]))
    tq, tk, d = draw(st.integers(1, 6)), draw(st.integers(1, 7)), draw(st.integers(1, 4))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q, key, value = (torch.randn(2, t, d, generator=gen, dtype=dtype) for t in (tq, tk, tk))
    j = draw(st.integers(0, tk - 1))
    where = draw(st.sampled_from(["key", "value"]))
    (key if where == "key" else value)[draw(st.integers(0, 1)), j, draw(st.integers(0, d - 1))] = draw(
        st.sampled_from([math.nan, math.inf, -math.inf])
    )
    mask_kind = draw(st.sampled_from(["causal", "window", "bool"]))
    mask, window = None, None
    if mask_kind == "causal":
        mask = attnkit.masks.causal(draw(st.integers(-1, 1)))
    elif mask_kind == "window":
        window = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    else:
        mask = torch.rand(tq, tk, generator=gen) < 0.5
    normalize = draw(st.sampled_from(["softmax", "sparsemax", "entmax15", *DISCRETE]))
    norm = NORMALIZERS["topk"](k=draw(st.integers(1, tk))) if normalize == "topk" else normalize
    kwargs = {"score": "scaled_dot", "normalize": norm, "mask": mask, "window": window}
    return {"inputs": [q, key, value], "kwargs": kwargs, "where": where}


@settings(max_examples=100, **SETTINGS)
@given(problem=poisoned_problems())
def test_a_non_finite_key_or_value_poisons_exactly_the_rows_that_may_attend_it(problem):
    """Forward only: NaN flows back through a poisoned row's gradients, as through a NaN softmax row."""
    q, key, value = problem["inputs"]
    kwargs = problem["kwargs"]
    call = attnkit.core.prepare(q, key, value, **kwargs)
    allowed = call.region.materialize(call.scores_shape).expand(call.scores_shape)
    bad = ~(torch.isfinite(key).all(-1) & torch.isfinite(value).all(-1))  # (B, Tk)
    poisoned = (allowed & bad[:, None, :]).any(-1)  # (B, Tq)
    event(f"poisoned rows: {int(poisoned.sum())} of {poisoned.numel()}")
    ref = attnkit.attention(q, key, value, backend="reference", **kwargs).output
    assert torch.isnan(ref[poisoned]).all() and torch.isfinite(ref[~poisoned]).all()
    for name in FAST_PATHS:
        if attnkit.backends.BACKENDS[name].reason(call, forced=True) is not None:
            continue
        got = attnkit.attention(q, key, value, backend=name, **kwargs).output
        assert torch.isnan(got).equal(torch.isnan(ref)), name
        atol, rtol = TOLERANCES[(name, q.dtype)]
        if q.dtype == BF16:
            atol, rtol = 4 * atol, 4 * rtol  # same-dtype comparison: both round
        torch.testing.assert_close(got[~poisoned], ref[~poisoned], atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------------------------
# a key/value cache: a sequence fed to MultiHeadAttention in chunks through a KVCache (reordered
# and forked on the way) gives the outputs of one call over the whole sequence


@st.composite
def kv_cache_runs(draw):
    b, kv_heads = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2]))
    heads, dh = kv_heads * draw(st.sampled_from([1, 2])), draw(st.integers(1, 3))
    chunks = draw(st.lists(st.integers(1, 3), min_size=1, max_size=5))  # Tq of each call, summing to T
    left, right = draw(st.integers(0, 3)), draw(st.integers(0, 2))
    # the module's own causal / window, or the same rule as mask=: both are shifted past the cache.
    # A window without causal has right = 0: keys after a chunk are not there yet
    kind = draw(st.sampled_from(["causal", "window", "causal+window", "mask=causal", "mask=causal&window"]))
    module = {"causal": {"causal": True}, "window": {"window": (left, 0)}}.get(kind, {})
    if kind == "causal+window":
        module = {"causal": True, "window": (left, right)}
    mask = {"mask=causal": attnkit.masks.causal(), "mask=causal&window": attnkit.masks.causal()}.get(kind)
    if kind == "mask=causal&window":
        mask = mask & attnkit.masks.sliding_window(left, right)
    at = draw(st.integers(0, len(chunks) - 1) | st.none())  # reorder before call `at` (0: the empty cache)
    index = draw(st.permutations(range(b)) | st.lists(st.integers(0, b - 1), min_size=b, max_size=b))
    fork = draw(st.sampled_from([None, "copy", "deepcopy"]))  # continue on a copy; the original moves on too
    return {
        "module": dict(module, kv_heads=kv_heads, score=draw(st.sampled_from(["scaled_dot", "general", "additive"]))),
        "heads": heads,
        "dh": dh,
        "b": b,
        "chunks": chunks,
        "mask": mask,
        "at": at,  # reorder before this call (None: never)
        "index": torch.tensor(index),
        "fork": fork if at is not None else None,
        "grad": draw(st.booleans()),  # gradients on: the cache concatenates; off: it writes into its storage
        "seed": draw(st.integers(0, 2**31 - 1)),
        "label": f"{kind}, reorder: {at is not None}, fork: {fork if at is not None else None}",
    }


@settings(max_examples=100, **SETTINGS)
@given(run=kv_cache_runs())
def test_chunked_calls_with_a_kv_cache_equal_one_full_call(run):
    event(run["label"])
    torch.manual_seed(run["seed"])
    d, b, index = run["heads"] * run["dh"], run["b"], run["index"]
    mha = attnkit.MultiHeadAttention(d, run["heads"], **run["module"]).double().eval()
    x = torch.randn(b, sum(run["chunks"]), d, dtype=F64)  # (B, T, D)
    s = sum(run["chunks"][: run["at"]]) if run["at"] is not None else x.shape[1]  # positions before the reorder
    y = torch.cat([x[index, :s], x[:, s:]], 1)  # what the rows hold after reordering at s, then the rest
    with torch.set_grad_enabled(run["grad"]):
        full_x, full_y = (mha(seq, mask=run["mask"]).output for seq in (x, y))  # (B, T, D)
        cache, other, t = attnkit.KVCache(), None, 0
        for i, n in enumerate(run["chunks"]):
            if i == run["at"]:
                cache.reorder(index)
                if run["fork"] is not None:
                    other, cache = cache, copy.copy(cache) if run["fork"] == "copy" else copy.deepcopy(cache)
            out = mha(x[:, t : t + n], mask=run["mask"], cache=cache).output  # (B, n, D)
            want = (full_x if run["at"] is None or i < run["at"] else full_y)[:, t : t + n]
            torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
            if other is not None:  # the original appends other keys at the same positions, after the fork's
                mha(torch.randn(b, n, d, dtype=F64), mask=run["mask"], cache=other)
            t += n
    assert cache.length == x.shape[1]
