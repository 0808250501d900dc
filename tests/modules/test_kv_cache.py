"""Incremental decoding with a key/value cache: ``MultiHeadAttention(cache=KVCache())`` step by step
equals one full causal call; a cross-attention cache projects its source once; the Transformer's
cached greedy and beam search equal its uncached decoding (tokens, scores, weights), in float64."""

import copy
import pickle
import re

import numpy as np
import pytest
import torch

from attnkit import AttentionError, KVCache, MultiHeadAttention, capture, masks
from attnkit.data.vocab import EOS
from attnkit.models import TransformerConfig, TransformerSeq2Seq, beam_search, greedy
from attnkit.models.transformer import DecoderCache

MHA_CONFIGS = {
    "plain": {},
    "gqa": {"kv_heads": 2},
    "bias-kv-zero-attn": {"add_bias_kv": True, "add_zero_attn": True},
    "seq-first": {"batch_first": False},
    "mixed-scores": {"score": ["scaled_dot", "additive", "general", "dot"]},
    "causal-window": {"window": (2, 0)},
}


def make_mha(config, **kwargs):
    torch.manual_seed(0)
    return MultiHeadAttention(16, 4, **{"causal": True, **MHA_CONFIGS[config], **kwargs}).double().eval()


def columns(full_w, t, end, extra):
    """The full call's weights (..., T, T + extra) of queries t..end-1 over the keys an incremental
    call at t sees: keys 0..end-1, then the extra keys."""
    return torch.cat([full_w[..., t:end, :end], full_w[..., t:end, full_w.shape[-1] - extra :]], -1)


@pytest.mark.parametrize("config", MHA_CONFIGS)
def test_steps_with_a_cache_equal_one_causal_call(config):
    mha = make_mha(config)
    x = torch.randn(2, 7, 16, dtype=torch.double)  # (B, T, D)
    extra = int(mha.bias_k is not None) + int(mha.add_zero_attn)
    seq = (lambda a: a) if mha.batch_first else (lambda a: a.transpose(0, 1))  # batch first <-> (T, B, D)
    full, full_w = mha(seq(x), need_weights=True, average_weights=False)
    cache, t = KVCache(), 0
    for n in (1, 2, 1, 3):  # one position at a time, and chunks
        out, w = mha(seq(x[:, t : t + n]), need_weights=True, average_weights=False, cache=cache)
        torch.testing.assert_close(out, full[t : t + n] if not mha.batch_first else full[:, t : t + n])
        torch.testing.assert_close(w, columns(full_w, t, t + n, extra))
        t += n
        assert cache.length == t and cache.k.shape == (2, mha.kv_heads, t, 4)


def test_key_padding_mask_and_attn_mask_cover_cached_and_new_keys():
    mha = make_mha("plain")
    x = torch.randn(2, 5, 16, dtype=torch.double)
    padding = torch.tensor([[True, False, False, False, False], [False] * 5])  # (B, T): row 0 is left-padded
    blocked = torch.zeros(5, 5, dtype=torch.bool)
    blocked[3, 1] = True  # torch's polarity: query 3 may not attend key 1
    full, full_w = mha(x, key_padding_mask=padding, attn_mask=blocked, need_weights=True)
    cache = KVCache()
    for t in range(5):
        out, w = mha(
            x[:, t : t + 1],
            key_padding_mask=padding[:, : t + 1],  # (B, cached + new keys)
            attn_mask=blocked[t : t + 1, : t + 1],  # (Tq, cached + new keys)
            need_weights=True,
            cache=cache,
        )
        torch.testing.assert_close(out, full[:, t : t + 1])
        torch.testing.assert_close(w, full_w[:, t : t + 1, : t + 1])


def test_is_causal_with_a_cache_means_the_causal_mask_after_the_cached_positions():
    mha = make_mha("plain", causal=False)
    x = torch.randn(1, 4, 16, dtype=torch.double)
    full = mha(x, attn_mask=torch.ones(4, 4, dtype=torch.bool).triu(1), is_causal=True).output
    cache = KVCache()
    mha(x[:, :2], attn_mask=torch.ones(2, 2, dtype=torch.bool).triu(1), is_causal=True, cache=cache)
    shifted = torch.ones(2, 4, dtype=torch.bool).triu(1 + 2)  # (Tq, Tk): query i is at position 2 + i
    out = mha(x[:, 2:], attn_mask=shifted, is_causal=True, cache=cache).output
    torch.testing.assert_close(out, full[:, 2:])
    top_left = torch.ones(1, 5, dtype=torch.bool).triu(1)  # causal as if no key were cached
    with pytest.raises(AttentionError, match=r"blocked exactly where key j > query i \+ 4 .* but it is not"):
        mha(x[:, :1], attn_mask=top_left, is_causal=True, cache=cache)


def count_calls(module):
    calls = []
    return calls, module.register_forward_hook(lambda *_: calls.append(1))


def test_cross_attention_cache_projects_the_source_once():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, kdim=12, vdim=10).double().eval()
    q, k, v = torch.randn(2, 5, 16).double(), torch.randn(2, 7, 12).double(), torch.randn(2, 7, 10).double()
    padding = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    full, full_w = mha(q, k, v, key_padding_mask=padding, need_weights=True)
    calls, hook = count_calls(mha.k_proj)
    cache = KVCache(cross=True)
    for t in range(5):
        key, value = (k, v) if t % 2 == 0 else (None, None)  # the source again, or omitted
        out, w = mha(q[:, t : t + 1], key, value, key_padding_mask=padding, need_weights=True, cache=cache)
        torch.testing.assert_close(out, full[:, t : t + 1])
        torch.testing.assert_close(w, full_w[:, t : t + 1])
    hook.remove()
    assert len(calls) == 1 and cache.length == 7


def test_gradients_through_cached_steps_equal_the_full_call():
    mha = make_mha("plain")
    x = torch.randn(2, 4, 16, dtype=torch.double, requires_grad=True)
    (grad_full,) = torch.autograd.grad(mha(x).output.square().sum(), x)
    cache = KVCache()
    steps = torch.cat([mha(x[:, t : t + 1], cache=cache).output for t in range(4)], 1)
    (grad_steps,) = torch.autograd.grad(steps.square().sum(), x)
    torch.testing.assert_close(grad_steps, grad_full)


def test_reorder_takes_batch_rows_and_appending_continues_from_them():
    mha = make_mha("plain")
    x = torch.randn(3, 5, 16, dtype=torch.double)
    index = torch.tensor([2, 2, 0])
    cache = KVCache()
    with torch.no_grad():
        for t in range(3):
            mha(x[:, t : t + 1], cache=cache)
        k_before = cache.k.clone()
        assert cache.reorder(index) is cache
        torch.testing.assert_close(cache.k, k_before[index])
        rows = x[index]  # what the reordered rows have seen, then two more steps of the new rows
        full = mha(torch.cat([rows[:, :3], x[:, 3:]], 1)).output
        for t in (3, 4):
            out = mha(x[:, t : t + 1], cache=cache).output
            torch.testing.assert_close(out, full[:, t : t + 1])
    assert KVCache().reorder(index).length == 0


def test_appending_writes_into_room_to_grow_without_changing_earlier_results():
    cache = KVCache()
    first = []
    with torch.no_grad():
        for t in range(20):
            k = torch.full((1, 2, 1, 4), float(t))
            all_k, _ = cache.append(k, -k)
            first.append(all_k)
    assert cache.k[0, 0, :, 0].tolist() == [float(t) for t in range(20)]
    assert [a.shape[2] for a in first] == list(range(1, 21))
    assert first[4][0, 0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # a returned view is never overwritten


def make_transformer(seed, **config):
    torch.manual_seed(seed)
    return TransformerSeq2Seq(TransformerConfig(12, 14, **config)).double().eval()


TRANSFORMERS = {
    "small": {"d_model": 16, "heads": 2, "ff_dim": 32, "encoder_layers": 2, "decoder_layers": 2},
    "one-layer-one-head": {"d_model": 8, "heads": 1, "ff_dim": 16, "encoder_layers": 1, "decoder_layers": 1},
    "four-heads-three-layers": {"d_model": 16, "heads": 4, "ff_dim": 16, "encoder_layers": 1, "decoder_layers": 3},
}
SRC = torch.tensor([[4, 5, 6, 7, 8], [9, 10, 11, 0, 0], [3, 0, 0, 0, 0]])


def decode_both(model, decode):
    model.use_cache = False
    uncached = decode(model)
    model.use_cache = True
    cached = decode(model)
    return uncached, cached


@pytest.mark.parametrize("config", TRANSFORMERS)
@pytest.mark.parametrize(
    "decode",
    [
        lambda m: greedy(m, SRC, max_len=9),
        lambda m: beam_search(m, SRC, beam=3, max_len=9),
        lambda m: beam_search(m, SRC, beam=4, alpha=0.0, max_len=6),
    ],
    ids=["greedy", "beam3", "beam4-no-penalty"],
)
def test_cached_decoding_equals_uncached_decoding(config, decode):
    for seed in (0, 1):
        uncached, cached = decode_both(make_transformer(seed, **TRANSFORMERS[config]), decode)
        assert [h.tokens for h in cached] == [h.tokens for h in uncached]
        assert [h.score for h in cached] == pytest.approx([h.score for h in uncached], abs=1e-12)
        for c, u in zip(cached, uncached):
            torch.testing.assert_close(c.weights, u.weights, rtol=1e-12, atol=1e-12)


def test_transformer_cross_attention_projects_the_source_once_per_layer():
    model = make_transformer(0, **TRANSFORMERS["small"])
    hooks = [count_calls(layer.cross_attn.k_proj) for layer in model.decoder]
    self_hooks = [count_calls(layer.self_attn.k_proj) for layer in model.decoder]
    hyps = greedy(model, SRC, max_len=6)
    steps = max(len(h.tokens) + 1 for h in hyps)  # the loop ran until every row emitted EOS, or max_len
    for calls, hook in hooks:
        hook.remove()
        assert len(calls) == 1
    for calls, hook in self_hooks:  # self-attention projects one new position per step
        hook.remove()
        assert len(calls) == min(steps, 6)


def test_decoder_cache_reorders_every_layer():
    model = make_transformer(0, **TRANSFORMERS["small"])
    memory = model.encode(SRC)
    state = model.start(memory)
    assert isinstance(state, DecoderCache) and state.length == 0
    with torch.no_grad():
        model.step(memory, state, torch.tensor([1, 1, 1]), 0)
        before = [(s.k.clone(), c.v.clone()) for s, c in state.layers]
        state.reorder(torch.tensor([1, 0, 0]))
    for (s, c), (k, v) in zip(state.layers, before):
        torch.testing.assert_close(s.k, k[[1, 0, 0]])
        torch.testing.assert_close(c.v, v[[1, 0, 0]])


def test_bad_cache_input_raises_attention_error():
    mha = make_mha("gqa")  # kv_heads=2, head dim 4
    x = torch.randn(2, 3, 16, dtype=torch.double)
    with pytest.raises(AttentionError, match=r"cache must be an attnkit.KVCache .* got dict"):
        mha(x, cache={})
    with pytest.raises(AttentionError, match=r"KVCache needs both k and v"):
        KVCache(k=torch.zeros(2, 2, 1, 4))
    wrong_heads = KVCache(k=torch.zeros(2, 4, 1, 4).double(), v=torch.zeros(2, 4, 1, 4).double())
    with pytest.raises(AttentionError, match=r"cache.k has shape \(2, 4, 1, 4\) but expected \(B, Hkv, T, Dh\) = "):
        mha(x, cache=wrong_heads)
    wrong_batch = KVCache(k=torch.zeros(3, 2, 1, 4).double(), v=torch.zeros(3, 2, 1, 4).double())
    with pytest.raises(AttentionError, match=r"cache.k has shape \(3, 2, 1, 4\) but expected \(B, Hkv, T, Dh\) = \(2,"):
        mha(x, cache=wrong_batch)
    float32 = KVCache(k=torch.zeros(2, 2, 1, 4), v=torch.zeros(2, 2, 1, 4))
    with pytest.raises(AttentionError, match=r"cache.k has dtype torch.float32 but expected torch.float64"):
        mha(x, cache=float32)
    with pytest.raises(AttentionError, match=r"a self-attention cache \(KVCache\(\)\) .* key must have Tq = 3"):
        mha(x, torch.randn(2, 5, 16).double(), cache=KVCache())
    cross = KVCache(cross=True)
    mha(x, torch.randn(2, 5, 16).double(), cache=cross)
    with pytest.raises(AttentionError, match=r"cache holds the keys of a source \(B, Tk\) = \(2, 5\) .* \(2, 6, 16\)"):
        mha(x, torch.randn(2, 6, 16).double(), cache=cross)
    with pytest.raises(AttentionError, match=r"key_padding_mask has shape \(2, 1\) but expected \(B, Tk\) = \(2, 4\)"):
        cache = KVCache()
        mha(x, cache=cache)
        mha(x[:, :1], key_padding_mask=torch.zeros(2, 1), cache=cache)  # must cover the 3 cached keys too


def test_transformer_step_rejects_a_cache_that_does_not_match_the_step():
    model = make_transformer(0, **TRANSFORMERS["small"])
    memory = model.encode(SRC)
    with pytest.raises(AttentionError, match=r"step t=2 needs a DecoderCache of 2 layers holding t positions"):
        model.step(memory, model.start(memory), torch.tensor([1, 1, 1]), 2)


def test_capture_of_cached_decoding_records_each_steps_weights():
    """capture() recomputes weights when read, from the keys of the call: views of the cache's
    storage, which later steps write into past their end and must leave intact."""
    model = make_transformer(0, **TRANSFORMERS["small"])
    with torch.no_grad():
        model.out.bias[EOS] = -1e9  # 20 steps: past the storage's first 16 positions, so it grows once
    with capture(model) as rec:
        (hyp,) = greedy(model, SRC[:1], max_len=20)
    assert len(hyp.tokens) == 20
    tgt = torch.tensor([[1, *hyp.tokens]])  # BOS, then the output: teacher forcing the same steps
    with capture(model) as full:
        model.decode(model.encode(SRC[:1]), tgt)
    whole = full["decoder.1.self_attn"][0]  # (H, T, T)
    for t, step in enumerate(rec.calls("decoder.1.self_attn")):
        torch.testing.assert_close(step[0, :, 0], whole[:, t, : t + 1])


def test_cross_cache_rejects_a_new_source_of_the_same_shape():
    """A filled KVCache(cross=True) reuses its projection: a later key or value that is not the
    tensor it was filled from (same shape or not), or that was modified in place since, raises
    instead of silently attending the old source."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).double().eval()
    q, src, other = (torch.randn(2, n, 16, dtype=torch.double) for n in (3, 5, 5))
    cache = KVCache(cross=True)
    first = mha(q, src, cache=cache).output
    torch.testing.assert_close(mha(q, src, cache=cache).output, first)  # the same source again
    torch.testing.assert_close(mha(q, cache=cache).output, first)  # or omitted
    with pytest.raises(AttentionError, match=r"key \(2, 5, 16\) is not the tensor the cache was filled from: KVCache"):
        mha(q, other, cache=cache)
    with pytest.raises(AttentionError, match=r"value \(2, 5, 16\) is not the tensor"):
        mha(q, src, other, cache=cache)
    with pytest.raises(AttentionError, match=r"value \(2, 5, 16\) is not the tensor"):
        mha(q, None, other, cache=cache)
    src.add_(1.0)  # in place: the projection in the cache is stale
    with pytest.raises(AttentionError, match=r"key .* modified in place since"):
        mha(q, src, cache=cache)
    seq_first = MultiHeadAttention(16, 4, batch_first=False).double().eval()
    cache, src_t = KVCache(cross=True), src.transpose(0, 1)  # (Tk, B, D)
    seq_first(q.transpose(0, 1), src_t, cache=cache)
    seq_first(q.transpose(0, 1), src_t, cache=cache)  # the caller's tensor is what is remembered
    given = KVCache(cross=True, k=torch.zeros(2, 4, 5, 4).double(), v=torch.zeros(2, 4, 5, 4).double())
    with pytest.raises(AttentionError, match=r"does not know the source of its k and v"):
        mha(q, src, cache=given)
    mha(q, cache=given)
    loaded = pickle.loads(pickle.dumps(cache))  # without its weak references: reused with key=None
    q_t = q.transpose(0, 1)  # (Tq, B, D)
    torch.testing.assert_close(seq_first(q_t, cache=loaded).output, seq_first(q_t, src_t).output)
    with pytest.raises(AttentionError, match=r"does not know the source .* or the cache was unpickled"):
        seq_first(q.transpose(0, 1), src_t, cache=loaded)


def test_copied_caches_fork_independently():
    """copy.copy and copy.deepcopy of a cache are forks: appending different steps to the copy and
    to the original gives each the outputs of a cache built for its own sequence alone."""
    mha = make_mha("plain")
    x = torch.randn(2, 6, 16, dtype=torch.double)
    a, b = torch.randn(2, 2, 16, dtype=torch.double), torch.randn(2, 2, 16, dtype=torch.double)

    def steps(cache, prefix, tail):
        for t in range(prefix.shape[1]):
            mha(prefix[:, t : t + 1], cache=cache)
        return [mha(tail[:, t : t + 1], cache=cache).output for t in range(tail.shape[1])]

    with torch.no_grad():
        want_a, want_b = (torch.cat(steps(KVCache(), x, tail), 1) for tail in (a, b))
        for fork in (copy.copy, copy.deepcopy):
            cache = KVCache()
            steps(cache, x, x[:, :0])
            other = fork(cache)
            got_a, got_b = [], []
            for t in range(2):  # interleaved: each branch appends after the other has
                got_a.append(mha(a[:, t : t + 1], cache=cache).output)
                got_b.append(mha(b[:, t : t + 1], cache=other).output)
            torch.testing.assert_close(torch.cat(got_a, 1), want_a)
            torch.testing.assert_close(torch.cat(got_b, 1), want_b)
            assert cache.length == other.length == 8
    cache = KVCache()  # with gradients: the deep copy keeps the history, so both branches backpropagate
    x.requires_grad_()
    steps(cache, x, x[:, :0])
    fork = copy.deepcopy(cache)
    (mha(a[:, :1], cache=cache).output.sum() + mha(b[:, :1], cache=fork).output.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


class EveryOtherPast(masks.Mask):
    """A rule of the user's own: query i attends keys i, i - 2, i - 4, ..."""

    def materialize(self, shape, device=None):
        i, j = torch.arange(shape[-2])[:, None], torch.arange(shape[-1])[None, :]  # (Tq, 1), (1, Tk)
        return (j <= i) & ((i - j) % 2 == 0)  # (Tq, Tk)


@pytest.mark.parametrize(
    "mask",
    [
        masks.causal(),
        masks.causal(1) & masks.causal(),
        masks.causal() & masks.sliding_window(2, 0),
        masks.sliding_window(1, 0) | masks.sliding_window(0, 0, -3),
        EveryOtherPast(),
        masks.sliding_window(3, 0) & EveryOtherPast(),
    ],
    ids=["causal", "causal-and-causal", "causal-and-window", "window-or-window", "own-rule", "window-and-own-rule"],
)
def test_mask_rules_with_a_cache_are_shifted_past_the_cached_keys(mask):
    """``mask=masks.causal()`` (and windows, their compositions, any rule over positions) with a
    self-attention cache puts query i of a call at position T + i, as the module's own causal and
    window masks: step-by-step calls equal one call over the whole sequence."""
    mha = make_mha("plain", causal=False)
    x = torch.randn(2, 7, 16, dtype=torch.double)
    full, full_w = mha(x, mask=mask, need_weights=True)
    if mask == masks.causal():  # the README's equivalence: mask=masks.causal() is causal=True
        torch.testing.assert_close(full, make_mha("plain")(x).output)
    cache, t = KVCache(), 0
    for n in (1, 2, 1, 3):
        out, w = mha(x[:, t : t + n], mask=mask, need_weights=True, cache=cache)
        torch.testing.assert_close(out, full[:, t : t + n])
        torch.testing.assert_close(w, full_w[:, t : t + n, : t + n])
        t += n


def test_a_dense_mask_with_a_cache_covers_the_calls_queries_and_all_keys():
    """A tensor ``mask`` (Tq, T + Tk_new) is the call's rows over every key: never shifted."""
    mha = make_mha("plain", causal=False)
    x = torch.randn(2, 5, 16, dtype=torch.double)
    allowed = (torch.rand(5, 5, generator=torch.Generator().manual_seed(0)) < 0.7).tril()  # (T, T), causal
    allowed[:, 0] = True
    full = mha(x, mask=allowed).output
    cache = KVCache()
    for t in range(5):
        out = mha(x[:, t : t + 1], mask=allowed[t : t + 1, : t + 1], cache=cache).output
        torch.testing.assert_close(out, full[:, t : t + 1])


def test_a_cache_belongs_to_the_module_that_filled_it():
    torch.manual_seed(0)
    first, second = make_mha("plain"), make_mha("plain")  # same shapes, same weights even
    x = torch.randn(2, 3, 16, dtype=torch.double)
    cache = KVCache()
    first(x[:, :1], cache=cache)
    with pytest.raises(AttentionError, match=r"cache was filled by another MultiHeadAttention .* new KVCache"):
        second(x[:, 1:2], cache=cache)
    first(x[:, 1:2], cache=cache)  # its own module still may, and after a reorder too
    first(x[:, 2:3], cache=cache.reorder(torch.tensor([1, 0])))
    cross = KVCache(cross=True)
    first(x, x, cache=cross)
    with pytest.raises(AttentionError, match=r"cache was filled by another MultiHeadAttention"):
        second(x, cache=cross)


def test_cross_must_be_a_bool():
    with pytest.raises(AttentionError, match=r"cross must be a bool \(True or False\), got 'no' \(str\)"):
        KVCache(cross="no")
    with pytest.raises(AttentionError, match=r"cross must be a bool .* got 1 \(int\)"):
        KVCache(cross=1)


BAD_INDEX = {
    "out-of-range": (torch.tensor([0, 2]), r"index has values \[2\] outside 0..1"),
    "negative": (torch.tensor([-1, 0]), r"index has values \[-1\] outside 0..1"),
    "float": (torch.tensor([0.0, 1.0]), r"index has shape \(2,\) and dtype torch.float32"),
    "bool": (torch.tensor([True, False]), r"index has shape \(2,\) and dtype torch.bool"),
    "2-D": (torch.tensor([[0, 1]]), r"index has shape \(1, 2\) and dtype torch.int64"),
    "numpy": (np.array([0, 1]), r"index must be .* got array\(\[0, 1\]\) \(ndarray\)"),
    "list-of-floats": ([0.0, 1.0], r"index must be .* got \[0.0, 1.0\] \(list\)"),
    "list-out-of-range": ([0, 5], r"index has values \[5\] outside 0..1"),
    "int": (1, r"index must be .* got 1 \(int\)"),
}


@pytest.mark.parametrize("case", BAD_INDEX)
def test_reorder_rejects_a_bad_index(case):
    index, match = BAD_INDEX[case]
    cache = KVCache()
    cache.append(torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4))
    expected = r"a 1-D integer torch tensor \(int64 or int32\) or a list of ints on cpu with values in 0..1 \(B = 2"
    with pytest.raises(AttentionError, match=match) as error:
        cache.reorder(index)
    assert re.search(expected, str(error.value)), str(error.value)
    assert cache.k.shape == (2, 1, 3, 4)  # unchanged


def test_reorder_takes_a_list_of_ints_or_an_int32_tensor():
    cache = KVCache()
    k = torch.randn(2, 1, 3, 4)
    cache.append(k, -k)
    torch.testing.assert_close(cache.reorder([1, 1, 0]).k, k[[1, 1, 0]])
    torch.testing.assert_close(cache.reorder(torch.tensor([2, 0], dtype=torch.int32)).k, k[[0, 1]])
