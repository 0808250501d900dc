"""The block-sparse backend against the reference: outputs and gradients in float64 under the masks for
long inputs, alone and combined, sizes that are not multiples of the block, rows with no allowed key;
what it declines and why; automatic dispatch picks it for long sparse calls only.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, D feature dim, Dv value dim.
Masks: True = may attend. Calls force ``backend="blocksparse"`` (skipping only its ``worthwhile``
check); small sizes get blocks of 8 positions (``blocksparse.block_size``), so 37 positions make 5.
"""

from __future__ import annotations

import re

import pytest
import torch

import attnkit
from attnkit import NORMALIZERS, SCORES, AttentionError, masks
from attnkit.backends import blocksparse, explain

F64 = torch.float64
ATOL, RTOL = 1e-10, 1e-8  # float64: the same maths summed in another order (blocks, SDPA's kernel)


def _inputs(lead, tq, tk, seed=0, d=8, dv=5):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((*lead, tq, d), (*lead, tk, d), (*lead, tk, dv))
    return [torch.randn(s, generator=gen, dtype=F64).requires_grad_() for s in shapes]


def _params(score, d=8):
    torch.manual_seed(1)
    return {n: p.to(F64).requires_grad_() for n, p in SCORES[score].init_params(d, d).items()}


def _run(backend, inputs, params, kwargs):
    """Output and the gradients of a fixed random loss of it."""
    out = attnkit.attention(*inputs, score_params=params, backend=backend, **kwargs).output
    gen = torch.Generator().manual_seed(2)
    loss = (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum()
    return [out.detach(), *torch.autograd.grad(loss, [*inputs, *params.values()])]


def _compare(inputs, kwargs, params=None):
    params = params or {}
    got, want = (_run(b, inputs, params, kwargs) for b in ("blocksparse", "reference"))
    for name, g, w in zip(["output", "d query", "d key", "d value", *params], got, want):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, atol=ATOL, rtol=RTOL, msg=lambda m, name=name: f"{name}: {m}")


IDS = torch.tensor([0] * 9 + [1] * 20 + [2] * 8)  # 37 positions: sequences of 9, 20, 8
MASKS = {
    "document": lambda: masks.document(IDS),
    "document & causal": lambda: masks.packed([9, 20, 8]) & masks.causal(),
    "packed per example & causal": lambda: masks.packed([[9, 20, 8], [30, 7, 0]]) & masks.causal(),
    "prefix_lm": lambda: masks.prefix_lm(11),
    "prefix_lm & padding": lambda: masks.prefix_lm(torch.tensor([5, 13])) & masks.padding([37, 21], 37),
    "longformer": lambda: masks.longformer(3, [0, 17]),
    "longformer per example": lambda: masks.longformer(2, torch.tensor([[4], [30]])),
    "global bool": lambda: masks.global_tokens(IDS.roll(1) != IDS) | masks.sliding_window(1, 1),
    "streaming": lambda: masks.streaming(4, 6),
    "sinks & causal": lambda: masks.sinks(3) & masks.causal(),
    "block_sparse": lambda: masks.block_sparse(torch.eye(5, dtype=torch.bool) | (torch.rand(5, 5) > 0.7), 8),
    "causal": lambda: masks.causal(),
    "window & padding": lambda: masks.sliding_window(4, 2) & masks.padding([30, 37], 37),
}


@pytest.mark.parametrize("mask", MASKS)
def test_masks_alone_and_combined_match_reference(mask):
    torch.manual_seed(0)
    _compare(_inputs((2, 3), 37, 37), {"mask": MASKS[mask]()})


@pytest.mark.parametrize("score", ["dot", "general", "cosine"])
@pytest.mark.parametrize("lead", [(2,), ()], ids=["3-D", "2-D"])
def test_dot_family_scores_and_leading_dims_match_reference(score, lead):
    mask = masks.streaming(2, 5) if lead == () else masks.packed([[9, 20, 8], [1, 1, 35]]) & masks.causal()
    _compare(_inputs(lead, 37, 37), {"mask": mask, "score": score}, _params(score))


def test_cross_lengths_and_grouped_query_heads_match_reference():
    q_ids, k_ids = torch.tensor([0] * 10 + [1] * 11), torch.tensor([0] * 30 + [1] * 20)
    _compare(_inputs((2, 2), 21, 50), {"mask": masks.document(q_ids, k_ids)})  # Tq = 21, Tk = 50
    q, k, v = _inputs((2, 4), 37, 37)
    gqa = [q, k[:, :2].detach().requires_grad_(), v[:, :2].detach().requires_grad_()]  # Hkv = 2
    _compare(gqa, {"mask": masks.longformer(2, [5]), "enable_gqa": True})


def test_rows_with_no_allowed_key_give_zero_like_the_reference():
    q_ids, k_ids = torch.tensor([0] * 12 + [7] * 9 + [1] * 16), torch.tensor([0] * 20 + [1] * 17)  # id 7: no key
    inputs = _inputs((2, 3), 37, 37)
    out = attnkit.attention(*inputs, mask=masks.document(q_ids, k_ids), backend="blocksparse").output
    assert out[..., 12:21, :].eq(0).all() and out[..., :12, :].ne(0).all()
    _compare(inputs, {"mask": masks.document(q_ids, k_ids)})
    _compare(inputs, {"mask": masks.padding([0, 37], 37) & masks.prefix_lm(3)})  # example 0: every key padded
    _compare(inputs, {"mask": masks.causal(-40)})  # no query has a key: output 0, gradients 0


def test_non_finite_keys_outside_the_blocks_change_nothing():
    q, k, v = (t.detach() for t in _inputs((1, 2), 37, 37))
    k[..., 30, :] = float("nan")  # sequence 2's key: blocked for sequences 0 and 1
    v[..., 2, :] = float("inf")  # sequence 0's value
    mask = masks.document(IDS) & masks.causal()
    got = attnkit.attention(q, k, v, mask=mask, backend="blocksparse").output
    want = attnkit.attention(q, k, v, mask=mask, backend="reference").output
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL, equal_nan=True)
    assert got[..., :2, :].isfinite().all() and got[..., 2:9, :].isnan().all() and got[..., 9:29, :].isfinite().all()


def test_gradcheck():
    q, k, v = _inputs((1, 1), 11, 11, d=3, dv=2)  # 11 positions: blocks of 8 and 3
    mask = masks.packed([4, 7]) & masks.causal() | masks.sinks(1)

    def f(q, k, v):
        return attnkit.attention(q, k, v, mask=mask, backend="blocksparse").output

    assert torch.autograd.gradcheck(f, (q, k, v), fast_mode=True)


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        ({"mask": masks.causal(), "need_weights": True}, "SDPA cannot return the weights (need_weights=True)"),
        ({"mask": masks.causal(), "normalize": "sparsemax"}, "SDPA normalizes with softmax only"),
        ({"mask": masks.causal(), "score": "additive"}, "SDPA scores with a dot product only"),
        ({}, "no mask: no block to skip"),
        ({"mask": torch.zeros(37, 37)}, "an additive float mask Dense(float32(37, 37)) is not a rule of blocks"),
        ({"mask": masks.causal() & torch.ones(37, 37, dtype=torch.bool)}, "a dense tensor mask Dense(bool(37, 37))"),
    ],
)
def test_declines_what_it_cannot_run_exactly(kwargs, reason):
    q = torch.randn(2, 37, 8)
    if kwargs.get("score") == "additive":
        kwargs = {**kwargs, "score_params": SCORES["additive"].init_params(8, 8)}
    with pytest.raises(AttentionError, match=re.escape(f"backend='blocksparse' cannot run this call: {reason}")):
        attnkit.attention(q, q, q, backend="blocksparse", **kwargs)


def test_a_custom_rule_is_declined_not_guessed():
    class EvenKeys(masks.Mask):
        def materialize(self, shape, device=None):
            return (torch.arange(shape[-1], device=device) % 2 == 0).expand(shape[-2], -1)

    q = torch.randn(2, 37, 8)
    assert explain(q, q, q, mask=EvenKeys(), backend="auto").passed_over["blocksparse"].startswith("mask part")


def test_auto_dispatch_picks_it_for_long_sparse_calls_only():
    q = torch.randn(1, 2, 2048, 16)  # shapes only: explain runs nothing
    assert explain(q, q, q, mask=masks.packed([512] * 4) & masks.causal()).backend == "blocksparse"
    assert explain(q, q, q, mask=masks.streaming(4, 128)).backend == "blocksparse"
    dense = explain(q, q, q, mask=masks.causal())  # 16 x 16 blocks, 136 of them allowed
    assert dense.backend == "sdpa"
    assert dense.passed_over["blocksparse"] == (
        "the mask allows 53% of the 128x128 blocks, more than 50%: dense SDPA is faster"
    )
    short = explain(q[..., :512, :], q[..., :512, :], q[..., :512, :], mask=masks.packed([128] * 4))
    assert short.backend == "sdpa"
    assert short.passed_over["blocksparse"] == "Tq=512, Tk=512: shorter than 1024, where dense SDPA is as fast"
    weights = explain(q, q, q, mask=masks.packed([512] * 4), need_weights=True)
    assert weights.backend == "reference"  # SDPA and the blocks cannot return weights


def test_block_size_is_a_power_of_two_within_bounds():
    assert [blocksparse.block_size(t, t) for t in (1, 37, 200, 1024, 8192)] == [8, 8, 16, 64, 128]


def test_normalizers_other_than_softmax_stay_on_the_reference():
    q = torch.randn(1, 2, 2048, 16)
    choice = explain(q, q, q, mask=masks.packed([512] * 4), normalize=NORMALIZERS["topk"](k=4))
    assert choice.backend != "blocksparse"
