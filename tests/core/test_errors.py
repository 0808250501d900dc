"""Bad input raises AttentionError naming the argument, the shape it got and what was expected."""

import re

import pytest
import torch

import attnkit
from attnkit import NORMALIZERS, AttentionError, MultiHeadAttention, masks


def raises(message):
    return pytest.raises(AttentionError, match=re.escape(message))


def qkv(tq=3, tk=5, dq=8, dk=8, dv=4):
    return torch.randn(2, tq, dq), torch.randn(2, tk, dk), torch.randn(2, tk, dv)


def test_error_is_a_value_error():
    assert issubclass(AttentionError, ValueError)


def test_mismatched_query_and_key_dims_for_dot():
    q, k, v = qkv(dk=7)
    with raises("score 'dot' needs query and key of the same last dim, got query (2, 3, 8) and key (2, 5, 7)"):
        attnkit.attention(q, k, v, score="dot")


def test_value_length_must_match_keys():
    q, k, _ = qkv()
    with raises("value has shape (2, 4, 4) but expected (..., Tk=5, Dv) to match key (2, 5, 8)"):
        attnkit.attention(q, k, torch.randn(2, 4, 4))


def test_query_must_have_two_dims():
    _, k, v = qkv()
    with raises("query has shape (8,) but expected (..., Tq, Dq)"):
        attnkit.attention(torch.randn(8), k, v)


def test_unbroadcastable_batch_dims():
    q, k, v = qkv()
    with raises("leading (batch) dims do not broadcast: query (3, 3, 8), key (2, 5, 8), value (2, 5, 4)"):
        attnkit.attention(torch.randn(3, 3, 8), k, v)


def test_wrong_mask_shape():
    q, k, v = qkv()
    with raises("mask has shape (3, 4) but expected a shape broadcastable to the scores' shape (2, 3, 5) (..., Tq, Tk)"):
        attnkit.attention(q, k, v, mask=torch.ones(3, 4, dtype=torch.bool))


def test_wrong_mask_dtype():
    q, k, v = qkv()
    with raises("mask has dtype torch.int64 but expected torch.bool (True = may attend) or a floating dtype"):
        attnkit.attention(q, k, v, mask=torch.ones(3, 5, dtype=torch.long))


def test_key_padding_mask_shape_and_dtype():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 5, 8)
    with raises("key padding mask has shape (2, 4) but expected (B, Tk) = (2, 5) for scores of shape (2, 2, 5, 5)"):
        mha(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with raises("key_padding_mask has dtype torch.int64 but expected torch.bool (True = padding) or a floating dtype"):
        mha(x, key_padding_mask=torch.zeros(2, 5, dtype=torch.int64))
    with raises("key_padding_mask has shape (2, 4) but expected (B, Tk) = (2, 5)"):
        mha(x, key_padding_mask=torch.zeros(2, 4))  # float: added to the scores, as torch's


def test_unknown_score_and_normalizer_names():
    q, k, v = qkv()
    with raises("score='bahdanau' is unknown; expected one of ['additive', 'concat', 'cosine', 'dot', 'general', 'scaled_dot', 'scaled_general']"):
        attnkit.attention(q, k, v, score="bahdanau")
    with raises("normalize='argmax' is unknown; expected one of ['entmax15', 'gumbel', 'hard', 'sample', 'softmax', 'sparsemax', 'topk']"):
        attnkit.attention(q, k, v, normalize="argmax")
    with raises("score='nope' is unknown"):
        MultiHeadAttention(8, 2, score="nope")


def test_k_larger_than_number_of_keys():
    q, k, v = qkv(tk=5)
    with raises("topk: k=9 is larger than the number of keys Tk=5 (scores of shape (2, 3, 5)); expected 1 <= k <= Tk"):
        attnkit.attention(q, k, v, normalize=NORMALIZERS["topk"](k=9))
    with raises("sample: k must be an int >= 1, got -2"):
        NORMALIZERS["sample"](k=-2)
    with raises("topk: k must be an int >= 1, got 0"):
        NORMALIZERS["topk"](k=0)


def test_negative_window():
    q, k, v = qkv()
    with raises("window left size must be an int in 0..2**62, got -1 (window=(left, right)"):
        attnkit.attention(q, k, v, window=(-1, 2))
    with raises("window right size must be an int in 0..2**62, got -3"):
        masks.sliding_window(1, -3)
    with raises("window must be an int D or a pair (left, right), got (1, 2, 3)"):
        attnkit.attention(q, k, v, window=(1, 2, 3))


def test_missing_or_misshapen_score_parameters():
    q, k, v = qkv(dk=6)
    with raises("score 'general' needs parameter 'W' but params has keys []"):
        attnkit.attention(q, k, v, score="general")
    with raises("score 'general': params['W'] has shape (6, 8) but expected (..., 8, 6) for query (2, 3, 8) and key (2, 5, 6)"):
        attnkit.attention(q, k, v, score="general", score_params={"W": torch.randn(6, 8)})
    bad = {"W_q": torch.randn(8, 3), "W_k": torch.randn(6, 4), "v": torch.randn(3)}
    with raises("score 'additive': params['W_k'] has shape (6, 4) but expected (..., 6, 3)"):
        attnkit.attention(q, k, v, score="additive", score_params=bad)


def test_module_options_rejected_at_construction():
    with raises("num_heads=3 must divide embed_dim=8"):
        MultiHeadAttention(8, 3)
    with raises("window (region='local-p': D, sigma = D/2) must be an int in 1..2**62, got (1, 2) (tuple)"):
        attnkit.Attention(8, region="local-p", window=(1, 2))
    with raises("window is set but region='global'; use region='local-m' for a sliding window"):
        attnkit.Attention(8, window=3)
    with raises("score 'dot' needs query_dim == key_dim, got 8 and 4"):
        attnkit.Attention(8, 4, score="dot")
    with raises("score has 1 entries but expected one per head, num_heads=2"):
        MultiHeadAttention(8, 2, score=["dot"])
    with raises("dropout must be a number in [0, 1), got 1.5"):
        MultiHeadAttention(8, 2, dropout=1.5)


def test_module_input_shapes():
    mha = MultiHeadAttention(8, 2, kdim=6)
    with raises("key has shape (2, 5, 8) but expected (B, T, 6) (batch first)"):
        mha(torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    with raises("lengths has shape (2, 2) and dtype torch.int64 but expected an integer tensor of shape (B,)"):
        masks.padding(torch.ones(2, 2, dtype=torch.long))


def test_local_p_needs_symmetric_window_and_centre_shape():
    q, k, v = qkv()
    with raises("centre (local-p) needs a symmetric window D, got window=(1, 2)"):
        attnkit.attention(q, k, v, window=(1, 2), centre=torch.zeros(2, 3))
    with raises("centre has shape (2, 4) but expected (..., Tq) = (2, 3)"):
        attnkit.attention(q, k, v, window=2, centre=torch.zeros(2, 4))
