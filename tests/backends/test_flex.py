"""FlexAttention: every mask's mask_mod agrees with its rule; compiled runs agree with the reference."""

import re

import pytest
import torch
from tolerances import TOLERANCES

import attnkit
from attnkit import AttentionError, masks
from attnkit.backends import explain
from attnkit.backends.flex import mask_mod

B, TQ, TK = 2, 11, 13
LENGTHS = torch.tensor([13, 6])
LAYOUT = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]]).bool()  # ceil(11/4) x ceil(13/4)

MASKS = {
    "causal": masks.causal(),
    "causal+2": masks.causal(2),
    "window": masks.sliding_window(3, 1),
    "window offset": masks.sliding_window(2, 2, offset=4),
    "padding": masks.padding(LENGTHS, max_len=TK),
    "block sparse": masks.block_sparse(LAYOUT, 4),
    "and": masks.causal() & masks.sliding_window(4, 0) & masks.padding(LENGTHS, max_len=TK),
    "or": masks.or_masks(masks.sliding_window(1, 1), masks.block_sparse(LAYOUT, 4)),
}


@pytest.mark.parametrize("name", list(MASKS))
def test_mask_mod_agrees_with_materialize(name):
    mask = MASKS[name]
    b = torch.arange(B)[:, None, None, None]
    q = torch.arange(TQ)[None, None, :, None]
    kv = torch.arange(TK)[None, None, None, :]
    got = mask_mod(mask)(b, torch.zeros_like(b), q, kv).expand(B, 1, TQ, TK)
    want = mask.materialize((B, 1, TQ, TK)).expand(B, 1, TQ, TK)
    assert got.equal(want)


def test_dense_masks_have_no_mask_mod_and_flex_says_why():
    assert mask_mod(masks.as_mask(torch.ones(3, 3, dtype=torch.bool))) is None
    q = torch.randn(1, 3, 8)
    reason = explain(q, q, q, mask=torch.ones(3, 3, dtype=torch.bool)).passed_over["flex"]
    assert reason == "FlexAttention pays off for structured masks (causal, window, padding, block-sparse) only"


def test_flex_on_cpu_needs_no_grad_and_is_never_chosen_automatically():
    q = torch.randn(1, 8, 16, requires_grad=True)
    choice = explain(q, q, q, mask=masks.causal())
    assert choice.passed_over["flex"] == "FlexAttention has no backward on CPU"
    with torch.no_grad():
        choice = explain(q, q, q, mask=masks.causal())
    assert choice.passed_over["flex"] == "on CPU each new shape costs a compilation (~20 s); force backend='flex' to use it"
    with pytest.raises(AttentionError, match=re.escape("backend='flex' cannot run this call: FlexAttention has no backward on CPU")):
        attnkit.attention(q, q, q, mask=masks.causal(), backend="flex")


@pytest.mark.parametrize("name", ["and", "block sparse"])
@pytest.mark.parametrize("score", ["scaled_dot", "general"])
def test_compiled_flex_matches_reference(name, score):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, 2, t, 16, generator=gen) for t in (TQ, TK, TK))
    params = {"W": torch.randn(16, 16, generator=gen) / 4} if score == "general" else {}
    kwargs = {"mask": MASKS[name], "score": score, "score_params": params}
    with torch.no_grad():
        got = attnkit.attention(q, k, v, backend="flex", **kwargs).output
        want = attnkit.attention(q, k, v, backend="reference", **kwargs).output
    atol, rtol = TOLERANCES[("flex", torch.float32)]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def test_flex_refuses_float64_on_cpu():
    """Its compiled CPU kernel has no float64 (torch.compile raised an InductorError): never
    chosen for such a call, and forcing it says why."""
    q = torch.randn(1, 8, 16, dtype=torch.float64)
    reason = "FlexAttention on CPU takes float32, float16 or bfloat16, got dtype torch.float64 on device cpu"
    with torch.no_grad():
        assert explain(q, q, q, mask=masks.causal()).passed_over["flex"] == reason
        with pytest.raises(AttentionError, match=re.escape(f"backend='flex' cannot run this call: {reason}")):
            attnkit.attention(q, q, q, mask=masks.causal(), backend="flex")
