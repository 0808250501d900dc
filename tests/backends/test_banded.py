"""The banded backend against the reference: outputs, weights and gradients over dtype × mask × shape.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, D feature dim, Dv value dim.
Masks: True = may attend.

Calls force ``backend="banded"``, which skips only its ``worthwhile`` check: automatic dispatch
passes it over for bands too wide to pay off (any window on T = 1, a window wider than T), and the
maths must hold for those calls too. Dispatch is tested on its own at the end.
"""

from __future__ import annotations

import re

import pytest
import tolerances
import torch
from saved_bytes import saved_bytes

import attnkit
from attnkit import NORMALIZERS, SCORES, AttentionError, masks
from attnkit.backends import BACKENDS, banded, explain
from attnkit.bench.cases import local_attention, window_allowed, window_mask
from attnkit.core.functional import prepare

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
# (atol, rtol) against the reference run in the same dtype, from the one table (bfloat16: forward only)
TOLERANCES = {dtype: tolerances.TOLERANCES[("banded", dtype)] for dtype in (F64, F32, BF16)}

WINDOWS = [(0, 0), (3, 0), (2, 5), (40, 1)]  # (left, right); 40 is larger than every T below
LENGTHS = [(13, 13), (37, 37), (9, 21), (21, 9), (1, 1)]  # (Tq, Tk): 37 is not a multiple of a block


def _inputs(lead, tq, tk, dtype, seed=0, d=8, dv=5):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((*lead, tq, d), (*lead, tk, d), (*lead, tk, dv))
    return [torch.randn(s, generator=gen, dtype=F64).to(dtype).requires_grad_() for s in shapes]


def _params(score, dtype, heads=None, d=8):
    torch.manual_seed(1)
    params = SCORES[score].init_params(d, d, hidden_dim=6, heads=heads)
    return {n: p.to(dtype).requires_grad_() for n, p in params.items()}


def _mask(kind, lead, tk, window):
    window_mask = masks.sliding_window(*window)
    lengths = [max(0, tk - 4 * b) for b in range(lead[0])]  # example b has 4b padded keys at the end
    return {
        "window": window_mask,
        "causal": masks.causal() & window_mask,
        "padding": masks.padding(lengths, max_len=tk) & window_mask,
        "causal_padding": masks.causal() & masks.padding(lengths, max_len=tk) & window_mask,
    }[kind]


def _run(backend, inputs, params, kwargs, grads=True):
    """Output, dense weights and the gradients of a fixed random loss of both."""
    res = attnkit.attention(*inputs, score_params=params, need_weights=True, backend=backend, **kwargs)
    if not grads:
        return [res.output.detach(), res.weights.detach()]
    gen = torch.Generator().manual_seed(2)
    loss = (res.output * torch.randn(res.output.shape, generator=gen, dtype=res.output.dtype)).sum()
    loss = loss + (res.weights * torch.randn(res.weights.shape, generator=gen, dtype=res.weights.dtype)).sum()
    leaves = [*inputs, *params.values()]
    return [res.output.detach(), res.weights.detach(), *torch.autograd.grad(loss, leaves)]


def _compare(inputs, params, kwargs, dtype, grads=True):
    got = _run("banded", inputs, params, kwargs, grads)
    want = _run("reference", inputs, params, kwargs, grads)
    atol, rtol = TOLERANCES[dtype]
    for name, g, w in zip(["output", "weights", "d query", "d key", "d value", *params], got, want):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("tq,tk", LENGTHS)
@pytest.mark.parametrize("mask", ["window", "causal", "padding", "causal_padding"])
@pytest.mark.parametrize("window", WINDOWS)
def test_masks_and_lengths_match_reference(window, mask, tq, tk):
    lead = (3, 2)  # (B, H); example 2 of the padding masks has its last 8 keys padded
    inputs = _inputs(lead, tq, tk, F64)
    _compare(inputs, {}, {"mask": _mask(mask, lead, tk, window)}, F64)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("normalize", ["softmax", "sparsemax", "topk2"])
@pytest.mark.parametrize("score", ["scaled_dot", "additive"])
@pytest.mark.parametrize("lead", [(2,), (2, 3)])
@pytest.mark.parametrize("window", [(0, 0), (2, 5)])
def test_scores_and_normalizers_match_reference(window, lead, score, normalize, dtype):
    inputs = _inputs(lead, 37, 37, dtype)
    params = _params(score, dtype, heads=lead[1] if len(lead) > 1 else None) if score == "additive" else {}
    norm = NORMALIZERS["topk"](k=2) if normalize == "topk2" else normalize
    kwargs = {"score": score, "normalize": norm, "mask": _mask("causal_padding", lead, 37, window)}
    _compare(inputs, params, kwargs, dtype)


@pytest.mark.parametrize("score", ["scaled_dot", "additive"])
@pytest.mark.parametrize("window", [(3, 0), (2, 5)])
def test_bfloat16_forward_matches_reference(window, score):
    inputs = _inputs((2, 2), 37, 37, BF16)
    params = _params(score, BF16, heads=2) if score == "additive" else {}
    kwargs = {"score": score, "mask": _mask("causal_padding", (2, 2), 37, window)}
    _compare(inputs, params, kwargs, BF16, grads=False)


def test_lengths_cover_a_partial_last_block():
    call = prepare(*_inputs((1,), 37, 37, F64), window=(2, 5))
    assert 37 % banded.plan(call).block != 0


def test_per_head_params_and_broadcast_leading_dims_match_reference():
    # query (1, H, ...) and key (B, 1, ...) broadcast to (B, H); per-head W (H, D, D) lines up with H
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 30, 8, generator=gen, dtype=F64).requires_grad_()
    k = torch.randn(2, 1, 30, 8, generator=gen, dtype=F64).requires_grad_()
    v = torch.randn(30, 4, generator=gen, dtype=F64).requires_grad_()
    for score in ("general", "additive"):
        params = _params(score, F64, heads=3)
        _compare([q, k, v], params, {"score": score, "window": (4, 1)}, F64)
    temperature = {"temperature": torch.tensor([0.5, 1.0, 2.0], dtype=F64, requires_grad=True)}
    _compare([q, k, v], temperature, {"score": "cosine", "window": (4, 1)}, F64)


def test_offsets_and_intersected_windows_match_reference():
    inputs = _inputs((2,), 20, 30, F64)
    for mask in (
        masks.sliding_window(3, 2, offset=5),
        masks.sliding_window(3, 2, offset=-7) & masks.causal(-8),
        masks.sliding_window(10, 10) & masks.sliding_window(2, 12, offset=3) & masks.causal(2),
    ):
        _compare(inputs, {}, {"mask": mask}, F64)


def test_topk_with_k_wider_than_the_window_matches_reference():
    # one query, window (0, 0): a block must still read k keys, then all but one are masked out
    inputs = _inputs((2,), 1, 5, F64)
    _compare(inputs, {}, {"window": (0, 0), "normalize": NORMALIZERS["topk"](k=3)}, F64)


def test_dropout_is_unbiased():
    # 4000 copies of one problem in the batch dim, each with its own dropout draw
    q, k, v = (t.detach().expand(4000, -1, -1) for t in _inputs((1,), 64, 64, F64))
    torch.manual_seed(0)
    dropped = attnkit.attention(q, k, v, window=(2, 1), dropout=0.5, backend="banded").output
    plain = attnkit.attention(q[:1], k[:1], v[:1], window=(2, 1), backend="banded").output
    assert (dropped != plain).any(-1).float().mean() > 0.5
    torch.testing.assert_close(dropped.mean(0, keepdim=True), plain, atol=0.15, rtol=0)


def test_fully_masked_rows_give_zeros_and_finite_gradients():
    q, k, v = _inputs((2,), 64, 64, F64)
    mask = masks.padding([64, 6], max_len=64) & masks.sliding_window(2, 0)  # example 1: keys 0..5 only
    res = attnkit.attention(q, k, v, mask=mask, need_weights=True, backend="banded")
    assert res.output[1, 8:].abs().max() == 0  # queries 8.. see keys i-2..i, all padded
    assert res.weights[1, 8:].abs().max() == 0
    assert res.output[1, :8].abs().amin(-1).min() > 0
    res.output.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert q.grad[1, 8:].abs().max() == 0
    _compare([q, k, v], {}, {"mask": mask}, F64)


def test_sample_log_prob_is_per_query_and_is_the_drawn_keys_log_probability():
    q, k, v = _inputs((2, 2), 40, 40, F64)
    kwargs = {"window": (3, 2), "need_weights": True}
    sampled = attnkit.attention(q, k, v, normalize=NORMALIZERS["sample"](k=1), backend="banded", **kwargs)
    soft = attnkit.attention(q, k, v, backend="reference", **kwargs).weights  # (B, H, Tq, Tk)
    assert sampled.log_prob.shape == (2, 2, 40)
    assert ((sampled.weights == 0) | (sampled.weights == 1)).all() and (sampled.weights.sum(-1) == 1).all()
    drawn = sampled.weights.argmax(-1, keepdim=True)  # (B, H, Tq, 1)
    assert (soft.gather(-1, drawn) > 0).all()  # the draw lies inside the window
    torch.testing.assert_close(sampled.log_prob, soft.gather(-1, drawn).squeeze(-1).log(), atol=1e-12, rtol=0)


def _saved_bytes(backend, t):
    """Bytes of the tensors autograd saves for the backward of one call at T = t."""
    q, k, v = _inputs((1, 2), t, t, F32, d=16, dv=16)
    return saved_bytes(
        lambda: attnkit.attention(q, k, v, mask=masks.causal() & masks.sliding_window(31, 0), backend=backend)
    )


def test_saved_memory_grows_linearly_in_t():
    banded_ratio = _saved_bytes("banded", 2048) / _saved_bytes("banded", 1024)
    reference_ratio = _saved_bytes("reference", 2048) / _saved_bytes("reference", 1024)
    assert banded_ratio < 2.3, banded_ratio
    assert reference_ratio > 3.5, reference_ratio
    assert _saved_bytes("banded", 2048) < _saved_bytes("reference", 2048) / 10


def _compare_fused(inputs, params, kwargs, dtype=F64):
    """The fused path (no weights asked for) against the reference: output and every gradient."""
    call = prepare(*inputs, score_params=params, **kwargs)
    band = banded.plan(call)
    assert band.fused, band
    results = []
    for backend in ("banded", "reference"):
        out = attnkit.attention(*inputs, score_params=params, backend=backend, **kwargs).output
        gen = torch.Generator().manual_seed(2)
        loss = (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum()
        leaves = [t for t in [*inputs, *params.values()] if t.requires_grad]
        results.append([out.detach(), *torch.autograd.grad(loss, leaves)])
    atol, rtol = TOLERANCES[dtype]
    for name, g, w in zip(["output", "d query", "d key", "d value", *params], *results):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


FUSED_WINDOWS = [(0, 0), (3, 0), (2, 5), (7, 7), (40, 1)]  # (left, right); 40 is wider than every T below


@pytest.mark.parametrize("tq,tk", [(37, 37), (9, 21), (21, 9), (1, 1), (70, 70)])
@pytest.mark.parametrize("mask", ["window", "causal", "padding", "causal_padding"])
@pytest.mark.parametrize("window", FUSED_WINDOWS)
def test_fused_path_matches_reference(window, mask, tq, tk):
    # 37 and 70 are no multiple of the fused path's blocks (32): the last block has padded queries
    lead = (3, 2)
    _compare_fused(_inputs(lead, tq, tk, F64), {}, {"mask": _mask(mask, lead, tk, window)})


@pytest.mark.parametrize("mask", ["window", "causal", "padding", "causal_padding"])
@pytest.mark.parametrize("window", [(20, 20), (30, 0), (0, 25)])
def test_fused_path_with_inner_and_edge_blocks_matches_reference(window, mask):
    # T=300: blocks of 32 queries; the first and last blocks' bands reach past the keys (their own
    # calls, zero-padded keys), the blocks between read the keys in place with one shared mask
    lead = (2, 2)
    inputs = _inputs(lead, 300, 300, F64, d=4, dv=4)
    kwargs = {"mask": _mask(mask, lead, 300, window)}
    band = banded.plan(prepare(*inputs, **kwargs))
    runs = banded._pieces(-(-300 // band.block), band.block, band.width, band.lo, 300)
    assert len(runs) >= 2 and any(b0 * band.block + band.lo >= 0 and b1 - b0 > 2 for b0, b1 in runs), runs
    _compare_fused(inputs, {}, kwargs)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("score", ["dot", "scaled_dot", "general", "cosine"])
def test_fused_path_takes_every_dot_family_score(score, dtype):
    # general and cosine run as a scaled dot product on rewritten inputs (sdpa.as_dot_product)
    q, k, v = _inputs((2, 3), 45, 45, dtype, dv=8)
    params = _params(score, dtype, heads=3) if score == "general" else {}
    if score == "cosine":
        params = {"temperature": torch.tensor([0.5, 1.0, 2.0], dtype=dtype, requires_grad=True)}
    mask = masks.causal() & masks.padding([45, 30], max_len=45) & masks.sliding_window(6, 0)
    _compare_fused([q, k, v], params, {"score": score, "mask": mask, "scale": 0.7}, dtype)


def test_fused_path_bfloat16_forward_matches_reference():
    q, k, v = _inputs((2, 2), 70, 70, BF16, dv=8)
    mask = masks.causal() & masks.padding([70, 50], max_len=70) & masks.sliding_window(9, 0)
    assert banded.plan(prepare(q, k, v, mask=mask)).fused
    got = attnkit.attention(q, k, v, mask=mask, backend="banded").output
    want = attnkit.attention(q, k, v, mask=mask, backend="reference").output
    atol, rtol = TOLERANCES[BF16]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def test_fused_path_broadcasts_leading_dims_and_takes_value_widths_of_its_own():
    # query (1, H, ...) and key (B, 1, ...) broadcast to (B, H); value 5 wide where keys are 8 (SDPA
    # then runs its math kernel on the blocks); key padding per example of B
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 30, 8, generator=gen, dtype=F64).requires_grad_()
    k = torch.randn(2, 1, 30, 8, generator=gen, dtype=F64).requires_grad_()
    v = torch.randn(30, 5, generator=gen, dtype=F64).requires_grad_()
    mask = masks.padding([30, 11], max_len=30) & masks.sliding_window(4, 9)
    _compare_fused([q, k, v], {}, {"mask": mask})
    _compare_fused([q[0, 0], k[0, 0], v], {}, {"window": (3, 2)})  # no leading dims at all


def test_fused_path_with_grouped_query_heads_matches_reference():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 33, 8, generator=gen, dtype=F64).requires_grad_()
    k, v = (torch.randn(2, 2, 33, 8, generator=gen, dtype=F64).requires_grad_() for _ in range(2))
    _compare_fused([q, k, v], {}, {"window": (5, 3), "enable_gqa": True})


def test_fused_path_offsets_and_intersected_windows_match_reference():
    inputs = _inputs((2,), 20, 30, F64)
    for mask in (
        masks.sliding_window(3, 2, offset=5),  # lo > 0: the band starts inside the keys
        masks.sliding_window(3, 2, offset=-7) & masks.causal(-8),  # the first queries attend nothing
        masks.sliding_window(10, 10) & masks.sliding_window(2, 12, offset=3) & masks.causal(2),
    ):
        _compare_fused(inputs, {}, {"mask": mask})


def test_fused_path_gives_zeros_and_finite_gradients_for_rows_without_keys():
    q, k, v = _inputs((2,), 64, 64, F64)
    mask = masks.padding([64, 6], max_len=64) & masks.sliding_window(2, 0)  # example 1: keys 0..5 only
    assert banded.plan(prepare(q, k, v, mask=mask)).fused
    out = attnkit.attention(q, k, v, mask=mask, backend="banded").output
    assert out[1, 8:].abs().max() == 0  # queries 8.. see keys i-2..i, all padded
    assert out[1, :8].abs().amin(-1).min() > 0
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert q.grad[1, 8:].abs().max() == 0
    _compare_fused([q, k, v], {}, {"mask": mask})


def test_fused_path_gradcheck():
    q, k, v = _inputs((1, 2), 11, 11, F64, d=3, dv=3)
    mask = masks.causal() & masks.padding([9], max_len=11) & masks.sliding_window(3, 0)

    def fn(q, k, v):
        return attnkit.attention(q, k, v, mask=mask, backend="banded").output

    assert banded.plan(prepare(q, k, v, mask=mask)).fused
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        ({"need_weights": True}, "SDPA cannot return the weights"),
        ({"normalize": "sparsemax"}, "SDPA normalizes with softmax only"),
        ({"score": "additive"}, "SDPA scores with a dot product only"),
    ],
)
def test_calls_sdpa_cannot_take_run_on_the_generic_path(kwargs, reason):
    q = torch.randn(2, 40, 8)
    params = {"score_params": _params("additive", torch.float32)} if "score" in kwargs else {}
    call = prepare(q, q, q, window=(3, 1), **params, **kwargs)
    assert reason in banded.fused(call)
    band = banded.plan(call)
    assert not band.fused and band.block == 16  # the generic path's blocks


def test_window_sym_bench_case_contenders_attend_the_same_keys():
    t, w = 12, 4
    ours = window_mask(w, sym=True).materialize((t, t))
    assert torch.equal(ours, window_allowed(t, w, sym=True))
    assert ours.sum(-1).tolist() == [min(i, w) + 1 + min(t - 1 - i, w) for i in range(t)]  # keys i-w..i+w


def test_window_sym_bench_case_local_attention_equals_dense_when_installed():
    pytest.importorskip("local_attention")
    t, w = 16, 4
    q, k, v = _inputs((1, 2), t, t, F64, dv=8)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=window_allowed(t, w, sym=True))
    torch.testing.assert_close(local_attention(w, sym=True)(q, k, v), want)
    torch.testing.assert_close(attnkit.attention(q, k, v, mask=window_mask(w, sym=True)).output, want)


def test_dispatch_picks_banded_for_a_narrow_window_only():
    q = torch.randn(1, 2, 1024, 16)
    assert explain(q, q, q, window=(8, 0)).backend == "banded"
    assert explain(q, q, q, window=(8, 0), normalize="sparsemax", need_weights=True).backend == "banded"
    wide = explain(q, q, q, window=(400, 400))
    assert wide.backend == "sdpa"
    assert wide.passed_over["banded"].endswith("read 928 keys per block, more than 1/2 of Tk=1024; SDPA is faster")
    assert explain(q, q, q, window=(400, 400), backend="banded").backend == "banded"  # forcing skips it
    # a band pays off while a block reads at most Tk / 2 = 512 keys: on the fused path (softmax) a
    # window of 384 keys gets blocks of 96 queries (480 keys), one of 385 blocks of 128 (513 keys);
    # on the generic path (sparsemax) blocks of 128 from 113 keys on
    for kwargs, rival in (({}, "SDPA"), ({"normalize": "sparsemax"}, "the dense reference")):
        assert explain(q, q, q, window=(384, 0), **kwargs).backend == "banded"
        wide = explain(q, q, q, window=(385, 0), **kwargs).passed_over["banded"]
        assert wide.endswith(f"read 513 keys per block, more than 1/2 of Tk=1024; {rival} is faster")


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        ({}, "no sliding window in the mask"),
        ({"mask": masks.causal()}, "no sliding window in the mask"),
        ({"mask": masks.sliding_window(2, 0) | masks.causal()}, "is not a sliding window, causal or key-padding"),
        ({"mask": torch.ones(64, 64, dtype=torch.bool), "window": 2}, "is not a sliding window, causal or key"),
        ({"window": 2, "centre": torch.full((1, 64), 30.0)}, "local-p's Gaussian factor"),
        ({"mask": masks.sliding_window(2, 0, offset=100)}, "leaves no key for any query"),
        ({"window": 2, "normalize": NORMALIZERS["topk"](k=65)}, "topk k=65 is larger than Tk=64"),
    ],
)
def test_calls_it_cannot_run_are_declined_with_a_reason(kwargs, reason):
    q = torch.randn(1, 64, 8)
    declined = BACKENDS["banded"].supports(prepare(q, q, q, **kwargs))
    assert reason in declined
    assert explain(q, q, q, **kwargs).passed_over["banded"] == declined
    with pytest.raises(AttentionError, match=re.escape(f"backend='banded' cannot run this call: {declined}")):
        attnkit.attention(q, q, q, backend="banded", **kwargs)
    with pytest.raises(AttentionError, match="cannot run this call"):
        BACKENDS["banded"].run(prepare(q, q, q, **kwargs))
