"""Inputs a fuzz run found accepted with a wrong result (ignored names, NaN rows, flags read as
truthy) or failing with a raw error: each now raises one AttentionError that names the argument,
what it got and what was expected (issue 23).

Shape legend: B batch, H heads, Tq query positions, Tk key positions, D feature dim.
"""

import re

import pytest
import torch

import attnkit
from attnkit import NORMALIZERS, SCORES, AttentionError, MultiHeadAttention

F64 = torch.float64


def raises(message):
    return pytest.raises(AttentionError, match=re.escape(message))


def qkv(dtype=torch.float32, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, t, d, generator=gen, dtype=dtype) for t in (3, 5, 5))  # (B, T, D)


# --- score parameters: names, types, values ------------------------------------------------------


@pytest.mark.parametrize(
    "score, params, message",
    [
        (
            "cosine",
            {"temprature": torch.tensor(2.0)},
            "score 'cosine' has no parameter 'temprature' (score_params has keys ['temprature']); "
            "its parameters are ['temperature']",
        ),
        (  # OpenNMT's mlp score has a bias b; ours has none
            "additive",
            {"W_q": torch.randn(8, 6), "W_k": torch.randn(8, 6), "v": torch.randn(6), "b": torch.randn(6)},
            "score 'additive' has no parameter 'b' (score_params has keys ['W_k', 'W_q', 'b', 'v']); "
            "its parameters are ['W_k', 'W_q', 'v']",
        ),
        (
            "dot",
            {"W": torch.randn(8, 8), "w": torch.randn(16)},
            "score 'dot' has no parameters 'W', 'w' (score_params has keys ['W', 'w']); it takes none",
        ),
    ],
)
def test_unknown_score_parameter_names_are_rejected(score, params, message):
    q, k, v = qkv()
    with raises(message):
        attnkit.attention(q, k, v, score=score, score_params=params)
    with raises(message):  # the score called directly checks the same way
        SCORES[score](q, k, params)


def test_score_parameter_must_be_a_tensor():
    q, k, v = qkv()
    with raises("score 'general': params['W'] must be a torch.Tensor of shape (..., 8, 8), got list"):
        attnkit.attention(q, k, v, score="general", score_params={"W": [[1.0] * 8] * 8})
    with raises("score 'additive': params['W_q'] must be a torch.Tensor of shape (..., 8, A), got float"):
        params = {"W_q": 1.0, "W_k": torch.ones(8, 2), "v": torch.ones(2)}
        attnkit.attention(q, k, v, score="additive", score_params=params)
    with raises("score 'cosine': params['temperature'] must be a torch.Tensor of shape (...), got float"):
        attnkit.attention(q, k, v, score="cosine", score_params={"temperature": 0.5})


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), 1e-310])
def test_cosine_temperature_must_be_finite_and_positive(bad):
    """The scores are divided by τ: 0 (or a subnormal τ) overflows them to inf and the softmax to NaN."""
    q, k, v = qkv(F64)
    message = (
        f"score 'cosine': params['temperature'] must be finite and > 0 (at least 2.23e-308, the smallest "
        f"normal torch.float64: the scores are divided by it), got {bad!r}"
    )
    with raises(message):
        attnkit.attention(q, k, v, score="cosine", score_params={"temperature": torch.tensor(bad, dtype=F64)})
    # a learnable per-head temperature, one head gone bad: named the same way
    tau = torch.tensor([0.5, bad, 2.0], dtype=F64, requires_grad=True)  # (H,)
    q4, k4, v4 = (t[:, None].expand(2, 3, *t.shape[1:]) for t in (q, k, v))  # (B, H, T, D)
    with raises(message):
        attnkit.attention(q4, k4, v4, score="cosine", score_params={"temperature": tau})
    mha = MultiHeadAttention(8, 2, score="cosine").double()
    with torch.no_grad():
        mha.score_params["cosine"]["temperature"][1] = bad
    with raises(message):
        mha(q)


def test_integer_cosine_temperature_meets_the_dtype_check():
    q, k, v = qkv()
    with raises("score_params['temperature'] has dtype torch.int64 but expected a real floating dtype"):
        attnkit.attention(q, k, v, score="cosine", score_params={"temperature": torch.tensor(0)})


def test_cosine_temperature_that_is_fine_still_works():
    q, k, v = qkv(F64)
    tau = torch.tensor(1e-3, dtype=F64)
    out, w = attnkit.attention(q, k, v, score="cosine", score_params={"temperature": tau}, need_weights=True)
    assert torch.isfinite(out).all() and torch.allclose(w.sum(-1), torch.ones(2, 3, dtype=F64))


# --- scale ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "score, dtype",
    [
        ("scaled_dot", F64),
        ("dot", F64),
        ("general", F64),
        ("concat", F64),
        ("additive", F64),
        ("cosine", F64),
        ("scaled_dot", torch.float32),
        ("cosine", torch.float32),
    ],
)
def test_scale_that_overflows_the_scores_is_rejected(score, dtype):
    """scale=1e308 made NaN rows: the scaled query (or parameter) overflowed to inf."""
    q, k, v = qkv(dtype)
    q = q * 10  # entries past 1.8, so q · 1e308 overflows float64
    params = SCORES[score].init_params(8, 8, 4)  # cosine: none, temperature 1 by default
    params = {} if score == "cosine" else {n: p.to(dtype) * 100 for n, p in params.items()}
    with pytest.raises(AttentionError, match=r"^scale=1e\+308 overflows the scores"):
        attnkit.attention(q, k, v, score=score, score_params=params, scale=1e308)


def test_a_large_scale_that_fits_still_works():
    """scale is an inverse temperature: a huge one that does not overflow gives hard attention."""
    q, k, v = qkv(F64)
    out, w = attnkit.attention(q, k, v, score="dot", scale=1e300, need_weights=True)
    hard = attnkit.attention(q, k, v, score="dot", normalize="hard", need_weights=True)
    assert torch.equal(w, hard.weights) and torch.allclose(out, hard.output)


def test_scale_too_large_for_a_float():
    q, k, v = qkv()
    with raises(
        "scale must be a finite number > 0 (it multiplies the scores), got an int of 2001 bits, too large for a float"
    ):
        attnkit.attention(q, k, v, scale=2**2000)


# --- boolean flags -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["no", 1, None, torch.tensor(True)])
def test_flags_of_attention_must_be_bools(bad):
    """``"no"`` was truthy: enable_gqa="no" turned grouped-query attention on."""
    got = f"{bad!r} ({type(bad).__name__})"
    q, k, v = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)  # (B, H, T, D), Hkv=2
    with raises(f"enable_gqa must be a bool (True or False), got {got}"):
        attnkit.attention(q, k, v, enable_gqa=bad)
    with raises(f"need_weights must be a bool (True or False), got {got}"):
        attnkit.attention(q, q, q, need_weights=bad)
    with raises(f"need_weights must be a bool (True or False), got {got}"):
        attnkit.Attention(8)(q[0], need_weights=bad)
    with raises(f"gumbel: hard must be a bool (True or False), got {got}"):
        NORMALIZERS["gumbel"](hard=bad)


@pytest.mark.parametrize("flag", ["bias", "causal", "batch_first", "add_bias_kv", "add_zero_attn"])
@pytest.mark.parametrize("bad", ["no", 0, 1.0])
def test_multihead_constructor_flags_must_be_bools(flag, bad):
    with raises(f"{flag} must be a bool (True or False), got {bad!r} ({type(bad).__name__})"):
        MultiHeadAttention(8, 2, **{flag: bad})


@pytest.mark.parametrize("flag", ["need_weights", "is_causal", "average_attn_weights", "average_weights"])
def test_multihead_forward_flags_must_be_bools(flag):
    mha, x = MultiHeadAttention(8, 2), torch.randn(2, 3, 8)
    with raises(f"{flag} must be a bool (True or False), got 'no' (str)"):
        mha(x, x, x, **{flag: "no"})


# --- raw errors that are now AttentionErrors -----------------------------------------------------


def test_local_p_centre_must_be_a_real_number_tensor():
    q, k, v = qkv()
    with raises(
        "centre has dtype torch.bool but expected a floating or integer tensor of positions p_t (..., Tq)"
    ):
        attnkit.attention(q, k, v, window=1, centre=torch.ones(2, 3, dtype=torch.bool))
    with raises("centre must be a torch.Tensor of positions p_t (..., Tq), got list"):
        attnkit.attention(q, k, v, window=1, centre=[[0.0] * 3] * 2)
    out = attnkit.attention(q, k, v, window=1, centre=torch.ones(2, 3, dtype=torch.long)).output  # integer: fine
    assert torch.isfinite(out).all()


def test_meta_tensors_are_rejected():
    q, k, v = qkv()
    with raises("query is on the meta device, which holds no data (shape (2, 3, 8), dtype torch.float32)"):
        attnkit.attention(q.to("meta"), k.to("meta"), v.to("meta"))
    with raises("value is on the meta device, which holds no data (shape (2, 5, 8), dtype torch.float32)"):
        attnkit.attention(q, k, v.to("meta"))
