"""Tile kernels: x (n, i, A), y (n, j, A), v (n, A) [, ds (n, i, j)]; factored: see :mod:`attnkit.backends.additive`.

The fused kernels are what AOTInductor compiles (:mod:`.compile`); the eager ones compute the same, each
tile written once and updated in place.
"""

from __future__ import annotations

import torch
from torch import Tensor

# |a|, |b| up to which e^(-2a) stays a normal number: e^80 < 3e38 (float32), e^680 < 1e308 (float64)
FACTORED_LIMIT = {torch.float32: 40.0, torch.float64: 340.0}


def _half_tanh(x: Tensor, y: Tensor, factored: bool) -> Tensor:
    """r = (1 + tanh(a_i + b_j)) / 2 for every pair, (n, i, j, A): an expression inductor fuses away."""
    if factored:
        return 1 / (1 + x[:, :, None, :] * y[:, None, :, :])  # x = e^(-2a), y = e^(-2b)
    return torch.sigmoid(2 * (x[:, :, None, :] + y[:, None, :, :]))  # x = a, y = b


def _scores_fused(x: Tensor, y: Tensor, v: Tensor, factored: bool) -> Tensor:
    """s_ij = vᵀ tanh(a_i + b_j): (n, i, j)."""
    t = 2 * _half_tanh(x, y, factored) - 1  # (n, i, j, A) tanh, never written once compiled
    return (t * v[:, None, None, :]).sum(-1)


def _grads_fused(x: Tensor, y: Tensor, v: Tensor, ds: Tensor, factored: bool) -> tuple[Tensor, Tensor, Tensor]:
    """da (n, i, A), db (n, j, A), dv (n, A) of Σ_ij ds_ij s_ij."""
    r = _half_tanh(x, y, factored)  # (n, i, j, A)
    g = ds[..., None] * (r - r * r)  # ds ⊙ tanh' / 4
    t = ds[..., None] * (2 * r - 1)  # ds ⊙ tanh
    da = 4 * v[:, None, :] * g.sum(2)  # (n, i, A)
    db = 4 * v[:, None, :] * g.sum(1)  # (n, j, A)
    return da, db, t.sum(2).sum(1)  # reduced over j with da's loop, then over i


def _half_tanh_eager(x: Tensor, y: Tensor, factored: bool) -> Tensor:
    """:func:`_half_tanh`, written once and updated in place: (n, i, j, A)."""
    if factored:
        r = torch.addcmul(x.new_ones(()), x[:, :, None, :], y[:, None, :, :])  # 1 + e^(-2a) e^(-2b)
        return r.reciprocal_()
    r = torch.add(x[:, :, None, :], y[:, None, :, :])
    return r.mul_(2).sigmoid_()


def _scores_eager(x: Tensor, y: Tensor, v: Tensor, factored: bool) -> Tensor:
    r = _half_tanh_eager(x, y, factored)  # (n, i, j, A)
    n, i, j, hidden = r.shape
    s = torch.bmm(r.view(n, i * j, hidden), v[:, :, None]).view(n, i, j)  # (n, i·j, A) x (n, A, 1): Σ_a v r
    return 2 * s - v.sum(-1)[:, None, None]  # Σ_a v (2r - 1)


def _grads_eager(x: Tensor, y: Tensor, v: Tensor, ds: Tensor, factored: bool) -> tuple[Tensor, Tensor, Tensor]:
    r = _half_tanh_eager(x, y, factored)  # (n, i, j, A)
    n, i, j, hidden = r.shape
    dv = torch.bmm(ds.reshape(n, 1, i * j), r.view(n, i * j, hidden)).view(n, hidden)  # (n, 1, i·j) x (n, i·j, A)
    dv = 2 * dv - ds.sum((1, 2))[:, None]  # Σ_ij ds (2r - 1)
    g = r.addcmul_(r, r, value=-1)  # r - r² = tanh' / 4, in place
    da = torch.bmm(ds.reshape(n * i, 1, j), g.view(n * i, j, hidden)).view(n, i, hidden)  # Σ_j ds g
    db = g.mul_(ds[..., None]).sum(1)  # Σ_i ds g, (n, j, A)
    return 4 * v[:, None, :] * da, 4 * v[:, None, :] * db, dv
