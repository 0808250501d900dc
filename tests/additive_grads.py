"""The additive backends' tests' one measurement: what an attention call gives and what flows back."""

from __future__ import annotations

import torch

import attnkit

F64 = torch.float64


def run(backend, q, k, value, params, **kwargs) -> list:
    """[output, weights, grads of q, k, value and each parameter] of ``attnkit.attention`` with the
    additive score on ``backend``, for a fixed loss of the output (and of the weights, when given: their
    own gradient path, through the saved log-sum-exp or a kernel's dS)."""
    inputs = [q, k, value, *params.values()]
    for t in inputs:
        t.grad = None
    out, weights = attnkit.attention(q, k, value, score="additive", score_params=params, backend=backend, **kwargs)
    loss = (out.double() * torch.linspace(-1, 1, out.shape[-1], dtype=F64, device=out.device)).sum()
    if weights is not None:
        c = torch.linspace(0, 1, weights.shape[-1], dtype=F64, device=out.device)
        loss = loss + (weights.double() * c).sum()
    loss.backward()
    return [out.detach(), None if weights is None else weights.detach(), *(t.grad for t in inputs)]
