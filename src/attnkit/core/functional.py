"""``attention()``: score -> normalize -> aggregate, the reference every faster path must match.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dq / Dk / Dv feature dims.
Leading dims (...) are any batch dims, e.g. (B,) or (B, H); they broadcast between q, k and v.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import AttentionError, check_rank, shape_str
from . import normalizers as _normalizers
from . import scores as _scores
from .local import as_window, local_p_region
from .masks import Mask, and_masks, as_mask

__all__ = ["attention", "AttentionResult"]


class AttentionResult(tuple):
    """``(output, weights)``, unpackable as a pair, with ``log_prob`` for stochastic normalizers.

    ``output`` (..., Tq, Dv); ``weights`` (..., Tq, Tk) when asked for (``need_weights=True``), else
    None; ``log_prob`` (..., Tq) from ``normalize="sample"``, else None.
    """

    def __new__(cls, output: Tensor, weights: Tensor | None, log_prob: Tensor | None = None):
        self = super().__new__(cls, (output, weights))
        self.log_prob = log_prob
        return self

    @property
    def output(self) -> Tensor:
        return self[0]

    @property
    def weights(self) -> Tensor | None:
        return self[1]


def _check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    check_rank("query", query, 2, "(..., Tq, Dq)")
    check_rank("key", key, 2, "(..., Tk, Dk)")
    check_rank("value", value, 2, "(..., Tk, Dv)")
    if value.shape[-2] != key.shape[-2]:
        raise AttentionError(
            f"value has shape {shape_str(value.shape)} but expected (..., Tk={key.shape[-2]}, Dv) "
            f"to match key {shape_str(key.shape)}"
        )
    try:
        torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    except RuntimeError:
        raise AttentionError(
            f"leading (batch) dims do not broadcast: query {shape_str(query.shape)}, key "
            f"{shape_str(key.shape)}, value {shape_str(value.shape)}"
        ) from None


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    score: str | _scores.Score = "scaled_dot",
    normalize: str | object = "softmax",
    mask: Mask | Tensor | None = None,
    window: int | tuple[int, int] | None = None,
    centre: Tensor | None = None,
    score_params: Mapping[str, Tensor] | None = None,
    dropout: float = 0.0,
    need_weights: bool = False,
) -> AttentionResult:
    """Attention(Q, K, V) = Σ_j normalize(score(q_i, k_j)) · v_j.

    Args:
        query: (..., Tq, Dq). key: (..., Tk, Dk). value: (..., Tk, Dv).
        score: a name in ``attnkit.SCORES`` or a :class:`~attnkit.core.scores.Score`.
        normalize: a name in ``attnkit.NORMALIZERS`` (default options) or a configured normalizer,
            e.g. ``NORMALIZERS["topk"](k=4)``.
        mask: True = may attend. A :class:`~attnkit.masks.Mask`, a bool tensor, or a float tensor
            added to the scores (-inf = blocked), broadcastable to (..., Tq, Tk).
        window: local region. ``D`` or ``(left, right)``: query i attends keys i-left..i+right
            (sliding window; Luong's local-m). With ``centre``, a symmetric ``D`` around it.
        centre: (..., Tq) real-valued centres p_t for Luong's local-p: keys with |s - p_t| <= D,
            weights multiplied by exp(-(s - p_t)² / (2 (D/2)²)), not renormalized.
        score_params: the score's parameters, e.g. ``{"W": W}`` for ``general``.
        dropout: probability of zeroing a weight before aggregation (pass 0 at eval time).
        need_weights: return the weights (after masking, before dropout); else ``None``.

    Returns:
        :class:`AttentionResult` ``(output (..., Tq, Dv), weights (..., Tq, Tk) | None)``;
        ``.log_prob`` (..., Tq) for ``normalize="sample"``.

    A query row with no allowed key gets zero weights and a zero output, never NaN.

    >>> q, k, v = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 4)
    >>> out, w = attention(q, k, v, need_weights=True)
    >>> out.shape, w.shape
    (torch.Size([2, 3, 4]), torch.Size([2, 3, 5]))
    >>> bool(torch.allclose(w.sum(-1), torch.ones(2, 3)))
    True
    """
    _check_qkv(query, key, value)
    score_fn = _scores.resolve(score)
    normalizer = _normalizers.resolve(normalize)
    if not 0.0 <= dropout < 1.0:
        raise AttentionError(f"dropout must be in [0, 1), got {dropout!r}")

    scores = score_fn(query, key, score_params)  # (..., Tq, Tk)
    region = as_mask(mask)
    gauss = None
    if centre is not None:
        if window is None or not (isinstance(window, int) or window[0] == window[1]):
            raise AttentionError(f"centre (local-p) needs a symmetric window D, got window={window!r}")
        half = window if isinstance(window, int) else window[0]
        if centre.shape != scores.shape[:-1]:
            raise AttentionError(
                f"centre has shape {shape_str(centre.shape)} but expected (..., Tq) = "
                f"{shape_str(scores.shape[:-1])}"
            )
        near, gauss = local_p_region(centre, scores.shape[-1], half)
        region = and_masks(region, near)
    else:
        region = and_masks(region, as_window(window))

    allowed = None
    if region is not None:
        allowed = region.materialize(scores.shape, scores.device)
        bias = region.bias(scores.shape, scores.device, scores.dtype)
        if bias is not None:
            scores = scores + bias

    normalized = normalizer(scores, allowed)
    weights = normalized.weights  # (..., Tq, Tk)
    if gauss is not None:
        weights = weights * gauss
    dropped = F.dropout(weights, dropout) if dropout > 0 else weights
    output = dropped.to(value.dtype) @ value  # (..., Tq, Tk) x (..., Tk, Dv) -> (..., Tq, Dv)
    return AttentionResult(output, weights if need_weights else None, normalized.log_prob)
