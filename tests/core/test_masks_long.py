"""Masks for long inputs: documents / packed sequences, prefix-LM, global tokens (Longformer), attention
sinks and StreamingLLM. Each rule checked against a loop over (i, j); ``allows`` at scattered positions
and ``block_layout`` checked against the materialized mask; composition; the KV cache's offset shift;
errors on bad arguments.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, G global positions.
"""

import re

import pytest
import torch

from attnkit import AttentionError, masks
from attnkit.core.masks import _reduce_blocks
from attnkit.modules.cache import _after


def _by_loop(tq, tk, rule):
    return torch.tensor([[bool(rule(i, j)) for j in range(tk)] for i in range(tq)])


IDS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3])  # 11 positions, 4 sequences
BATCH_IDS = torch.stack([IDS, torch.tensor([0] * 6 + [1] * 5)])  # (B=2, T=11)


@pytest.mark.parametrize("offset", [0, 3])
def test_document_matches_its_rule_shared_and_per_example(offset):
    m = masks.Document(IDS, offset=offset)
    tq = 11 - offset
    assert m.materialize((tq, 11)).equal(_by_loop(tq, 11, lambda i, j: IDS[i + offset] == IDS[j]))
    per = masks.Document(BATCH_IDS, offset=offset).materialize((2, 3, tq, 11))  # (B, 1, Tq, Tk)
    assert per.shape == (2, 1, tq, 11)
    for b in range(2):
        ids = BATCH_IDS[b]
        assert per[b, 0].equal(_by_loop(tq, 11, lambda i, j, ids=ids: ids[i + offset] == ids[j]))


def test_document_with_separate_key_ids_and_ids_longer_than_the_call():
    q_ids, k_ids = torch.tensor([1, 2, 2]), torch.tensor([2, 1, 1, 2, 9])
    got = masks.document(q_ids, key_ids=k_ids).materialize((3, 5))
    assert got.equal(_by_loop(3, 5, lambda i, j: q_ids[i] == k_ids[j]))
    # a decoder step reads positions offset .. offset + Tq - 1 of ids that cover the whole sequence
    assert masks.Document(IDS, offset=4).materialize((1, 5)).equal(_by_loop(1, 5, lambda i, j: IDS[4] == IDS[j]))


def test_packed_builds_ids_from_lengths_and_rows_of_lengths():
    assert masks.packed([3, 2, 4, 2]).ids.equal(IDS)
    assert masks.packed(torch.tensor([3, 2, 4, 2])).ids.equal(IDS)
    assert masks.packed([[3, 2, 4, 2], [6, 5, 0, 0]]).ids.equal(BATCH_IDS)
    assert masks.packed([0, 2]).ids.tolist() == [1, 1]  # an empty sequence takes no position
    causal = (masks.packed([2, 3]) & masks.causal()).materialize((5, 5))
    want = _by_loop(5, 5, lambda i, j: j <= i and (i < 2) == (j < 2))
    assert causal.equal(want)


@pytest.mark.parametrize("offset", [0, 2, -1])
def test_prefix_lm_matches_its_rule(offset):
    got = masks.PrefixLM(3, offset).materialize((5, 6))
    assert got.equal(_by_loop(5, 6, lambda i, j: j < 3 or j <= i + offset))
    prefix = torch.tensor([0, 4])
    per = masks.PrefixLM(prefix, offset).materialize((2, 5, 6))  # (B, Tq, Tk)
    for b in range(2):
        assert per[b].equal(_by_loop(5, 6, lambda i, j, b=b: j < prefix[b] or j <= i + offset))
    assert masks.prefix_lm(0).materialize((4, 4)).equal(masks.causal().materialize((4, 4)))
    assert masks.prefix_lm(4).materialize((4, 4)).all()  # the whole sequence is the prefix


@pytest.mark.parametrize(
    "indices,is_global",
    [
        ([0, 4], lambda b, p: p in (0, 4)),
        (torch.tensor([[1], [5]]), lambda b, p: p == (1, 5)[b]),
        (torch.tensor([[True, False, False, True, False, False, False]] * 2), lambda b, p: p in (0, 3)),
        (torch.tensor([False, True, False, False, False, False, True]), lambda b, p: p in (1, 6)),
    ],
    ids=["ints", "per-example", "bool-per-example", "bool-shared"],
)
@pytest.mark.parametrize("offset", [0, 1])
def test_global_tokens_match_their_rule(indices, is_global, offset):
    m = masks.GlobalTokens(masks.global_tokens(indices).indices, offset)
    got = m.materialize((2, 2, 6, 7)).expand(2, 2, 6, 7)
    for b in range(2):
        want = _by_loop(6, 7, lambda i, j, b=b: is_global(b, i + offset) or is_global(b, j))
        assert got[b, 1].equal(want), b


def test_longformer_is_a_window_or_a_global_position():
    m = masks.longformer(1, [0])
    assert repr(m) == "Or(SlidingWindow(left=1, right=1, offset=0), GlobalTokens(indices=[0], offset=0))"
    assert m.materialize((5, 5)).equal(_by_loop(5, 5, lambda i, j: abs(i - j) <= 1 or i == 0 or j == 0))


def test_sinks_and_streaming_match_their_rules():
    assert masks.sinks(2).materialize((3, 5)).equal(_by_loop(3, 5, lambda i, j: j < 2))
    m = masks.streaming(2, 3)
    assert repr(m) == "And(Causal(offset=0), Or(Sinks(k=2), SlidingWindow(left=3, right=0, offset=0)))"
    assert m.materialize((9, 9)).equal(_by_loop(9, 9, lambda i, j: j <= i and (j < 2 or j >= i - 3)))
    assert masks.streaming(0, 0).materialize((4, 4)).equal(torch.eye(4, dtype=torch.bool))


def test_reprs_name_rules_and_tensor_shapes():
    assert repr(masks.document(BATCH_IDS)) == "Document(ids=(2, 11), offset=0)"
    assert repr(masks.document(IDS, IDS[:5])) == "Document(ids=(11,), key_ids=(5,), offset=0)"
    assert repr(masks.prefix_lm(3)) == "PrefixLM(prefix=3, offset=0)"
    assert repr(masks.prefix_lm(torch.tensor([1, 2]))) == "PrefixLM(prefix=(2,), offset=0)"
    assert repr(masks.global_tokens(torch.ones(2, 9, dtype=torch.bool))) == "GlobalTokens(bool=(2, 9), offset=0)"
    assert repr(masks.global_tokens(torch.zeros(2, 3, dtype=torch.long))) == "GlobalTokens(indices=(2, 3), offset=0)"
    assert repr(masks.sinks(4)) == "Sinks(k=4)"


RULES = {
    "document": masks.document(IDS),
    "document-per-example": masks.document(BATCH_IDS),
    "document-unsorted": masks.document(torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 0, 1, 2])),
    "document-causal": masks.packed([3, 2, 4, 2]) & masks.causal(),
    "prefix-lm": masks.prefix_lm(4),
    "prefix-lm-per-example-padding": masks.prefix_lm(torch.tensor([2, 7])) & masks.padding([11, 8], 11),
    "longformer": masks.longformer(2, [0, 9]),
    "longformer-per-example": masks.longformer(1, torch.tensor([[3], [10]])),
    "global-bool": masks.global_tokens(torch.rand(2, 11, generator=torch.Generator().manual_seed(0)) > 0.8),
    "streaming": masks.streaming(2, 3),
    "sinks": masks.sinks(3),
    "causal-offset": masks.causal(-2),
    "window": masks.sliding_window(2, 1, 1),
    "block-sparse": masks.block_sparse(torch.tensor([[True, False], [True, True]]), 6),
}
# rules whose layout is exactly the blocks holding an allowed pair (the others may add blocks)
EXACT = {"document", "document-per-example", "prefix-lm", "prefix-lm-per-example-padding", "longformer-per-example"}
EXACT |= {"global-bool", "sinks", "causal-offset", "window", "block-sparse", "longformer"}


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("block", [1, 3, 4, 6, 16])  # 6: block-sparse's own block, its layout as it is
def test_block_layout_covers_every_allowed_pair(name, block):
    shape = (2, 3, 11, 11)  # (B, H, Tq, Tk): 11 is not a multiple of 3, 4 or 16
    rule = RULES[name]
    dense = rule.materialize(shape).expand(shape)
    want = _reduce_blocks(dense, block)  # (B, H, nq, nk): the blocks holding an allowed pair
    got = rule.block_layout(shape, block).expand(want.shape)
    assert not (want & ~got).any(), "a block with an allowed pair was left out"
    if name in EXACT:
        assert got.equal(want)


@pytest.mark.parametrize("name", RULES)
def test_allows_at_scattered_positions_agrees_with_materialize(name):
    shape = (2, 3, 11, 11)
    rule = RULES[name]
    dense = rule.materialize(shape).expand(shape)
    gen = torch.Generator().manual_seed(1)
    i = torch.randint(0, 11, (1, 1, 5, 1), generator=gen)  # (1, 1, 5, 1) query indices
    j = torch.randint(0, 11, (2, 1, 5, 7), generator=gen)  # (B, 1, 5, 7): other keys per example
    got = rule.allows(i, j).expand(2, 3, 5, 7)
    want = torch.stack([dense[b][:, i[0, 0, :, 0]].gather(-1, j[b].expand(3, 5, 7)) for b in range(2)])
    assert got.equal(want)


def test_kv_cache_offset_shift_reaches_the_new_rules():
    """``_after`` shifts every rule whose verdict depends on the query's position; sinks stay."""
    full = (masks.packed([3, 2, 4, 2]) & masks.prefix_lm(2) | masks.global_tokens([5])).materialize((11, 11))
    shifted = _after(masks.packed([3, 2, 4, 2]) & masks.prefix_lm(2) | masks.global_tokens([5]), 7)
    assert shifted.materialize((4, 11)).equal(full[7:])
    assert _after(masks.sinks(2), 7) == masks.sinks(2)
    assert _after(masks.streaming(2, 3), 7).materialize((4, 11)).equal(masks.streaming(2, 3).materialize((11, 11))[7:])


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: masks.sinks(-1), "sinks k must be an int in 0..2**62, got -1"),
        (lambda: masks.streaming(2, -3), "streaming window must be an int in 0..2**62, got -3"),
        (lambda: masks.streaming(True, 3), "streaming sinks must be an int in 0..2**62, got True (bool)"),
        (lambda: masks.document(torch.zeros(2, 3, 4, dtype=torch.long)), "document ids has shape (2, 3, 4) and dtype"),
        (lambda: masks.document(torch.zeros(5)), "document ids has shape (5,) and dtype torch.float32 but expected"),
        (
            lambda: masks.document([0, 0, 1]),
            "document ids must be an integer torch.Tensor of shape (T,) or (B, T), got list",
        ),
        (
            lambda: masks.document(torch.zeros(2, 5, dtype=torch.long), torch.zeros(3, 5, dtype=torch.long)),
            "document ids (2, 5) and key_ids (3, 5) have different B",
        ),
        (lambda: masks.Document(IDS, offset=-1), "document offset must be an int in 0..2**62, got -1"),
        (lambda: masks.packed([2, -1]), "packed lengths holds -1 but expected positions and lengths >= 0"),
        (lambda: masks.packed([[2, 3], [4, 4]]), "packed lengths (B, n) = (2, 2) has rows summing to [5, 8]"),
        (lambda: masks.packed([1.5, 2.0]), "packed lengths has dtype torch.float32 but expected an integer dtype"),
        (lambda: masks.prefix_lm(-2), "prefix_lm prefix must be an int in 0..2**62, got -2"),
        (lambda: masks.prefix_lm(torch.tensor([[1, 2]])), "prefix_lm prefix has shape (1, 2) but expected an int"),
        (lambda: masks.prefix_lm(torch.tensor([1, -2])), "prefix_lm prefix holds -2"),
        (lambda: masks.global_tokens([0, -3]), "global_tokens indices holds -3"),
        (lambda: masks.global_tokens(torch.zeros(3)), "global_tokens indices has shape (3,) and dtype torch.float32"),
    ],
)
def test_bad_arguments_raise_naming_them(make, message):
    with pytest.raises(AttentionError, match=re.escape(message)):
        make()


@pytest.mark.parametrize(
    "mask,shape,message",
    [
        (masks.prefix_lm(9), (5, 8), "prefix_lm prefix 9 is beyond the Tk = 8 keys of scores (5, 8)"),
        (masks.prefix_lm(torch.tensor([2, 9])), (2, 4, 8), "prefix_lm prefix 9 is beyond the Tk = 8 keys"),
        (masks.prefix_lm(torch.tensor([2, 3])), (3, 4, 8), "prefix_lm prefix has shape (2,), one row per example"),
        (masks.document(IDS), (12, 12), "document ids has shape (11,), covering 11 positions, but the call needs 12"),
        (masks.document(BATCH_IDS), (3, 1, 11, 11), "document ids has shape (2, 11), one row per example, but"),
        (masks.document(BATCH_IDS), (11, 11), "expected scores (B, ..., Tq, Tk) with B = 2 (got B = B)"),
        (masks.Document(IDS, offset=3), (9, 11), "the call needs 12 (queries at positions 3..11)"),
        (masks.global_tokens(torch.ones(10, dtype=torch.bool)), (4, 11), "global_tokens indices has shape (10,)"),
    ],
)
def test_masks_that_do_not_fit_the_scores_raise(mask, shape, message):
    with pytest.raises(AttentionError, match=re.escape(message)):
        mask.materialize(shape)
    with pytest.raises(AttentionError, match=re.escape(message)):
        mask.block_layout(shape, 4)


def test_allows_needs_a_batch_dim_for_per_example_rules():
    with pytest.raises(AttentionError, match=re.escape("document ids has shape (2, 11), one row per example, but")):
        masks.document(BATCH_IDS).allows(torch.arange(3)[:, None], torch.arange(3)[None, :])
    with pytest.raises(AttentionError, match=re.escape("covering positions 0..10, but positions 0..11 were asked")):
        masks.document(IDS).allows(torch.arange(3)[:, None], torch.arange(12)[None, :])
