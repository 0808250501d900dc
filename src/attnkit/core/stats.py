"""How peaked attention weights are: the figures that tell a saturated softmax from one that still
spreads its mass (and so still passes gradients to more than one key).

Shape legend: Tk keys; a *row* is one query's weights over its keys.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..errors import AttentionError, shape_str

__all__ = ["sharpness"]


def sharpness(weights: Tensor | Iterable[Tensor], threshold: float = 0.99) -> dict[str, float]:
    """Statistics of attention rows: ``weights`` (..., Tk), or several such tensors whose Tk may
    differ (e.g. one alignment per decoded word). Returns

    - ``rows``: how many rows;
    - ``saturated``: the share of rows whose largest weight exceeds ``threshold`` (one-hot in effect);
    - ``max``: the mean largest weight;
    - ``entropy``: the mean entropy -Σ a log a in nats (0 log 0 = 0); ln(Tk) for uniform rows.

    >>> sharpness(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    {'rows': 2, 'saturated': 0.5, 'max': 0.75, 'entropy': 0.34657359...}
    """
    if not 0.0 < threshold < 1.0:
        raise AttentionError(f"threshold must be in (0, 1), got {threshold!r}")
    parts = [weights] if isinstance(weights, Tensor) else list(weights)
    rows = saturated = 0
    top = entropy = 0.0
    for w in parts:
        if w.dim() < 1 or w.shape[-1] == 0:
            raise AttentionError(f"weights has shape {shape_str(w.shape)} but expected (..., Tk) with Tk >= 1")
        w = w.detach().double().reshape(-1, w.shape[-1])  # (rows, Tk)
        largest = w.max(-1).values
        rows += w.shape[0]
        saturated += int((largest > threshold).sum())
        top += float(largest.sum())
        entropy += float(-torch.xlogy(w, w).sum())
    if rows == 0:
        raise AttentionError("weights holds no rows")
    return {"rows": rows, "saturated": saturated / rows, "max": top / rows, "entropy": entropy / rows}
