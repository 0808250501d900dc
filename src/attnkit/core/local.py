"""Local attention regions (Luong et al., 2015): hard-locate a centre, attend softly around it.

- local-m: the centre of query t is t itself, so the region is a sliding window of D keys on each
  side, :func:`attnkit.masks.sliding_window` (also the window of local self-attention).
- local-p: the centre p_t = (S - 1) · sigmoid(v_pᵀ tanh(W_p h_t)) is predicted from the query
  (S = the number of real keys, so p_t lies on a real position), keys with ``|s - p_t| <= D`` are
  allowed, and the normalized weights are multiplied by a Gaussian exp(-(s - p_t)² / (2σ²)) with
  σ = D / 2. As in the paper, the product is not renormalized: local-p weights sum to at most 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..errors import AttentionError, check_int, shape_str
from .masks import SlidingWindow

__all__ = ["as_window", "local_p_region", "predict_centre"]


def as_window(window: int | tuple[int, int] | None, offset: int = 0) -> SlidingWindow | None:
    """``window=D`` means (D, D); ``window=(left, right)``: query i attends keys i-left..i+right."""
    if window is None:
        return None
    if isinstance(window, int) and not isinstance(window, bool):
        window = (window, window)
    if not (isinstance(window, (tuple, list)) and len(window) == 2):
        raise AttentionError(f"window must be an int D or a pair (left, right), got {window!r}")
    return SlidingWindow(window[0], window[1], offset)


def local_p_region(centre: Tensor, tk: int, half_width: int) -> tuple[Tensor, Tensor]:
    """Region and Gaussian factor of local-p for centres (..., Tq): both (..., Tq, Tk)."""
    check_int("local-p window D", half_width, 1)
    s = torch.arange(tk, device=centre.device, dtype=centre.dtype)  # (Tk,)
    dist = s - centre.unsqueeze(-1)  # (..., Tq, Tk)
    sigma = half_width / 2
    return dist.abs() <= half_width, torch.exp(-(dist**2) / (2 * sigma**2))


def predict_centre(query: Tensor, params: Mapping[str, Tensor], lengths: Tensor) -> Tensor:
    """p_t = (S - 1) · sigmoid(v_pᵀ tanh(W_p h_t)).

    ``query`` (B, Tq, Dq), ``params`` W_p (Dq, A) and v_p (A,), ``lengths`` (B,) real keys per
    example. Returns the centres (B, Tq), real-valued positions in [0, S - 1].
    """
    if lengths.shape != query.shape[:1]:
        raise AttentionError(
            f"lengths has shape {shape_str(lengths.shape)} but expected (B,) = ({query.shape[0]},)"
        )
    h = torch.tanh(query @ params["W_p"])  # (B, Tq, Dq) x (Dq, A) -> (B, Tq, A)
    gate = torch.sigmoid(h @ params["v_p"])  # (B, Tq)
    return (lengths.to(query.dtype) - 1).clamp(min=0)[:, None] * gate  # (B, Tq)
