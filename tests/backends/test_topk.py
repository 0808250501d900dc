"""The topk_gather backend's dot-family path against the reference: outputs, weights and gradients.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, D feature dim.

For ``dot``, ``scaled_dot``, ``general`` and ``cosine`` the backend selects without autograd and
computes the k selected scores again from the k selected keys; these tests check that this gives
the reference's outputs, weights and gradients (also of the score parameters and of a learnable
float mask), and that its backward holds no dense (Tq, Tk) tensor. The other scores, dtypes and
masks are in test_backends.py, ties in tests/core/test_ties.py.
"""

from __future__ import annotations

import pytest
import tolerances
import torch
from saved_bytes import saved_bytes

import attnkit
from attnkit import NORMALIZERS, SCORES, masks

F64, F32 = torch.float64, torch.float32


def _inputs(lead, tq, tk, dtype=F64, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((*lead, tq, d), (*lead, tk, d), (*lead, tk, d + 3))
    return [torch.randn(s, generator=gen, dtype=F64).to(dtype).requires_grad_() for s in shapes]


def _params(score, heads, dtype=F64, d=8):
    torch.manual_seed(1)
    params = SCORES[score].init_params(d, d, heads=heads)
    if score == "cosine":
        params["temperature"] = torch.linspace(0.3, 1.2, heads)
    return {n: p.to(dtype).requires_grad_() for n, p in params.items()}


def _results(backend, inputs, params, kwargs, leaves):
    """Output, weights and the gradients of a fixed random loss of both, for every leaf."""
    res = attnkit.attention(*inputs, score_params=params, need_weights=True, backend=backend, **kwargs)
    gen = torch.Generator().manual_seed(2)
    loss = (res.output * torch.randn(res.output.shape, generator=gen, dtype=res.output.dtype)).sum()
    loss = loss + (res.weights * torch.randn(res.weights.shape, generator=gen, dtype=res.weights.dtype)).sum()
    leaves = [*inputs, *params.values(), *leaves]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)  # hard: the query and key get none
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
    return [res.output.detach(), res.weights.detach(), *grads]


def _compare(inputs, params, kwargs, dtype=F64, leaves=()):
    """topk_gather against the reference; ``leaves``: other tensors to compare the gradients of."""
    got = _results("topk_gather", inputs, params, kwargs, leaves)
    want = _results("reference", inputs, params, kwargs, leaves)
    atol, rtol = tolerances.TOLERANCES[("topk_gather", dtype)]
    names = ["output", "weights", "d query", "d key", "d value", *params, *(f"d leaf {i}" for i in range(len(leaves)))]
    for name, g, w in zip(names, got, want, strict=True):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("normalize", ["hard", "topk1", "topk4"])
@pytest.mark.parametrize("score", ["dot", "scaled_dot", "general", "cosine"])
def test_dot_family_scores_match_reference(score, normalize, dtype):
    lead = (2, 3)  # (B, H): general's W and cosine's temperature are per head
    inputs = _inputs(lead, 21, 17, dtype)
    params = _params(score, heads=3, dtype=dtype) if score in ("general", "cosine") else {}
    norm = NORMALIZERS["hard"]() if normalize == "hard" else NORMALIZERS["topk"](k=int(normalize[-1]))
    mask = masks.causal(3) & masks.padding([17, 12], max_len=17)  # query 0..: keys 0..3.., example 1: 12 keys
    _compare(inputs, params, {"score": score, "normalize": norm, "mask": mask, "scale": 0.8}, dtype)


def test_broadcast_leading_dims_and_rows_without_keys_match_reference():
    # query (1, H, ...) and key (B, 1, ...) broadcast to (B, H); query 0 of a window that starts
    # past the keys attends nothing (zero output and weights, finite gradients)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 9, 8, generator=gen, dtype=F64).requires_grad_()
    k = torch.randn(2, 1, 12, 8, generator=gen, dtype=F64).requires_grad_()
    v = torch.randn(12, 5, generator=gen, dtype=F64).requires_grad_()
    allowed = torch.ones(9, 12, dtype=torch.bool)
    allowed[0] = False
    _compare([q, k, v], {}, {"normalize": NORMALIZERS["topk"](k=3), "mask": allowed})
    out = attnkit.attention(q, k, v, normalize=NORMALIZERS["topk"](k=3), mask=allowed, backend="topk_gather").output
    assert out[:, :, 0].abs().max() == 0


def test_gradient_reaches_a_learnable_float_mask_at_the_selected_keys():
    inputs = _inputs((2,), 10, 14)
    bias = torch.randn(10, 14, generator=torch.Generator().manual_seed(5), dtype=F64).requires_grad_()
    _compare(inputs, {}, {"normalize": NORMALIZERS["topk"](k=3), "mask": bias}, leaves=(bias,))


def test_dropout_is_unbiased():
    # 2000 copies of one problem in the batch dim, each with its own dropout draw
    q, k, v = (t.detach().expand(2000, -1, -1) for t in _inputs((1,), 6, 20))
    norm = NORMALIZERS["topk"](k=4)
    torch.manual_seed(0)
    dropped = attnkit.attention(q, k, v, normalize=norm, dropout=0.5, backend="topk_gather").output
    plain = attnkit.attention(q[:1], k[:1], v[:1], normalize=norm, backend="topk_gather").output
    assert (dropped != plain).any(-1).float().mean() > 0.5
    torch.testing.assert_close(dropped.mean(0, keepdim=True), plain, atol=0.1, rtol=0)


def _saved_bytes(backend, t):
    """Bytes of the tensors autograd saves for the backward of one top-4 call at Tq = Tk = t."""
    q, k, v = _inputs((1, 2), t, t, F32, d=16)
    return saved_bytes(lambda: attnkit.attention(q, k, v, normalize=NORMALIZERS["topk"](k=4), backend=backend))


def test_saved_memory_grows_linearly_in_t():
    ratio = _saved_bytes("topk_gather", 1024) / _saved_bytes("topk_gather", 512)
    assert ratio < 2.3, ratio
    assert _saved_bytes("reference", 1024) / _saved_bytes("reference", 512) > 3.5
    assert _saved_bytes("topk_gather", 1024) < _saved_bytes("reference", 1024) / 10
