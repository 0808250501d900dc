"""Non-finite keys and values (attnkit.core.nonfinite), on every backend alike.

A key that query i may not attend has no influence on query i's output or gradients, whatever its
key and value hold; a non-finite key or value that query i may attend makes query i's output row
NaN. Shape legend: B batch, Tq query positions, Tk key positions, D feature dim.
"""

import pytest
import torch

import attnkit
from attnkit import NORMALIZERS, masks
from attnkit.backends import BACKENDS
from attnkit.backends.registry import register
from attnkit.core.functional import AttentionResult
from attnkit.core.nonfinite import reaches
from attnkit.core.scores import Score

B, TQ, TK, D = 2, 6, 7, 4
LENGTHS = [5, 3]  # keys 5.. of example 0 and 3.. of example 1 are padding
BAD = [float("nan"), float("inf"), float("-inf")]

# (backend, score, normalize, window): each backend on a call it takes
CASES = [
    ("reference", "scaled_dot", "softmax", None),
    ("reference", "general", "sparsemax", None),
    ("reference", "cosine", "entmax15", None),
    ("reference", "concat", "hard", None),
    ("reference", "additive", "topk", None),
    ("sdpa", "scaled_dot", "softmax", None),
    ("sdpa", "general", "softmax", None),
    ("sdpa", "cosine", "softmax", None),
    ("banded", "scaled_dot", "softmax", (2, 1)),
    ("banded", "dot", "sparsemax", (2, 1)),
    ("banded", "additive", "topk", (2, 1)),
    ("additive_fused", "additive", "softmax", None),
    ("topk_gather", "dot", "hard", None),
    ("topk_gather", "scaled_dot", "topk", None),
]


def _normalizer(name):
    return NORMALIZERS["topk"](k=2) if name == "topk" else name


def _inputs(score, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, t, D, generator=gen, dtype=torch.float64) for t in (TQ, TK, TK))
    params = attnkit.SCORES[score].init_params(D, D, 3, dtype=torch.float64)
    return q, k, v, params


def _run(backend, score, normalize, q, k, v, params, **kwargs):
    """(output, weights or None, grads of q, k, v and the params) of a fixed linear loss."""
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    params = {n: p.clone().requires_grad_() for n, p in params.items()}
    res = attnkit.attention(
        q, k, v, score=score, normalize=_normalizer(normalize), score_params=params, backend=backend, **kwargs
    )
    out = res.output
    keep = torch.isfinite(out).all(-1, keepdim=True)  # the loss reads the rows that are not poisoned
    (torch.where(keep, out, 0.0) * torch.linspace(-1, 1, D, dtype=out.dtype)).sum().backward()
    grads = [t.grad for t in (q, k, v, *params.values())]
    return out.detach(), res.weights, grads


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("backend,score,normalize,window", CASES)
def test_padded_keys_and_values_have_no_influence(backend, score, normalize, window, bad):
    """NaN / ±inf in padded key and value rows: the same output and gradients as zeros there."""
    q, k, v, params = _inputs(score)
    clean_k, clean_v = k.clone(), v.clone()
    for b, n in enumerate(LENGTHS):
        k[b, n:], v[b, n:] = bad, bad
        clean_k[b, n:], clean_v[b, n:] = 0.0, 0.0
    kwargs = {"mask": masks.padding(LENGTHS, max_len=TK), "window": window, "need_weights": backend != "sdpa"}
    out, w, grads = _run(backend, score, normalize, q, k, v, params, **kwargs)
    want_out, want_w, want_grads = _run(backend, score, normalize, q, clean_k, clean_v, params, **kwargs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    if w is not None:
        torch.testing.assert_close(w, want_w, rtol=0, atol=0)
    for got, want in zip(grads, want_grads):
        if want is None:
            assert got is None
            continue
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for b, n in enumerate(LENGTHS):  # the padded rows get zero gradients
        assert grads[1] is None or not grads[1][b, n:].any()
        assert not grads[2][b, n:].any()


@pytest.mark.parametrize("backend,score,normalize,window", [c for c in CASES if c[0] != "additive_fused"])
def test_a_value_blocked_for_some_queries_reaches_only_those_that_may_attend_it(backend, score, normalize, window):
    """Causal: a NaN value at key 3 makes rows 3.. NaN (they may attend it) and leaves rows 0..2 as they were."""
    q, k, v, params = _inputs(score)
    v_nan = v.clone()
    v_nan[:, 3, 1] = float("nan")
    kwargs = {"mask": masks.causal(), "window": window}
    out, _, grads = _run(backend, score, normalize, q, k, v_nan, params, **kwargs)
    want, _, want_grads = _run(backend, score, normalize, q, k, v, params, **kwargs)
    reach = torch.arange(TQ) >= 3
    if window is not None:  # window (2, 1) ∧ causal: query i attends i-2 .. i
        reach &= torch.arange(TQ) <= 5
    assert torch.isnan(out[:, reach]).all()  # every entry of those rows, as a NaN score would do
    torch.testing.assert_close(out[:, ~reach], want[:, ~reach], rtol=0, atol=0)
    if want_grads[0] is not None:  # hard attention has no gradient to the scores
        torch.testing.assert_close(grads[0][:, ~reach], want_grads[0][:, ~reach], rtol=0, atol=0)


@pytest.mark.parametrize("normalize", ["hard", "topk", "sparsemax"])
def test_an_allowed_nan_value_poisons_the_row_even_with_weight_zero(normalize):
    """ "May attend" is the mask's verdict: a key a sparse normalizer leaves out still poisons the row."""
    q, k, v, _ = _inputs("dot")
    v[:, 0] = float("nan")
    for backend in ("reference", "topk_gather") if normalize != "sparsemax" else ("reference",):
        out = attnkit.attention(q, k, v, score="dot", normalize=_normalizer(normalize), backend=backend).output
        assert torch.isnan(out).all(), backend


def test_an_allowed_nan_key_poisons_output_and_weights_rows_and_their_gradient():
    q, k, v, _ = _inputs("dot")
    k[0, 4] = float("nan")
    q.requires_grad_()
    allowed = torch.ones(TQ, TK, dtype=torch.bool)
    allowed[:2, 4] = False  # queries 0 and 1 may not attend key 4
    for backend in ("reference", "sdpa"):
        q.grad = None
        res = attnkit.attention(q, k, v, mask=allowed, backend=backend, need_weights=backend == "reference")
        rows = torch.isnan(res.output).all(-1)  # (B, Tq)
        assert rows[0, 2:].all() and not rows[0, :2].any() and not rows[1].any(), backend
        if res.weights is not None:
            assert torch.isnan(res.weights).all(-1).equal(rows)
        res.output.sum().backward()
        assert torch.isnan(q.grad[0, 2:]).all() and torch.isfinite(q.grad[0, :2]).all(), backend


@pytest.mark.parametrize("normalize", ["softmax", "sparsemax", "entmax15", "hard", "topk"])
@pytest.mark.parametrize("backend", ["reference", "banded", "topk_gather"])
@pytest.mark.parametrize("bad", BAD)
def test_a_non_finite_score_at_a_blocked_key_has_no_influence(backend, normalize, bad):
    """A score that is NaN or ±inf where the mask blocks (a custom score, an overflow) never leaks."""
    if backend == "topk_gather" and normalize not in ("hard", "topk"):
        pytest.skip("topk_gather takes hard and topk only")

    def wild(query, key, params):  # dot, but `bad` against a key whose first entry is 42
        scores = query @ key.transpose(-2, -1)  # (B, Tq, Tk)
        return scores.masked_fill(key[..., None, :, 0] == 42.0, bad)

    score = Score("wild", wild, lambda dq, dk: {}, same_dim=True)
    q, k, v, _ = _inputs("dot")
    for b, n in enumerate(LENGTHS):
        k[b, n:, 0] = 42.0  # finite keys (nothing to clean) whose scores are not
    kwargs = {"mask": masks.padding(LENGTHS, max_len=TK), "window": (2, 1), "need_weights": True}
    out, w, grads = _run(backend, score, normalize, q, k, v, {}, **kwargs)
    want_out, want_w, want_grads = _run(backend, "dot", normalize, q, k, v, {}, **kwargs)
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    torch.testing.assert_close(w, want_w, rtol=0, atol=0)
    for got, want in zip(grads, want_grads):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_key_padding_mask_of_multihead_attention_hides_nan_padding():
    torch.manual_seed(0)
    mha = attnkit.MultiHeadAttention(8, 2)
    x = torch.randn(2, 5, 8)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])  # True = padding, as torch
    want = mha(x.masked_fill(padding[..., None], 0.0), key_padding_mask=padding)[0]
    got = mha(x.masked_fill(padding[..., None], float("nan")), key_padding_mask=padding)[0]
    real = ~padding  # padded queries see NaN in their own query row: only the real rows are compared
    assert torch.isfinite(got[real]).all()
    torch.testing.assert_close(got[real], want[real])


@pytest.mark.parametrize(
    "mask",
    [
        masks.causal(),
        masks.causal(-2),
        masks.sliding_window(2, 1),
        masks.sliding_window(1, 3, offset=2),
        masks.padding(LENGTHS, max_len=TK),
        masks.causal() & masks.sliding_window(3, 0) & masks.padding(LENGTHS, max_len=TK),
        masks.block_sparse(torch.tensor([[1, 0], [0, 1]]).bool(), 4),
    ],
    ids=repr,
)
def test_reaches_by_prefix_counts_equals_the_materialized_mask(mask):
    bad = torch.zeros(B, TK, dtype=torch.bool)
    bad[0, [1, 5]] = True
    bad[1, 6] = True
    shape = (B, TQ, TK)
    want = (mask.materialize(shape) & bad[:, None, :]).any(-1, keepdim=True)
    assert reaches(mask, bad, shape).equal(want.expand(B, TQ, 1))


def test_a_newly_registered_backend_follows_the_rule():
    """The registry wraps every backend's run: a naive one (0 · NaN in its product) is guarded too."""

    def naive(call):
        scores = call.score.fn(call.query, call.key, call.score_params)  # (B, Tq, Tk)
        allowed = call.region.materialize(scores.shape)
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
        return AttentionResult(weights @ call.value, None)

    q, k, v, _ = _inputs("dot")
    k[:, 5:], v[:, 5:] = float("nan"), float("nan")
    register("naive_for_test", naive, lambda call: None, "test only")
    try:
        out = attnkit.attention(q, k, v, mask=masks.padding([5, 5], max_len=TK), backend="naive_for_test").output
    finally:
        del BACKENDS["naive_for_test"]
    assert torch.isfinite(out).all()


def test_flex_forced_follows_the_rule():
    """FlexAttention (forced; no backward on CPU, one compilation): padded NaN keys and values do
    not reach the real rows, and a NaN value that a causal row may attend poisons that row."""
    q, k, v, _ = _inputs("dot")
    q, k, v = (t.float().unsqueeze(1).expand(B, 2, -1, -1).contiguous() for t in (q, k, v))  # (B, H, T, D)
    mask = masks.causal() & masks.padding(LENGTHS, max_len=TK)
    want = attnkit.attention(q, k, v, mask=mask, backend="reference").output
    k[0, :, 5:], v[0, :, 5:] = float("nan"), float("nan")  # padding of example 0
    v[1, :, 1] = float("inf")  # a real key of example 1: rows 1.. may attend it
    got = attnkit.attention(q, k, v, mask=mask, backend="flex").output
    torch.testing.assert_close(got[0], want[0], atol=2e-5, rtol=1e-4)
    assert torch.isnan(got[1, :, 1:]).all() and torch.isfinite(got[1, :, :1]).all()


@pytest.mark.parametrize("backend,score,normalize,window", CASES)
def test_the_branch_free_path_gives_the_same(backend, score, normalize, window, monkeypatch):
    """Compiled and CUDA runs skip the host check for bad rows (no data-dependent branch, no sync)
    and always clean and poison: with or without bad rows, the same results as the eager check."""
    from attnkit.core import nonfinite

    q, k, v, params = _inputs(score, seed=1)
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[0, 6], v_bad[1, 4] = float("nan"), float("inf")  # padding of both examples
    kwargs = {"mask": masks.padding(LENGTHS, max_len=TK), "window": window, "need_weights": backend != "sdpa"}
    for keys, values in ((k, v), (k_bad, v_bad)):
        want = _run(backend, score, normalize, q, keys, values, params, **kwargs)
        monkeypatch.setattr(nonfinite, "maybe_any", lambda bad: True)
        got = _run(backend, score, normalize, q, keys, values, params, **kwargs)
        monkeypatch.undo()
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
        for g, w in zip(got[2], want[2]):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
