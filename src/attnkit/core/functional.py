"""The specification of one attention call: validation (:func:`prepare`) and the eager
:func:`reference` (score -> normalize -> aggregate) that every faster backend must match.
:class:`Call` and :class:`AttentionResult` are defined in :mod:`attnkit.core.call` and exported here too.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dq / Dk / Dv feature dims.
Leading dims (...) are any batch dims, e.g. (B,) or (B, H); they broadcast between q, k and v.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import (
    AttentionError,
    check_bool,
    check_float_input,
    check_probability,
    check_rank,
    check_real_device,
    shape_str,
)
from . import nonfinite as _nonfinite
from . import normalizers as _normalizers
from . import scores as _scores
from .call import AttentionResult, Call, stand_in
from .local import as_window, local_p_region
from .masks import Mask, and_masks, as_mask
from .positions import Rotary, soft_cap

__all__ = ["AttentionResult", "Call", "prepare", "reference"]  # the first two from .call


def _check_qkv(query: Tensor, key: Tensor, value: Tensor, gqa_hint: bool = True) -> None:
    """Ranks, dtypes, the keys' and values' Tk and broadcasting leading dims (``gqa_hint``: the
    broadcast error names ``enable_gqa``, for callers that take it)."""
    check_rank("query", query, 2, "(..., Tq, Dq)")
    check_rank("key", key, 2, "(..., Tk, Dk)")
    check_rank("value", value, 2, "(..., Tk, Dv)")
    check_float_input("query", query)
    check_float_input("key", key, query.dtype, "query")
    check_float_input("value", value, query.dtype, "query")
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
            + (
                " (for key/value with fewer heads than the query, grouped-query attention, pass enable_gqa=True)"
                if gqa_hint
                else ""
            )
        ) from None


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
    scale: float | None = None,
    enable_gqa: bool = False,
    rotary: Rotary | None = None,
    softcap: float | None = None,
) -> Call:
    """Validate the arguments of :func:`attnkit.attention` into a :class:`Call` (raises AttentionError)."""
    for name, x in (("query", query), ("key", key), ("value", value)):
        check_real_device(name, x)
    check_bool("need_weights", need_weights)
    check_bool("enable_gqa", enable_gqa)
    query, key, value, score_params = _autocast(query, key, value, score_params)
    if rotary is not None:  # query i at position i, key j at j (top-left, as the masks)
        if not isinstance(rotary, Rotary):
            raise AttentionError(
                f"rotary must be an attnkit.positions.Rotary or None, got {rotary!r} ({type(rotary).__name__})"
            )
        query, key = rotary._rotate(query, 0, "query"), rotary._rotate(key, 0, "key")
    kv, groups = (key, value), 1
    if enable_gqa:  # validate against stand-ins with the query's head count; the Call keeps Hkv heads
        key, value, groups = _grouped(query, key, value)
    _check_qkv(query, key, value)
    score_fn = _scores.resolve(score)
    score_params = dict(score_params or {})
    score_fn.validate(query, key, score_params)
    for name, param in score_params.items():
        check_float_input(f"score_params[{name!r}]", param, query.dtype, "query")
    normalizer = _normalizers.resolve(normalize)
    check_probability("dropout", dropout)
    region, gauss = as_mask(mask), None
    tq, tk = query.shape[-2], key.shape[-2]
    if centre is not None:
        if window is None or not (isinstance(window, int) or window[0] == window[1]):
            raise AttentionError(f"centre (local-p) needs a symmetric window D, got window={window!r}")
        half = window if isinstance(window, int) else window[0]
        lead = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
        if not isinstance(centre, Tensor):
            raise AttentionError(
                f"centre must be a torch.Tensor of positions p_t (..., Tq), got {type(centre).__name__}"
            )
        if centre.dtype == torch.bool or centre.is_complex():
            raise AttentionError(
                f"centre has dtype {centre.dtype} but expected a floating or integer tensor of positions p_t (..., Tq)"
            )
        if centre.shape != (*lead, tq):
            raise AttentionError(
                f"centre has shape {shape_str(centre.shape)} but expected (..., Tq) = {shape_str((*lead, tq))}"
            )
        if not torch.compiler.is_compiling() and not torch.isfinite(centre).all():
            raise AttentionError("centre (local-p) holds NaN or inf; expected finite positions p_t")
        near, gauss = local_p_region(centre, tk, half)
        region = and_masks(region, near)
    else:
        region = and_masks(region, as_window(window))
    if scale is not None:
        query, score_params = _fold_scale(scale, score_fn, query, key, score_params)
    if softcap is not None:  # after scale=: the scaled score is capped, as Gemma 2's
        score_fn = soft_cap(score_fn, softcap)
    return Call(query, *kv, score_fn, normalizer, region, gauss, score_params, dropout, need_weights, groups)


def _autocast(query, key, value, score_params):
    """Under an enabled ``torch.autocast`` on the query's device, attention runs in the autocast
    dtype, as torch's own ``scaled_dot_product_attention`` does there: float32 query, key, value and
    score parameters (a module's float32 parameters beside its lower-precision projections) are cast
    to it, so every backend sees one dtype. Other dtypes are left to the dtype check."""
    if not isinstance(query, Tensor) or not torch.is_autocast_enabled(query.device.type):
        return query, key, value, score_params
    low = torch.get_autocast_dtype(query.device.type)

    def cast(t):
        return t.to(low) if isinstance(t, Tensor) and t.dtype == torch.float32 else t

    params = None if score_params is None else {name: cast(p) for name, p in score_params.items()}
    return cast(query), cast(key), cast(value), params


def _grouped(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, int]:
    """``enable_gqa=True``: key/value (..., Hkv, Tk, D) serve groups of H / Hkv query heads of
    query (..., H, Tq, D), as SDPA's ``enable_gqa``. Returns stand-ins of the repeated key and value
    (shapes only) and the group size H / Hkv."""
    check_rank("query", query, 3, "(..., H, Tq, D) with enable_gqa=True")
    check_rank("key", key, 3, "(..., Hkv, Tk, D) with enable_gqa=True")
    check_rank("value", value, 3, "(..., Hkv, Tk, Dv) with enable_gqa=True")
    h, hkv = query.shape[-3], key.shape[-3]
    if value.shape[-3] != hkv or hkv < 1 or h % hkv:
        raise AttentionError(
            f"enable_gqa=True needs key and value with the same number of heads Hkv (dim -3) that divides "
            f"the query's H: query {shape_str(query.shape)} has H={h}, key {shape_str(key.shape)} and value "
            f"{shape_str(value.shape)} have Hkv={hkv} and {value.shape[-3]}"
        )
    groups = h // hkv
    return stand_in(key, groups), stand_in(value, groups), groups


def _fold_scale(
    scale: float, score: _scores.Score, query: Tensor, key: Tensor, params: dict[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    """``scale=``: scores multiplied by ``scale`` (for ``scaled_dot`` in place of 1/√Dk, as SDPA's
    ``scale``), folded into the query or a score parameter so every backend computes it unchanged.

    A scale whose fold overflows (a scaled query or parameter past the dtype's largest number, a
    cosine temperature divided below its smallest normal one) raises: its scores would be inf and
    the softmax rows NaN. Checked on the values, outside ``torch.compile`` (as ``centre``'s)."""
    rule = "scale must be a finite number > 0 (it multiplies the scores)"
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise AttentionError(f"{rule}, got {scale!r}")
    try:
        s = float(scale)
    except OverflowError:  # an int past float's range, e.g. 2**2000
        raise AttentionError(f"{rule}, got an int of {scale.bit_length()} bits, too large for a float") from None
    if not math.isfinite(s) or s <= 0:
        raise AttentionError(f"{rule}, got {scale!r}")
    name, params = score.name, dict(params)
    if name == "dot":  # (q·s)ᵀk = s·qᵀk
        return _unless_overflow(scale, "query · scale", query, query * s), params
    if name == "scaled_dot":  # (q·s·√Dk)ᵀk / √Dk = s·qᵀk
        return _unless_overflow(scale, "query · scale · √Dk", query, query * (s * math.sqrt(key.shape[-1]))), params
    multiplied = {"general": "W", "concat": "w", "additive": "v"}  # qᵀ(sW)k, (sw)ᵀ[q; k], (sv)ᵀtanh(...)
    if name in multiplied:
        p = multiplied[name]
        params[p] = _unless_overflow(scale, f"params[{p!r}] · scale", params[p], params[p] * s)
    elif name == "cosine":  # cos / (τ/s)
        tau = params.get("temperature")
        params["temperature"] = query.new_tensor(1.0 / s) if tau is None else tau / s
        if not torch.compiler.is_compiling():
            low = _scores.not_positive(params["temperature"])
            if low is not None:
                dtype = params["temperature"].dtype
                tiny = torch.finfo(dtype).tiny
                raise AttentionError(
                    f"scale={scale!r} overflows the scores: cosine's temperature / scale is {low:.3g}, below "
                    f"{tiny:.3g}, the smallest normal {dtype}, and the scores are divided by it; expected a "
                    f"smaller scale"
                )
    elif name.endswith("+softcap"):
        raise AttentionError(
            f"scale= cannot rescale the soft-capped score {name!r}: whether it multiplies inside or outside the "
            f"tanh changes the result; pass the base score and softcap= instead (attention(..., score=base, "
            f"scale=s, softcap=cap) caps the scaled score, as Gemma 2)"
        )
    else:
        raise AttentionError(
            f"scale= is defined for the scores dot, scaled_dot, general, cosine, concat and additive, "
            f"not for score={name!r}; fold the factor into the score function instead"
        )
    return query, params


def _unless_overflow(scale: float, what: str, before: Tensor, after: Tensor) -> Tensor:
    """``after``, ``before`` times the scale, unless the product overflowed where ``before`` was finite
    (rows whose sum is no longer finite: :func:`~attnkit.core.nonfinite.nonfinite_rows`)."""
    if not torch.compiler.is_compiling():
        overflow = _nonfinite.nonfinite_rows(after) & ~_nonfinite.nonfinite_rows(before)
        if bool(overflow.any()):
            raise AttentionError(
                f"scale={scale!r} overflows the scores: {what} exceeds {torch.finfo(after.dtype).max:.3g}, the "
                f"largest {after.dtype}, so the scores would be inf and the weights NaN; expected a smaller scale"
            )
    return after


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
