"""MultiHeadAttention with position methods (RoPE, ALiBi, T5) and soft-capping: step-by-step KVCache
decoding equals the full call (float64), the modules equal their peers (Hugging Face's Llama and
T5 attention, Gemma 2's soft cap) or the functional API head by head, capture() records their
weights, and bad options raise."""

import pytest
import torch
from torch import nn

import attnkit
from attnkit import AttentionError, KVCache, MultiHeadAttention, masks
from attnkit.core.positions import ALiBi, RelativeBias, Rotary

D64 = torch.float64
CONFIGS = {
    "plain": {},
    "gqa": {"kv_heads": 2},
    "mixed-scores": {"score": ["scaled_dot", "dot", "general", "dot"]},
    "bias-kv-zero-attn": {"add_bias_kv": True, "add_zero_attn": True},
}


def make(position, softcap=None, config="plain", **kwargs):
    torch.manual_seed(0)
    options = {"causal": True, "position": position, "softcap": softcap, **CONFIGS[config], **kwargs}
    mha = MultiHeadAttention(16, 4, **options).double().eval()
    if position == "t5":
        with torch.no_grad():
            mha.relative_bias.bias.weight.normal_(0, 2)  # biases that matter next to the scores
    return mha


def x_of(b=2, t=7, seed=1):
    return torch.randn(b, t, 16, generator=torch.Generator().manual_seed(seed), dtype=D64)


def columns(full_w, t, end, extra):
    """The full call's weights of queries t..end-1 over the keys 0..end-1 and the extra keys."""
    return torch.cat([full_w[..., t:end, :end], full_w[..., t:end, full_w.shape[-1] - extra :]], -1)


MODIFIERS = [(p, c) for p in ("rope", "alibi", "t5", None) for c in (None, 2.0) if (p, c) != (None, None)]


def hf_causal(peer, rotary, x):
    """A Hugging Face attention layer's causal call on x (B, T, D) at positions 0 .. T - 1, with its
    own rotary embedding and an additive causal mask: (output, weights)."""
    b, t = x.shape[:2]
    cos, sin = rotary(x, torch.arange(t)[None].expand(b, t))
    blocked = torch.ones(t, t, dtype=torch.bool).triu(1)
    additive = torch.zeros(t, t, dtype=x.dtype).masked_fill(blocked, torch.finfo(x.dtype).min)[None, None]
    return peer(x, (cos, sin), additive)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("position, softcap", MODIFIERS)
def test_steps_with_a_cache_equal_the_full_call(position, softcap, config):
    mha = make(position, softcap, config)
    x = x_of()
    extra = int(mha.bias_k is not None) + int(mha.add_zero_attn)
    full, full_w = mha(x, need_weights=True, average_weights=False)
    cache, t = KVCache(), 0
    for n in (1, 2, 1, 3):  # one position at a time, and chunks
        out, w = mha(x[:, t : t + n], need_weights=True, average_weights=False, cache=cache)
        torch.testing.assert_close(out, full[:, t : t + n], atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(w, columns(full_w, t, t + n, extra), atol=1e-10, rtol=1e-10)
        t += n
    assert cache.length == 7


def test_partial_rope_steps_equal_the_full_call_and_rotate_the_first_features_only():
    mha = make("rope", rope_dim=2, rope_base=100.0)
    assert mha.rotary == Rotary(2, 100.0)
    assert "position='rope', rope_dim=2, rope_base=100.0" in repr(mha)
    x = x_of()
    full = mha(x).output
    cache = KVCache()
    steps = torch.cat([mha(x[:, t : t + 1], cache=cache).output for t in range(7)], 1)
    torch.testing.assert_close(steps, full, atol=1e-10, rtol=1e-10)
    k = mha.k_proj(x).unflatten(-1, (4, 4)).transpose(1, 2)  # (B, H, T, Dh)
    torch.testing.assert_close(cache.k[..., 2:], k[..., 2:], atol=1e-14, rtol=0)  # features past rope_dim unrotated
    torch.testing.assert_close(cache.k, Rotary(2, 100.0).rotate(k), atol=1e-12, rtol=1e-12)


def projections(mha, x):
    q, k, v = (p(x).unflatten(-1, (-1, 4)).transpose(1, 2) for p in (mha.q_proj, mha.k_proj, mha.v_proj))
    return q, k, v  # (B, H | Hkv, T, Dh)


@pytest.mark.parametrize("position", ["rope", "alibi", "t5"])
def test_heads_with_different_scores_get_their_own_positions(position):
    """Mixed scores run head groups apart: each head must keep its ALiBi slope or T5 column."""
    mha = make(position, 3.0, "mixed-scores")
    x = x_of(t=5)
    q, k, v = projections(mha, x)
    if position == "rope":
        q, k = mha.rotary.rotate(q), mha.rotary.rotate(k)
    slopes = attnkit.positions.alibi_slopes(4)
    heads = []
    for h, name in enumerate(mha.head_scores):
        h_params = {p: t[mha.groups[name.name].index(h)] for p, t in mha.score_params[name.name].items()}
        mask = masks.causal()
        if position == "alibi":
            mask = mask & ALiBi(1, slopes=(slopes[h],))
        if position == "t5":
            mask = mask & RelativeBias(mha.relative_bias.bias.weight[:, h : h + 1], 32, 128, False)
        out = attnkit.attention(
            q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], score=name.name, score_params=h_params,
            mask=mask, softcap=3.0,
        ).output  # fmt: skip
        heads.append(out)
    want = mha.out_proj(torch.cat(heads, 1).transpose(1, 2).flatten(2))
    torch.testing.assert_close(mha(x).output, want, atol=1e-12, rtol=1e-12)


def test_rope_module_equals_hugging_face_llama_attention():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=4, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, max_position_embeddings=64,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    peer = llama.LlamaAttention(config, layer_idx=0).double().eval()
    mha = MultiHeadAttention(16, 4, kv_heads=2, bias=False, causal=True, position="rope", rope_base=500.0).double()
    with torch.no_grad():
        for ours, theirs in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"), ("out_proj", "o_proj")):
            getattr(mha, ours).weight.copy_(getattr(peer, theirs).weight)
    x = x_of(t=6)
    want, w_want = hf_causal(peer, llama.LlamaRotaryEmbedding(config), x)
    got, w = mha(x, need_weights=True, average_weights=False)
    # Hugging Face computes the angles in float32, we in float64
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w, w_want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_t5_module_equals_hugging_face_t5_attention_forward_and_backward(causal):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    from transformers import T5Config

    config = T5Config(
        d_model=16, d_kv=4, num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=12,
        is_decoder=causal, dropout_rate=0.0,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    peer = t5.T5Attention(config, has_relative_attention_bias=True, layer_idx=0).double().eval()
    mha = MultiHeadAttention(
        16, 4, score="dot", bias=False, causal=causal, position="t5", t5_buckets=8, t5_max_distance=12
    ).double()
    with torch.no_grad():
        for ours, theirs in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o")):
            getattr(mha, ours).weight.copy_(getattr(peer, theirs).weight)
        mha.relative_bias.bias.weight.copy_(peer.relative_attention_bias.weight)
    x = x_of(t=15)  # past max_exact: the logarithmic buckets are used
    blocked = torch.ones(15, 15, dtype=torch.bool).triu(1)
    additive = torch.zeros(15, 15, dtype=D64).masked_fill(blocked, torch.finfo(D64).min)[None, None]
    want, _, w_want = peer(x, mask=additive if causal else None)
    got, w = mha(x, need_weights=True, average_weights=False)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(w, w_want, atol=1e-12, rtol=1e-12)
    (got**2).sum().backward()
    (want**2).sum().backward()
    torch.testing.assert_close(
        mha.relative_bias.bias.weight.grad, peer.relative_attention_bias.weight.grad, atol=1e-10, rtol=1e-10
    )


def test_soft_capped_rope_module_equals_gemma2_attention():
    gemma2 = pytest.importorskip("transformers.models.gemma2.modeling_gemma2")
    from transformers import Gemma2Config

    config = Gemma2Config(
        hidden_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=4, query_pre_attn_scalar=4,
        attn_logit_softcapping=1.5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False, max_position_embeddings=64,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    peer = gemma2.Gemma2Attention(config, layer_idx=1).double().eval()  # layer 1: full attention
    mha = MultiHeadAttention(16, 4, kv_heads=2, bias=False, causal=True, position="rope", softcap=1.5).double()
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(mha, name).weight.copy_(getattr(peer, name).weight * (3 if name == "q_proj" else 1))
            getattr(peer, name).weight.copy_(getattr(mha, name).weight)  # large scores: the cap bites
        mha.out_proj.weight.copy_(peer.o_proj.weight)
    x = x_of(t=6)
    want, w_want = hf_causal(peer, gemma2.Gemma2RotaryEmbedding(config), x)
    got, w = mha(x, need_weights=True, average_weights=False)
    torch.testing.assert_close(w, w_want, atol=1e-6, rtol=1e-6)  # float32 angles and softmax in Gemma 2
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    mha.softcap = None
    assert (mha(x).output - want).abs().max() > 1e-2  # the cap changed the result: the scores exceed it


@pytest.mark.parametrize("position", ["rope", "alibi", "t5"])
def test_capture_records_the_weights_of_a_positioned_module(position):
    model = nn.ModuleDict({"attn": make(position, 2.0)})
    x = x_of()
    with attnkit.capture(model) as rec:
        out = model["attn"](x).output
    want = model["attn"](x, need_weights=True, average_weights=False)
    torch.testing.assert_close(out, want.output, atol=0, rtol=0)
    torch.testing.assert_close(rec["attn"], want.weights, atol=1e-12, rtol=1e-12)


def test_softcap_keeps_the_state_dict_and_t5_adds_its_table():
    plain = MultiHeadAttention(16, 4, score="general").state_dict()
    capped = MultiHeadAttention(16, 4, score="general", softcap=5.0).state_dict()
    assert plain.keys() == capped.keys()
    t5 = MultiHeadAttention(16, 4, position="t5").state_dict()
    assert set(t5) - set(plain) == {"relative_bias.bias.weight"} and t5["relative_bias.bias.weight"].shape == (32, 4)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"position": "learned"}, r"position='learned' is unknown; expected None or one of \['alibi', 'rope', 't5'\]"),
        ({"softcap": 0.0}, "softcap must be a finite number > 0"),
        ({"softcap": -1.0}, "softcap must be a finite number > 0"),
        ({"softcap": float("nan")}, r"softcap must be a finite number > 0 .*got nan"),
        ({"position": "rope", "rope_dim": 3}, "rope_dim must be even"),
        ({"position": "rope", "rope_dim": 6}, "rope_dim must be an int in 2..4"),
        ({"position": "rope", "rope_base": 0.0}, "rope_base must be a finite number > 0"),
        ({"rope_dim": 2}, r"rope_dim configure position='rope', but position=None"),
        ({"position": "alibi", "t5_buckets": 8}, r"t5_buckets configure position='t5', but position='alibi'"),
        ({"position": "t5", "t5_buckets": 2}, r"t5_buckets=2, t5_max_distance=128: T5 num_buckets must be an int"),
    ],
)  # fmt: skip
def test_bad_options_raise(options, match):
    with pytest.raises(AttentionError, match=match):
        MultiHeadAttention(16, 4, **options)


def test_odd_head_dim_needs_a_rope_dim():
    with pytest.raises(AttentionError, match=r"head dim Dh = embed_dim / num_heads = 5 is odd; pass an even rope_dim"):
        MultiHeadAttention(10, 2, position="rope")
    assert MultiHeadAttention(10, 2, position="rope", rope_dim=4).rotary.dim == 4


@pytest.mark.parametrize("position", ["rope", "alibi", "t5"])
def test_a_cross_attention_cache_raises(position):
    mha = make(position, causal=False)
    source = x_of(t=5)
    with pytest.raises(AttentionError, match=f"position='{position}' .* cross-attention cache"):
        mha(x_of(t=1), source, cache=KVCache(cross=True))
