"""Dispatch, and the sdpa and topk_gather backends against the reference (tolerances: tolerances.py)."""

import logging
import re

import pytest
import torch

import attnkit
from attnkit import NORMALIZERS, AttentionError, masks
from attnkit.backends import BACKENDS, explain
from tolerances import LOW_PRECISION, LOW_PRECISION_FACTOR, TOLERANCES

DTYPES = [torch.float64, torch.float32, torch.bfloat16]


def _inputs(lead, tq, tk, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*lead, t, d, generator=gen, dtype=torch.float64) for t in (tq, tk, tk))
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


def _params(score, d, lead_heads, dtype):
    torch.manual_seed(1)
    params = attnkit.SCORES[score].init_params(d, d, d, heads=lead_heads)
    if score == "cosine":
        params["temperature"] = torch.full(params["temperature"].shape, 0.3)
    return {n: p.to(dtype).requires_grad_() for n, p in params.items()}


def _mask(kind, lead, tq, tk):
    if kind == "none":
        return None
    if kind == "padding":
        lengths = [max(1, tk - i) for i in range(lead[0])]
        return masks.padding(lengths, max_len=tk)
    if kind == "causal":
        return masks.causal()
    if kind == "window":
        return masks.sliding_window(2, 1)
    if kind == "float":
        bias = torch.randn(tq, tk, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        return bias.masked_fill(bias > 1.0, float("-inf"))
    if kind == "empty_row":  # query 0 may attend nothing
        allowed = torch.ones(tq, tk, dtype=torch.bool)
        allowed[0] = False
        return allowed
    raise ValueError(kind)


def _run(backend, kwargs, inputs, params):
    """Output, weights and gradients of one backend (gradients of a fixed linear loss)."""
    for t in (*inputs, *params.values()):
        t.grad = None
    res = attnkit.attention(*inputs, score_params=params, backend=backend, **kwargs)
    (res.output.float() * torch.linspace(-1, 1, res.output.shape[-1])).sum().backward()
    grads = [None if t.grad is None else t.grad.clone() for t in (*inputs, *params.values())]
    return [res.output.detach(), res.weights, *grads]


def _float64(inputs, params):
    inputs = [t.detach().double().requires_grad_() for t in inputs]
    return inputs, {n: p.detach().double().requires_grad_() for n, p in params.items()}


def _compare(backend, dtype, kwargs, inputs, params):
    """Outputs, weights (if asked) and gradients of ``backend`` against the reference."""
    got = _run(backend, kwargs, inputs, params)
    want = _run("reference", kwargs, inputs, params)
    truth = _run("reference", kwargs, *_float64(inputs, params)) if dtype in LOW_PRECISION else None
    atol, rtol = TOLERANCES[(backend, dtype)]
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None or g.abs().max() == 0
            continue
        assert torch.isfinite(g).all()
        if truth is None:
            torch.testing.assert_close(g, w, atol=atol, rtol=rtol)
        else:
            ours, refs = (g.double() - truth[i]).abs().max(), (w.double() - truth[i]).abs().max()
            bound = LOW_PRECISION_FACTOR * refs + atol + rtol * truth[i].abs().max()
            assert ours <= bound, (i, float(ours), float(refs), float(bound))


SHAPES = [((2,), 5, 7), ((2, 3), 6, 6), ((1,), 1, 1), ((3,), 9, 4)]  # (lead, Tq, Tk)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("score", ["dot", "scaled_dot", "general", "cosine"])
@pytest.mark.parametrize("mask", ["none", "padding", "causal", "window", "float", "empty_row"])
@pytest.mark.parametrize("lead,tq,tk", SHAPES)
def test_sdpa_matches_reference(dtype, score, mask, lead, tq, tk):
    inputs = _inputs(lead, tq, tk, 8, dtype)
    params = _params(score, 8, lead[1] if len(lead) > 1 else None, dtype)
    kwargs = {"score": score, "mask": _mask(mask, lead, tq, tk)}
    choice = attnkit.backends.choose(attnkit.core.prepare(*inputs, score_params=params, **kwargs))
    if score == "cosine" and dtype == torch.bfloat16:  # learnable τ in half precision stays on the reference
        assert choice.passed_over["sdpa"].startswith("a learnable cosine temperature in half precision")
        params["temperature"].requires_grad_(False)
        choice = attnkit.backends.choose(attnkit.core.prepare(*inputs, score_params=params, **kwargs))
    assert choice.backend == "sdpa"
    _compare("sdpa", dtype, kwargs, inputs, params)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", ["hard", "topk1", "topk3"])
@pytest.mark.parametrize("mask", ["none", "padding", "causal", "float", "empty_row"])
@pytest.mark.parametrize("score", ["scaled_dot", "additive"])
@pytest.mark.parametrize("lead,tq,tk", [((2,), 5, 7), ((2, 3), 6, 6), ((3,), 9, 4)])
def test_topk_gather_matches_reference(dtype, normalize, mask, score, lead, tq, tk):
    inputs = _inputs(lead, tq, tk, 8, dtype)
    params = _params(score, 8, lead[1] if len(lead) > 1 else None, dtype) if score == "additive" else {}
    norm = NORMALIZERS["hard"]() if normalize == "hard" else NORMALIZERS["topk"](k=int(normalize[-1]))
    kwargs = {"score": score, "normalize": norm, "mask": _mask(mask, lead, tq, tk), "need_weights": True}
    _compare("topk_gather", dtype, kwargs, inputs, params)


def test_topk_gather_chunks_queries_without_changing_results(monkeypatch):
    import attnkit.backends.topk as topk

    inputs = _inputs((2, 2), 37, 50, 8, torch.float64)
    kwargs = {"normalize": NORMALIZERS["topk"](k=3), "mask": masks.causal(), "need_weights": True}
    whole = attnkit.attention(*inputs, backend="topk_gather", **kwargs)
    monkeypatch.setattr(topk, "CHUNK_ELEMENTS", 4 * 50 * 5)  # 5 query rows per chunk: 8 chunks
    chunked = attnkit.attention(*inputs, backend="topk_gather", **kwargs)
    torch.testing.assert_close(chunked.output, whole.output, atol=1e-14, rtol=0)  # matmul blocking differs
    torch.testing.assert_close(chunked.weights, whole.weights, atol=1e-14, rtol=0)


def test_auto_dispatch_choices_and_reasons():
    q = torch.randn(2, 4, 64, 16)
    assert explain(q, q, q).backend == "sdpa"
    choice = explain(q, q, q, need_weights=True)
    assert choice.backend == "reference"
    assert choice.passed_over["sdpa"] == "SDPA cannot return the weights (need_weights=True)"
    assert explain(q, q, q, normalize=NORMALIZERS["topk"](k=4)).backend == "topk_gather"
    few_keys = explain(q, q[..., :8, :], q[..., :8, :], normalize=NORMALIZERS["topk"](k=4))
    assert few_keys.backend == "reference"
    assert few_keys.passed_over["topk_gather"] == "k=4 is a large share of Tk=8; the dense product is as fast"
    assert explain(q, q, q, normalize="sparsemax").backend == "reference"
    assert list(BACKENDS)[-1] == "reference"


def test_forcing_a_backend_that_cannot_run_the_call_raises():
    q = torch.randn(1, 4, 8)
    message = "backend='sdpa' cannot run this call: SDPA cannot return the weights (need_weights=True)"
    with pytest.raises(AttentionError, match=re.escape(message)):
        attnkit.attention(q, q, q, need_weights=True, backend="sdpa")
    with pytest.raises(AttentionError, match=re.escape("backend='cuda' is unknown; expected 'auto' or one of [")):
        attnkit.attention(q, q, q, backend="cuda")


def test_forcing_skips_only_the_worthwhile_check():
    q = torch.randn(1, 4, 8)
    norm = NORMALIZERS["topk"](k=2)
    assert explain(q, q, q, normalize=norm).backend == "reference"  # k is half of Tk: not worth it
    assert explain(q, q, q, normalize=norm, backend="topk_gather").backend == "topk_gather"


def test_weights_asked_for_are_never_none_on_any_path():
    q = torch.randn(2, 6, 8)
    for normalize in ("softmax", "hard", NORMALIZERS["topk"](k=1), "sparsemax"):
        res = attnkit.attention(q, q, q, normalize=normalize, need_weights=True)
        assert res.weights is not None and res.weights.shape == (2, 6, 6)


def test_dispatch_is_logged_at_debug_level(caplog):
    q = torch.randn(1, 4, 8)
    with caplog.at_level(logging.DEBUG, logger="attnkit.backends"):
        attnkit.attention(q, q, q)
    assert "backend: sdpa" in caplog.text


def test_mha_without_weights_runs_on_sdpa_and_matches_torch():
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).double().eval()
    ours = attnkit.MultiHeadAttention.from_torch(ref).eval()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 4:] = True
    blocked = torch.ones(7, 7, dtype=torch.bool).triu(1)
    want, _ = ref(x, x, x, key_padding_mask=kpm, attn_mask=blocked, need_weights=False)
    got = ours(x, key_padding_mask=kpm, mask=~blocked)
    assert got.weights is None
    torch.testing.assert_close(got.output, want, atol=1e-10, rtol=0)
