"""A rolling KV cache (StreamingLLM): ``KVCache(sinks=k, window=w)`` keeps the first k and the last w
positions. Decoding step by step (one token per call, or chunks) equals one full call under
``masks.streaming(k, w)``, in float64; its positions, forks, reordering and pickling; errors.

Shape legend: B batch, H heads, T positions, D model dim.
"""

import copy
import pickle
import re

import pytest
import torch

from attnkit import AttentionError, KVCache, MultiHeadAttention, masks

ATOL = 1e-10
CONFIGS = {
    "plain": {},
    "gqa": {"kv_heads": 2},
    "bias-kv-zero-attn": {"add_bias_kv": True, "add_zero_attn": True},
    "seq-first": {"batch_first": False},
}


def make_mha(config="plain", **kwargs):
    torch.manual_seed(0)
    return MultiHeadAttention(16, 4, **{"causal": True, **CONFIGS[config], **kwargs}).double().eval()


def inputs(t=13, b=2):
    return torch.randn(b, t, 16, dtype=torch.double, generator=torch.Generator().manual_seed(1))  # (B, T, D)


def decode(mha, x, cache, sizes, **kwargs):
    """The outputs of calls on consecutive chunks of ``x`` (B, T, D) of these sizes, joined along T."""
    seq = (lambda a: a) if mha.batch_first else (lambda a: a.transpose(0, 1))
    outs, t = [], 0
    for n in sizes:
        outs.append(seq(mha(seq(x[:, t : t + n]), cache=cache, **kwargs).output))
        t += n
    return torch.cat(outs, 1)


SIZES = {"one-token": [1] * 13, "chunks": [3, 1, 4, 2, 3], "prefill": [9, 1, 1, 2]}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("sinks,window", [(2, 3), (0, 4), (3, 0), (1, 1)])
def test_steps_with_a_rolling_cache_equal_one_streaming_call(config, sizes, sinks, window):
    mha, x = make_mha(config), inputs()
    seq = (lambda a: a) if mha.batch_first else (lambda a: a.transpose(0, 1))
    full = seq(mha(seq(x), mask=masks.streaming(sinks, window)).output)
    cache = KVCache(sinks=sinks, window=window)
    got = decode(mha, x, cache, SIZES[sizes], mask=masks.streaming(sinks, window))
    torch.testing.assert_close(got, full, atol=ATOL, rtol=0)
    assert cache.length == min(13, sinks + window) and cache.seen == 13
    assert cache.k.shape[2] == cache.length and cache.positions.tolist() == [*range(sinks), *range(13 - window, 13)]


def test_one_token_steps_need_no_mask_the_cache_holds_exactly_what_streaming_allows():
    mha, x = make_mha(), inputs()
    full = mha(x, mask=masks.streaming(2, 3)).output
    torch.testing.assert_close(decode(mha, x, KVCache(sinks=2, window=3), [1] * 13), full, atol=ATOL, rtol=0)


def test_weights_over_the_kept_keys_are_the_full_calls_at_their_positions():
    mha, x = make_mha(), inputs()
    _, full_w = mha(x, mask=masks.streaming(2, 3), need_weights=True, average_weights=False)  # (B, H, T, T)
    cache = KVCache(sinks=2, window=3)
    for t in range(13):
        keys = torch.cat([cache.positions, torch.tensor([t])])  # the kept positions, then the new one
        _, w = mha(x[:, t : t + 1], cache=cache, mask=masks.streaming(2, 3), need_weights=True, average_weights=False)
        torch.testing.assert_close(w[..., 0, :], full_w[..., t, keys], atol=ATOL, rtol=0)
        dropped = torch.ones(t + 1, dtype=torch.bool)
        dropped[keys] = False
        assert full_w[..., t, : t + 1][..., dropped].eq(0).all()  # what the cache dropped, streaming never attends


def test_rules_are_evaluated_at_the_kept_positions_document_and_rope():
    """A per-example document mask (ids for the whole sequence) and RoPE (rotated at absolute positions)."""
    mha, x = make_mha(position="rope"), inputs()
    ids = torch.tensor([[0] * 5 + [1] * 8, [0] * 9 + [1] * 4])  # (B, T)
    rule = masks.streaming(2, 4) & masks.document(ids)
    full = mha(x, mask=rule).output
    torch.testing.assert_close(decode(mha, x, KVCache(sinks=2, window=4), [2, 1, 3, 1, 1, 5], mask=rule), full)


def test_forks_reorder_and_pickle_keep_the_positions():
    mha, x = make_mha(), inputs(b=3)
    rule = masks.streaming(1, 2)
    want = mha(x, mask=rule).output[:, 6:]  # (B, 7, D): positions 6 .. 12
    cache = KVCache(sinks=1, window=2)
    decode(mha, x, cache, [4, 2], mask=rule)  # 6 seen, 3 kept: positions 0, 4, 5
    forks = {
        "copy": copy.copy(cache),
        "deepcopy": copy.deepcopy(cache),
        "pickle": pickle.loads(pickle.dumps(cache)),
        "original": cache,
    }
    for name, fork in forks.items():
        assert (fork.sinks, fork.window, fork.seen, fork.positions.tolist()) == (1, 2, 6, [0, 4, 5]), name
        got = decode(mha, x[:, 6:], fork, [1] * 7, mask=rule)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    reordered = KVCache(sinks=1, window=2)
    decode(mha, x, reordered, [6], mask=rule)
    reordered.reorder([2, 0, 1])
    assert reordered.positions.tolist() == [0, 4, 5]
    got = mha(x[[2, 0, 1], 6:7], cache=reordered, mask=rule).output
    torch.testing.assert_close(got, want[[2, 0, 1], :1], atol=ATOL, rtol=0)


def test_tensor_masks_cover_the_calls_keys_kept_and_new():
    mha, x = make_mha(), inputs()
    cache = KVCache(sinks=1, window=2)
    decode(mha, x, cache, [6])  # kept: positions 0, 4, 5
    padding = torch.tensor([[False, True, False, False], [False] * 4])  # (B, kept + new): example 0's position 4
    got = mha(x[:, 6:7], cache=cache, key_padding_mask=padding).output
    allowed = masks.streaming(1, 2).materialize((7, 7)).expand(2, 1, 7, 7).clone()  # (B, 1, T, T)
    allowed[0, :, :, 4] = False
    torch.testing.assert_close(got, mha(x[:, :7], mask=allowed).output[:, 6:7], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"sinks": -1, "window": 2}, "KVCache sinks must be an int in 0..2**62, got -1"),
        ({"window": 2.5}, "KVCache window must be an int in 0..2**62, got 2.5 (float)"),
        ({"sinks": 4}, "KVCache(sinks=4) needs window= too"),
        (
            {"cross": True, "window": 4},
            "KVCache(cross=True) holds a fixed source; sinks= and window= (a rolling cache)",
        ),
    ],
)
def test_bad_rolling_cache_arguments_raise(kwargs, message):
    with pytest.raises(AttentionError, match=re.escape(message)):
        KVCache(**kwargs)


@pytest.mark.parametrize("position", ["alibi", "t5"])
def test_position_biases_with_a_rolling_cache_raise_from_the_first_call(position):
    mha, x = make_mha(position=position), inputs()
    with pytest.raises(AttentionError, match=r"adds a position bias over the key columns .* position='rope'"):
        mha(x[:, :1], cache=KVCache(sinks=1, window=2))
    decode(mha, x, KVCache(), [2, 1])  # a cache that keeps every position is exact with biases
