"""Masks: every rule checked against a loop over (i, j), polarity conversions, composition."""

import pytest
import torch

import attnkit
from attnkit import AttentionError, masks


def _by_loop(tq, tk, rule):
    return torch.tensor([[rule(i, j) for j in range(tk)] for i in range(tq)])


@pytest.mark.parametrize("tq,tk", [(1, 1), (4, 4), (3, 6), (6, 3)])
@pytest.mark.parametrize("offset", [0, 2, -1])
def test_causal_and_window_match_their_rules(tq, tk, offset):
    assert masks.causal(offset).materialize((tq, tk)).equal(_by_loop(tq, tk, lambda i, j: j <= i + offset))
    want = _by_loop(tq, tk, lambda i, j: i + offset - 2 <= j <= i + offset + 1)
    assert masks.sliding_window(2, 1, offset).materialize((tq, tk)).equal(want)


def test_causal_matches_sdpa_is_causal_alignment():
    q, k, v = torch.randn(1, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 2)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    got, _ = attnkit.attention(q, k, v, mask=masks.causal())
    torch.testing.assert_close(got, want)


def test_padding_from_lengths_and_pytorch_key_padding_mask_agree():
    lengths = torch.tensor([3, 1, 4])
    ours = masks.padding(lengths, max_len=4).valid
    assert ours.equal(torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]).bool())
    torch_style = ~ours  # PyTorch: True = padding
    assert masks.from_key_padding(torch_style).valid.equal(ours)
    full = masks.padding(lengths).materialize((3, 2, 5, 4))  # (B, H, Tq, Tk) -> (B, 1, 1, Tk)
    assert full.shape == (3, 1, 1, 4) and full[:, 0, 0].equal(ours)


def test_torch_attn_mask_conversion_flips_bool_and_keeps_float():
    blocked = torch.tensor([[False, True], [False, False]])
    assert masks.from_torch_attn_mask(blocked).materialize((2, 2)).equal(~blocked)
    additive = torch.tensor([[0.0, float("-inf")], [0.5, 0.0]])
    m = masks.from_torch_attn_mask(additive)
    assert m.materialize((2, 2)).equal(torch.tensor([[True, False], [True, True]]))
    assert m.bias((2, 2)).equal(torch.tensor([[0.0, 0.0], [0.5, 0.0]]))


def test_combinators_and_or_flatten_print_and_ignore_none():
    c, w = masks.causal(), masks.sliding_window(1, 1)
    both = masks.and_masks(c, None, w)
    assert repr(both) == "And(Causal(offset=0), SlidingWindow(left=1, right=1, offset=0))"
    assert both.materialize((4, 4)).equal(c.materialize((4, 4)) & w.materialize((4, 4)))
    either = masks.or_masks(c, w)
    assert either.materialize((4, 4)).equal(c.materialize((4, 4)) | w.materialize((4, 4)))
    assert masks.and_masks(masks.and_masks(c, w), c).parts == (c, w, c)
    assert masks.and_masks(None, None) is None and masks.and_masks(c) is c


def test_float_masks_add_their_biases_under_and():
    a = torch.tensor([[0.0, 1.0], [float("-inf"), 0.0]])
    b = torch.tensor([[2.0, float("-inf")], [0.0, 0.0]])
    m = masks.and_masks(a, b)
    assert m.materialize((2, 2)).equal(torch.tensor([[True, False], [False, True]]))
    assert m.bias((2, 2)).equal(torch.tensor([[2.0, 1.0], [0.0, 0.0]]))


def test_float_mask_shifts_scores_like_adding_it():
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 3)
    bias = torch.randn(3, 5)
    got, w = attnkit.attention(q, k, v, mask=bias, need_weights=True)
    want = torch.softmax(q @ k.transpose(1, 2) / 2 + bias, dim=-1)
    torch.testing.assert_close(w, want)


def test_or_rejects_float_masks():
    with pytest.raises(AttentionError, match="or_masks cannot combine additive float masks"):
        masks.or_masks(masks.causal(), torch.zeros(2, 2))
