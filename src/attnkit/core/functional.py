"""The specification of one attention call: validation (:func:`prepare`) and the eager
:func:`reference` (score -> normalize -> aggregate) that every faster backend must match.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dq / Dk / Dv feature dims.
Leading dims (...) are any batch dims, e.g. (B,) or (B, H); they broadcast between q, k and v.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import AttentionError, check_rank, shape_str
from . import nonfinite as _nonfinite
from . import normalizers as _normalizers
from . import scores as _scores
from .local import as_window, local_p_region
from .masks import Mask, and_masks, as_mask

__all__ = ["AttentionResult", "Call", "prepare", "reference"]


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


@dataclass(frozen=True, eq=False)
class Call:
    """One validated attention call: what every backend receives, and what dispatch decides on.

    ``region`` is the whole mask (user mask, window, local-p's neighbourhood) as one
    :class:`~attnkit.masks.Mask`; ``gauss`` is local-p's Gaussian factor (..., Tq, Tk) or None.
    """

    query: Tensor  # (..., Tq, Dq)
    key: Tensor  # (..., Tk, Dk)
    value: Tensor  # (..., Tk, Dv)
    score: _scores.Score
    normalizer: object
    region: Mask | None
    gauss: Tensor | None
    score_params: Mapping[str, Tensor]
    dropout: float
    need_weights: bool

    @property
    def scores_shape(self) -> tuple[int, ...]:
        lead = torch.broadcast_shapes(self.query.shape[:-2], self.key.shape[:-2])
        return (*lead, self.query.shape[-2], self.key.shape[-2])

    @property
    def requires_grad(self) -> bool:
        """Whether autograd will want gradients from this call."""
        tensors = [self.query, self.key, self.value, *self.score_params.values()]
        return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def prepare(
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
) -> Call:
    """Validate the arguments of :func:`attnkit.attention` into a :class:`Call` (raises AttentionError)."""
    _check_qkv(query, key, value)
    score_fn = _scores.resolve(score)
    score_params = dict(score_params or {})
    score_fn.validate(query, key, score_params)
    normalizer = _normalizers.resolve(normalize)
    if not 0.0 <= dropout < 1.0:
        raise AttentionError(f"dropout must be in [0, 1), got {dropout!r}")
    region, gauss = as_mask(mask), None
    tq, tk = query.shape[-2], key.shape[-2]
    if centre is not None:
        if window is None or not (isinstance(window, int) or window[0] == window[1]):
            raise AttentionError(f"centre (local-p) needs a symmetric window D, got window={window!r}")
        half = window if isinstance(window, int) else window[0]
        lead = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
        if centre.shape != (*lead, tq):
            raise AttentionError(
                f"centre has shape {shape_str(centre.shape)} but expected (..., Tq) = {shape_str((*lead, tq))}"
            )
        near, gauss = local_p_region(centre, tk, half)
        region = and_masks(region, near)
    else:
        region = and_masks(region, as_window(window))
    return Call(query, key, value, score_fn, normalizer, region, gauss, score_params, dropout, need_weights)


def reference(call: Call) -> AttentionResult:
    """The eager implementation: the specification every other backend is tested against.

    Non-finite inputs (:mod:`attnkit.core.nonfinite`, every backend alike): a key that query i may
    not attend has no influence on query i's output, weights or gradients, whatever its key, value
    or score holds (NaN, ±inf); a non-finite key or value that query i may attend makes query i's
    output row NaN (and its weights row, for a non-finite key), forward and backward.
    """
    call, bad = _nonfinite.clean(call)  # non-finite key and value rows zeroed where a mask could hide them
    scores = call.score.fn(call.query, call.key, call.score_params)  # (..., Tq, Tk)
    allowed = None
    if call.region is not None:
        allowed = call.region.materialize(scores.shape, scores.device)
        bias = call.region.bias(scores.shape, scores.device, scores.dtype)
        if bias is not None:
            scores = scores + bias
    normalized = call.normalizer(scores, allowed)
    weights = normalized.weights  # (..., Tq, Tk)
    if call.gauss is not None:
        weights = weights * call.gauss
    dropped = F.dropout(weights, call.dropout) if call.dropout > 0 else weights
    output = dropped.to(call.value.dtype) @ call.value  # (..., Tq, Tk) x (..., Tk, Dv) -> (..., Tq, Dv)
    result = AttentionResult(output, weights if call.need_weights else None, normalized.log_prob)
    return _nonfinite.finish(call, bad, result, allowed)  # rows that may attend a non-finite key: NaN
