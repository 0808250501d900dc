"""Drop-in with PyTorch: nn.MultiheadAttention's forward arguments and constructor options, SDPA's
``scale`` and ``enable_gqa``, torch.export / torch.compile, all checked against torch in float64."""

import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnkit
from attnkit import AttentionError, MultiHeadAttention, masks
from attnkit.backends import explain
from attnkit.bench.cases import window_allowed, window_mask
from attnkit.core.functional import AttentionResult

F64 = torch.float64
B, T, D, H = 2, 5, 8, 2  # B == H: a mask read per head instead of per example would go unnoticed


def raises(message):
    return pytest.raises(AttentionError, match=re.escape(message))


def torch_mha(**kw):
    torch.manual_seed(0)
    return nn.MultiheadAttention(D, H, dtype=F64, **{"batch_first": True, **kw}).eval()


def close(got, want):
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


# --- item 2: a 3-D Mask object is (B, Tq, Tk), like a 3-D tensor ---------------------------------


def test_3d_mask_object_from_the_converter_is_per_example_as_torch():
    ref = torch_mha()
    ours = MultiHeadAttention.from_torch(ref).eval()
    x = torch.randn(B, T, D, dtype=F64)
    blocked = torch.rand(B, T, T, generator=torch.Generator().manual_seed(1)) > 0.6  # (B, Tq, Tk), True = blocked
    blocked[:, torch.arange(T), torch.arange(T)] = False  # every query keeps a key
    want_out, want_w = ref(x, x, x, attn_mask=blocked.repeat_interleave(H, dim=0), average_attn_weights=False)
    for mask in (masks.from_torch_attn_mask(blocked), ~blocked, masks.from_torch_attn_mask(blocked) & masks.causal()):
        out, w = ours(x, mask=mask, need_weights=True, average_weights=False)
        if isinstance(mask, masks.And):  # composed with causal: compare against the same on torch's side
            both = blocked | torch.ones(T, T, dtype=torch.bool).triu(1)
            want_out, want_w = ref(x, x, x, attn_mask=both.repeat_interleave(H, 0), average_attn_weights=False)
        close(out, want_out)
        close(w, want_w)


# --- nn.MultiheadAttention's forward arguments, every combination --------------------------------


def _masks(kind: str, tq: int, tk: int, dtype_float: bool):
    gen = torch.Generator().manual_seed(2)
    if kind == "none":
        return None
    if kind == "causal":
        blocked = torch.ones(tq, tk, dtype=torch.bool).triu(1)
    else:
        shape = (tq, tk) if kind == "2d" else (B * H, tq, tk)
        blocked = torch.rand(shape, generator=gen) > 0.7
        blocked[..., torch.arange(tq), torch.arange(tq)] = False  # keep the diagonal: no empty row
    if not dtype_float:
        return blocked
    if kind == "causal":  # nn.Transformer.generate_square_subsequent_mask's form
        return torch.zeros(tq, tk, dtype=F64).masked_fill(blocked, float("-inf"))
    return torch.randn(blocked.shape, generator=gen, dtype=F64).masked_fill(blocked, float("-inf"))


def _padding(kind: str):
    if kind == "none":
        return None
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, 3:] = True  # example 1 has 3 real keys, and query 0 always keeps key 0
    if kind == "bool":
        return pad
    return torch.randn(B, T, dtype=F64, generator=torch.Generator().manual_seed(3)).masked_fill(pad, float("-inf"))


COMBOS = [
    (am, amf, kpm, causal)
    for am, amf, kpm, causal in itertools.product(
        ["none", "2d", "3d", "causal"], [False, True], ["none", "bool", "float"], [False, True]
    )
    if not (am == "none" and amf) and not (causal and am != "causal")
]


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask:UserWarning")
@pytest.mark.parametrize("attn_kind, attn_float, kpm_kind, is_causal", COMBOS)
def test_forward_arguments_equal_torch(attn_kind, attn_float, kpm_kind, is_causal):
    ref = torch_mha()
    ours = MultiHeadAttention.from_torch(ref).eval()
    x = torch.randn(B, T, D, dtype=F64)
    attn_mask, kpm = _masks(attn_kind, T, T, attn_float), _padding(kpm_kind)
    for need_weights, average in itertools.product([True, False], [True, False]):
        kw = {"key_padding_mask": kpm, "need_weights": need_weights, "attn_mask": attn_mask}
        kw.update(average_attn_weights=average, is_causal=is_causal)
        with torch.no_grad():
            want_out, want_w = ref(x, x, x, **kw)
            got_out, got_w = ours(x, x, x, **kw)
        close(got_out, want_out)
        if need_weights:
            close(got_w, want_w)
        else:
            assert got_w is None


def test_positional_order_is_torchs():
    ref = torch_mha(kdim=6, vdim=3)
    ours = MultiHeadAttention.from_torch(ref).eval()
    q, k, v = torch.randn(B, 4, D, dtype=F64), torch.randn(B, T, 6, dtype=F64), torch.randn(B, T, 3, dtype=F64)
    kpm, am = _padding("bool"), _masks("2d", 4, T, False)
    want = ref(q, k, v, kpm, True, am, False, False)
    got = ours(q, k, v, kpm, True, am, False, False)
    close(got[0], want[0])
    close(got[1], want[1])


def test_average_weights_is_an_alias_and_both_names_must_agree():
    ours = MultiHeadAttention(D, H).double()
    x = torch.randn(B, T, D, dtype=F64)
    assert ours(x, need_weights=True, average_weights=False).weights.shape == (B, H, T, T)
    assert ours(x, need_weights=True, average_attn_weights=False).weights.shape == (B, H, T, T)
    assert ours(x, need_weights=True).weights.shape == (B, T, T)
    with raises("average_attn_weights=True and average_weights=False disagree"):
        ours(x, need_weights=True, average_attn_weights=True, average_weights=False)


def test_mask_and_attn_mask_together_is_an_error_that_says_why():
    ours = MultiHeadAttention(D, H)
    x = torch.randn(B, T, D)
    blocked = torch.zeros(T, T, dtype=torch.bool)
    with raises(
        "pass mask= (attnkit's polarity: True = may attend) or attn_mask= (nn.MultiheadAttention's: True = blocked"
    ):
        ours(x, mask=~blocked, attn_mask=blocked)


def test_is_causal_needs_attn_mask_and_checks_it_like_a_hint():
    ours = MultiHeadAttention(D, H)
    x = torch.randn(B, T, D)
    with raises("is_causal=True is a hint that attn_mask is the causal mask"):
        ours(x, is_causal=True)
    with raises("is_causal=True says attn_mask (5, 5) is the causal mask"):
        ours(x, attn_mask=torch.zeros(T, T, dtype=torch.bool), is_causal=True)


def test_attn_mask_of_a_wrong_shape_names_torchs_shapes():
    with raises("attn_mask has shape (3, 5, 5) but expected (Tq, Tk) = (5, 5) or (B·H, Tq, Tk) = (4, 5, 5)"):
        MultiHeadAttention(D, H)(torch.randn(B, T, D), attn_mask=torch.zeros(3, T, T, dtype=torch.bool))


# --- constructor options: batch_first, add_bias_kv, add_zero_attn --------------------------------


@pytest.mark.parametrize("batch_first, bias_kv, zero_attn", list(itertools.product([True, False], repeat=3)))
def test_from_torch_carries_batch_first_bias_kv_and_zero_attn(batch_first, bias_kv, zero_attn):
    ref = torch_mha(batch_first=batch_first, add_bias_kv=bias_kv, add_zero_attn=zero_attn)
    ours = MultiHeadAttention.from_torch(ref).eval()
    assert ours.batch_first is batch_first
    q, kv = torch.randn(B, 4, D, dtype=F64), torch.randn(B, T, D, dtype=F64)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)  # (T, B, D)
    kpm, am = _padding("bool"), _masks("2d", 4, T, False)
    for need_weights, kw in itertools.product([True, False], [{}, {"key_padding_mask": kpm, "attn_mask": am}]):
        with torch.no_grad():
            want = ref(q, kv, kv, need_weights=need_weights, average_attn_weights=False, **kw)
            got = ours(q, kv, kv, need_weights=need_weights, average_attn_weights=False, **kw)
        close(got[0], want[0])
        if need_weights:
            close(got[1], want[1])  # (B, H, Tq, Tk + extra keys), batch-first as torch's


def test_batch_first_defaults_to_true():
    assert MultiHeadAttention(D, H).batch_first is True
    with raises("query has shape (5, 8) but expected (T, B, 8) (batch_first=False)"):
        MultiHeadAttention(D, H, batch_first=False)(torch.randn(T, D))


# --- attention(..., scale=) ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "reference", "sdpa"])
@pytest.mark.parametrize("score", ["dot", "scaled_dot"])
def test_scale_is_sdpas_for_dot_scores(score, backend):
    q, k, v = (torch.randn(B, H, n, 4, dtype=F64) for n in (3, T, T))
    allowed = torch.rand(3, T) > 0.3
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=0.37)
    got = attnkit.attention(q, k, v, score=score, mask=allowed, scale=0.37, backend=backend).output
    close(got * allowed.any(-1, keepdim=True), want * allowed.any(-1, keepdim=True))


@pytest.mark.parametrize("score", ["general", "cosine", "concat", "additive"])
def test_scale_multiplies_every_other_score(score):
    q, k, v = torch.randn(B, 3, 4, dtype=F64), torch.randn(B, T, 4, dtype=F64), torch.randn(B, T, 2, dtype=F64)
    fn = attnkit.SCORES[score]
    params = {n: p.to(F64) for n, p in fn.init_params(4, 4, 6).items()}
    want_w = torch.softmax(2.5 * fn.fn(q, k, params), dim=-1)
    for backend in ("auto", "reference"):
        out, w = attnkit.attention(q, k, v, score=score, score_params=params, scale=2.5, need_weights=True)
        close(w, want_w)
        close(out, want_w @ v)
        out = attnkit.attention(q, k, v, score=score, score_params=params, scale=2.5, backend=backend).output
        close(out, want_w @ v)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, "2"])
def test_scale_must_be_a_finite_positive_number(bad):
    q = torch.randn(1, 3, 4)
    with raises("scale must be a finite number > 0 (it multiplies the scores)"):
        attnkit.attention(q, q, q, scale=bad)


# --- grouped-query / multi-query attention -------------------------------------------------------


@pytest.mark.parametrize("hkv", [1, 2, 3])
@pytest.mark.parametrize("backend", ["auto", "reference", "sdpa"])
def test_grouped_query_attention_equals_sdpa_enable_gqa(hkv, backend):
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(B, 6, 3, 4, dtype=F64, generator=gen, requires_grad=True)
    k = torch.randn(B, hkv, T, 4, dtype=F64, generator=gen, requires_grad=True)
    v = torch.randn(B, hkv, T, 2, dtype=F64, generator=gen, requires_grad=True)
    allowed = torch.rand(3, T, generator=gen) > 0.3
    allowed[:, 0] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
    got = attnkit.attention(q, k, v, mask=allowed, enable_gqa=True, backend=backend).output
    close(got, want)
    grads = torch.autograd.grad(got.sum(), (q, k, v))
    for g, w in zip(grads, torch.autograd.grad(want.sum(), (q, k, v))):
        close(g, w)
    weights = attnkit.attention(q, k, v, mask=allowed, enable_gqa=True, need_weights=True).weights
    close(weights @ v.repeat_interleave(6 // hkv, dim=1), want)


def test_grouped_query_attention_runs_on_sdpa():
    q, k = torch.randn(B, 4, 3, 8), torch.randn(B, 2, T, 8)
    assert explain(q, k, k, enable_gqa=True).backend == "sdpa"


def test_grouped_query_heads_must_divide():
    q, k = torch.randn(B, 4, 3, 8), torch.randn(B, 3, T, 8)
    with raises("enable_gqa=True needs key and value with the same number of heads Hkv (dim -3) that divides"):
        attnkit.attention(q, k, k, enable_gqa=True)
    with raises("pass enable_gqa=True"):
        attnkit.attention(q, torch.randn(B, 2, T, 8), torch.randn(B, 2, T, 8))


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_multihead_kv_heads_equals_sdpa_with_its_projections(kv_heads):
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, 4, kv_heads=kv_heads).double().eval()
    assert mha.k_proj.out_features == mha.v_proj.out_features == kv_heads * 2
    x = torch.randn(B, T, D, dtype=F64)
    q = mha.q_proj(x).view(B, T, 4, 2).transpose(1, 2)  # (B, H, T, Dh)
    k = mha.k_proj(x).view(B, T, kv_heads, 2).transpose(1, 2)  # (B, Hkv, T, Dh)
    v = mha.v_proj(x).view(B, T, kv_heads, 2).transpose(1, 2)
    attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (B, H, T, Dh)
    want = mha.out_proj(attn.transpose(1, 2).reshape(B, T, D))
    close(mha(x, mask=masks.causal()).output, want)
    close(mha(x, mask=masks.causal(), need_weights=True).output, want)
    with raises("kv_heads=3 must divide num_heads=4"):
        MultiHeadAttention(D, 4, kv_heads=3)


# --- torch.export and torch.compile(fullgraph=True) ----------------------------------------------


class _Wrap(nn.Module):
    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, x, padding):
        return self.mha(x, key_padding_mask=padding, need_weights=True)


def _module_and_inputs():
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, causal=True).eval()
    x = torch.randn(B, T, D)
    padding = torch.zeros(B, T, dtype=torch.bool)
    padding[1, 3:] = True
    return mha, x, padding


def test_torch_export_equals_eager():
    mha, x, padding = _module_and_inputs()
    want = mha(x, key_padding_mask=padding, need_weights=True)
    program = torch.export.export(_Wrap(mha), (x, padding))
    got = program.module()(x, padding)
    assert isinstance(got, AttentionResult)
    torch.testing.assert_close(got.output, want.output)
    torch.testing.assert_close(got.weights, want.weights)
    plain = torch.export.export(mha, (x,))  # no weights: the SDPA path
    torch.testing.assert_close(plain.module()(x).output, mha(x).output)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph(backend):
    mha, x, padding = _module_and_inputs()
    compiled = torch.compile(_Wrap(mha), fullgraph=True, backend=backend)
    got, want = compiled(x, padding), mha(x, key_padding_mask=padding, need_weights=True)
    torch.testing.assert_close(got.output, want.output)
    torch.testing.assert_close(got.weights, want.weights)
    logged = torch.compile(lambda q: attnkit.attention(q, q, q).output, fullgraph=True, backend=backend)
    torch.testing.assert_close(logged(x), attnkit.attention(x, x, x).output)


# --- the README's statement about torch on a query with no allowed key ---------------------------


def test_torch_sdpa_gives_zeros_on_a_row_with_no_allowed_key_as_the_readme_says():
    q, k, v = torch.randn(1, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    allowed = torch.ones(3, 5, dtype=torch.bool)
    allowed[1] = False
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    assert bool(out[0, 1].eq(0).all()) and not out.isnan().any()
    ref = torch_mha().train()  # outside the inference fast path, need_weights=False runs on SDPA
    x = torch.randn(1, 3, D, dtype=F64)
    blocked = ~allowed[:, :3]
    assert not ref(x, x, x, attn_mask=blocked, need_weights=False)[0].isnan().any()
    assert ref(x, x, x, attn_mask=blocked, need_weights=True)[0][0, 1].isnan().all()
    assert not MultiHeadAttention.from_torch(ref)(x, attn_mask=blocked, need_weights=True).output.isnan().any()


# --- attnkit bench's window case: every contender attends the same keys -------------------------


def test_window_case_contenders_attend_the_same_keys():
    t, w = 12, 4
    ours = window_mask(w).materialize((t, t))
    assert torch.equal(ours, window_allowed(t, w))
    # local-attention(window_size=w, causal=True, look_backward=1, exact_windowsize=True) blocks
    # key j when j > i or i > j + w (its causal mask with the exact window): keys i-w..i
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    assert torch.equal(ours, ~((i < j) | (i > j + w)))
    assert ours.sum(-1).tolist() == [min(n, w) + 1 for n in range(t)]


def test_window_case_local_attention_equals_dense_when_installed():
    pytest.importorskip("local_attention")
    from attnkit.bench.cases import local_attention

    t, w = 16, 4
    q, k, v = (torch.randn(1, 2, t, 8, dtype=F64) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=window_allowed(t, w))
    close(local_attention(w)(q, k, v), want)
    close(attnkit.attention(q, k, v, mask=window_mask(w)).output, want)


class _Fast(nn.Module):
    """No weights asked for: the call runs on a fast path (SDPA, or a forced backend)."""

    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, x, padding):
        return self.mha(x, key_padding_mask=padding).output


@pytest.mark.parametrize("kwargs", [{}, {"window": 2, "backend": "banded"}], ids=["sdpa", "banded"])
def test_compile_fullgraph_and_export_on_fast_paths_with_a_padding_mask(kwargs):
    """A materialized mask with a fully padded row used to branch on the data (bool(has_key.all()))."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, **kwargs).eval()
    x = torch.randn(B, T, D)
    padding = torch.zeros(B, T, dtype=torch.bool)
    padding[1, 3:] = True
    want = mha(x, key_padding_mask=padding).output
    compiled = torch.compile(_Fast(mha), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, padding), want)
    torch.testing.assert_close(torch.export.export(_Fast(mha), (x, padding)).module()(x, padding), want)
