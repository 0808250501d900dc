"""Exact ties under ``hard`` and ``topk``: the lowest key index wins, on every backend.

Integer-valued queries and keys make the dot scores integers, so ties are exact. Shape legend:
B batch, Tq query positions, Tk key positions, D feature dim.
"""

import pytest
import torch

import attnkit
from attnkit import NORMALIZERS, masks
from attnkit.core.normalizers import stable_topk

B, TQ, TK, D = 2, 9, 12, 3


def _tied_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-1, 2, (B, TQ, D), generator=gen).double()  # entries in {-1, 0, 1}
    k = torch.randint(-1, 2, (B, TK, D), generator=gen).double()
    v = torch.randn(B, TK, 4, generator=gen, dtype=torch.float64)
    return q, k, v


def _lowest_index_topk(scores, allowed, k):
    """The rule written plainly: a stable descending sort over the allowed scores (-inf elsewhere)."""
    filled = scores.masked_fill(~allowed, float("-inf"))
    return filled.sort(dim=-1, descending=True, stable=True).indices[..., :k]


def test_the_first_of_equal_scores_wins():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    assert stable_topk(scores, 1).tolist() == [[1], [0]]
    assert stable_topk(scores, 2).tolist() == [[1, 2], [0, 1]]
    assert stable_topk(scores, 4).tolist() == [[1, 2, 4, 0], [0, 1, 2, 3]]
    hard = NORMALIZERS["hard"]()(scores).weights
    assert hard.tolist() == [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]


def test_ties_at_the_kth_score_only_are_broken_and_nan_is_left_to_topk():
    scores = torch.tensor([[5.0, 1.0, 4.0, 1.0, 4.0, 4.0]])
    assert sorted(stable_topk(scores, 3)[0].tolist()) == [0, 2, 4]
    with_nan = torch.tensor([[1.0, float("nan"), 1.0]])
    assert stable_topk(with_nan, 2)[0].tolist() == [1, 0]  # NaN ranks first, as in torch.topk


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("mask", ["none", "window", "causal window", "padding window"])
def test_backends_pick_the_lowest_index_among_tied_keys(seed, k, mask):
    q, k_, v = _tied_inputs(seed)
    window = None if mask == "none" else (3, 2)
    region = {"causal window": masks.causal(), "padding window": masks.padding([TK, 7], max_len=TK)}.get(mask)
    normalize = NORMALIZERS["hard"]() if k == 1 else NORMALIZERS["topk"](k=k)
    backends = ["reference", "topk_gather"] + (["banded"] if window is not None else [])
    call = {"score": "dot", "normalize": normalize, "mask": region, "window": window, "need_weights": True}
    results = {b: attnkit.attention(q, k_, v, backend=b, **call) for b in backends}

    scores = q @ k_.transpose(-2, -1)  # (B, Tq, Tk), integers
    allowed = attnkit.core.functional.prepare(q, k_, v, mask=region, window=window)
    allowed = (
        torch.ones(B, TQ, TK, dtype=torch.bool)
        if allowed.region is None
        else allowed.region.materialize((B, TQ, TK)).expand(B, TQ, TK)
    )
    n_allowed = allowed.sum(-1, keepdim=True)
    want = torch.zeros(B, TQ, TK, dtype=torch.bool).scatter_(-1, _lowest_index_topk(scores, allowed, k), True)
    want &= allowed
    assert (scores.unsqueeze(-1) == scores.unsqueeze(-2)).any(), "the inputs must tie"
    for name, res in results.items():
        picked = res.weights != 0
        assert picked.equal(want), name
        assert (picked.sum(-1, keepdim=True) == n_allowed.clamp(max=k)).all(), name
        torch.testing.assert_close(res.output, results["reference"].output, rtol=1e-12, atol=1e-12)


def test_banded_and_reference_agree_on_an_all_tied_row():
    """The issue's case: every score equal; banded used to pick a key in the middle of its band."""
    q, k, v = torch.ones(1, 4, 2), torch.ones(1, 8, 2), torch.arange(8.0).reshape(1, 8, 1)
    for backend in ("reference", "banded", "topk_gather"):
        out = attnkit.attention(q, k, v, score="dot", normalize="hard", window=(3, 3), backend=backend).output
        assert out.flatten().tolist() == [0.0, 0.0, 0.0, 0.0], backend  # key 0 is in every query's window


def test_the_branch_free_path_under_compile_picks_the_same(monkeypatch):
    """Under torch.compile every row is redone (no data-dependent branch): the same picks."""
    scores = torch.randint(0, 3, (4, 5, 11)).double()
    want = stable_topk(scores, 3)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert stable_topk(scores, 3).equal(want)
    assert stable_topk(scores, 3).equal(_lowest_index_topk(scores, torch.ones_like(scores, dtype=torch.bool), 3))
