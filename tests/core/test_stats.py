"""Attention sharpness statistics and G2P's word-length buckets."""

import math

import pytest
import torch

from attnkit import AttentionError
from attnkit.core.stats import sharpness
from attnkit.tasks.g2p import by_length, score


def test_sharpness_of_one_hot_uniform_and_ragged_rows():
    one_hot = torch.eye(3)  # 3 rows, all saturated, entropy 0
    uniform = torch.full((2, 4), 0.25)  # 2 rows, entropy ln 4
    got = sharpness([one_hot, uniform])
    assert got["rows"] == 5
    assert got["saturated"] == pytest.approx(3 / 5)
    assert got["max"] == pytest.approx((3 * 1.0 + 2 * 0.25) / 5)
    assert got["entropy"] == pytest.approx(2 * math.log(4) / 5)


def test_sharpness_threshold_is_strict_and_checked():
    w = torch.tensor([[0.98, 0.02]], dtype=torch.float64)
    assert sharpness(w)["saturated"] == 0.0 and sharpness(w, threshold=0.9)["saturated"] == 1.0
    with pytest.raises(AttentionError, match=r"threshold must be in \(0, 1\), got 1.0"):
        sharpness(w, threshold=1.0)
    with pytest.raises(AttentionError, match=r"weights has shape \(2, 0\) but expected \(..., Tk\) with Tk >= 1"):
        sharpness(torch.zeros(2, 0))
    with pytest.raises(AttentionError, match="weights holds no rows"):
        sharpness([])


def test_by_length_buckets_add_up_to_the_whole():
    words = ["a", "abcdef", "abcdefghi", "abcdefghijklm", "abcde"]
    refs = [[("A",)], [("B",)], [("C",)], [("D",)], [("E",)]]
    hyps = [("A",), ("X",), ("C",), ("X",), ("E",)]
    got = by_length(words, hyps, refs)
    assert {k: v["words"] for k, v in got.items()} == {"1-5": 2, "6-8": 1, "9-11": 1, "12+": 1}
    assert got["1-5"]["wer"] == 0.0 and got["6-8"]["wer"] == 100.0 and got["12+"]["wer"] == 100.0
    whole = score(hyps, refs)["wer"]
    assert sum(v["wer"] * v["words"] for v in got.values()) / len(words) == pytest.approx(whole)
    assert "9-11" not in by_length(["ab"], [("A",)], [[("A",)]])
