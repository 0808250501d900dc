"""Non-finite keys and values: the one rule every backend follows, and the helpers that apply it.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dk / Dv feature dims.

The rule (``attnkit.attention``, every backend alike, forward and backward): a key that query i
may not attend (blocked by the mask, a window, padding) has no influence on query i's output or
weights, whatever its key vector, its value vector or its score holds (NaN, +inf, -inf); the
gradients that flow back through query i are finite. A non-finite key or value that query i *may*
attend is never hidden: query i's whole output row is NaN (and its weights row too when the key
vector is the non-finite one), as a NaN score makes a softmax row NaN, and NaN flows back through
that row's gradients. "May attend" is the mask's verdict, not the weight's: a key that a sparse or
hard normalizer gives weight 0 still poisons the row (the product ``0 · NaN`` would have, too).

How, at the cost of one summing pass over the keys and the values where none is bad (eager CPU),
and of a few passes over them otherwise (never over Tq x Tk x D):

1. :func:`clean`: key and value rows holding a non-finite number are zeroed (``masked_fill``:
   the zeroed rows get zero gradients), so the scores and the product ``weights @ value`` only
   ever see finite keys and values: ``0 · v_j`` is 0 at a blocked key, and no ``0 · NaN`` reaches
   another query's gradient either.
2. :func:`reaches`: which queries may attend a key that was zeroed, from the mask's rule (prefix
   counts for causal, window and padding masks: O(Tq + Tk); the materialized mask otherwise).
3. :func:`poison` (:func:`finish`): those rows are multiplied by NaN (a multiply, so NaN also
   flows backward).

Scores that are NaN or infinite at a blocked key (a custom score, a float mask's bias) are the
normalizers' business: each fills blocked keys with ``masked_fill`` / ``torch.where``, never adds
to them (:mod:`attnkit.core.normalizers`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from .call import AttentionResult, Call
from .masks import And, Causal, KeyPadding, Mask, SlidingWindow

__all__ = ["Bad", "clean", "finish", "guarded", "maybe_any", "nonfinite_rows", "poison", "reaches"]


class Bad:
    """Which key positions held a non-finite number: ``key`` (..., Tk) in the key vector, ``any``
    (..., Tk) in the key or the value vector; leading dims as the key's and value's (broadcast)."""

    def __init__(self, key: Tensor, value: Tensor):
        self.key = key
        self.any = key | value


def nonfinite_rows(x: Tensor) -> Tensor:
    """(..., T, D) -> (..., T): True where the row holds NaN or ±inf.

    One summing pass (``torch.isfinite`` is ~50x slower on CPU): a row's sum is finite exactly when
    its entries are, unless the finite entries sum past the dtype's largest value, which counts as
    non-finite too (float16 sums in float32, so only rows beyond ~1e38 do: their scores overflow).
    """
    wide = torch.float32 if x.dtype == torch.float16 else x.dtype
    return ~torch.isfinite(x.sum(-1, dtype=wide))


def maybe_any(bad: Tensor) -> bool:
    """Whether ``bad`` may hold a True: read on the host in eager CPU runs (no row bad, the common
    case: nothing to clean or poison); assumed elsewhere, so that compiled graphs and CUDA streams
    have no data-dependent branch and no synchronisation (the steps are then no-ops)."""
    if torch.compiler.is_compiling() or bad.device.type != "cpu":
        return True
    return bool(bad.any())


def clean(call: Call) -> tuple[Call, Bad | None]:
    """``call`` with its non-finite key and value rows zeroed, and which positions those were
    (None: none, nothing to do).

    Without a mask every key is attended, so nothing needs zeroing: the call is returned as it is
    (its non-finite rows poison every query anyway).
    """
    bad_key, bad_value = nonfinite_rows(call.key), nonfinite_rows(call.value)  # (..., Tk) each
    bad = Bad(bad_key, bad_value)
    if not maybe_any(bad.any):
        return call, None
    if call.region is None:
        return call, bad
    key = call.key.masked_fill(bad_key[..., None], 0.0)  # (..., Tk, Dk)
    value = call.value.masked_fill(bad_value[..., None], 0.0)  # (..., Tk, Dv)
    return replace(call, key=key, value=value), bad


def _per_head(bad: Tensor, groups: int) -> Tensor:
    """Grouped-query calls: key heads (..., Hkv, Tk) -> query heads (..., H, Tk)."""
    return bad if groups == 1 else bad.repeat_interleave(groups, dim=-2)


def _band(mask: Mask) -> tuple[list[Causal | SlidingWindow], list[KeyPadding]] | None:
    """A mask made of causal, window and padding parts only, split so; None for any other mask."""
    parts = mask.parts if isinstance(mask, And) else (mask,)
    if not all(isinstance(p, (Causal, SlidingWindow, KeyPadding)) for p in parts):
        return None
    return [p for p in parts if not isinstance(p, KeyPadding)], [p for p in parts if isinstance(p, KeyPadding)]


def reaches(region: Mask | None, bad: Tensor, shape: tuple[int, ...], allowed: Tensor | None = None) -> Tensor:
    """(..., Tq, 1) bool: whether query i may attend a key marked in ``bad`` (..., Tk).

    ``shape`` is the scores' (..., Tq, Tk). ``allowed``, the materialized mask, is used when given;
    otherwise a band mask (causal, windows, padding) is evaluated with prefix counts of ``bad``
    along the keys, O(Tq + Tk), and any other mask is materialized.
    """
    tq, tk = shape[-2:]
    if region is None:
        return bad.any(-1, keepdim=True)[..., None].expand(*bad.shape[:-1], tq, 1)
    band = None if allowed is not None else _band(region)
    if band is None:
        if allowed is None:
            allowed = region.materialize(tuple(shape), bad.device)
        return (allowed & bad[..., None, :]).any(-1, keepdim=True)  # (..., Tq, Tk) -> (..., Tq, 1)
    intervals, padding = band
    for part in padding:
        valid = part.materialize(tuple(shape), bad.device)  # (B, 1.., 1, Tk)
        bad = bad & valid[..., 0, :]  # (..., Tk)
    i = torch.arange(tq, device=bad.device)  # (Tq,)
    lo, hi = torch.zeros_like(i), torch.full_like(i, tk - 1)  # keys lo_i .. hi_i are in reach
    for part in intervals:
        if isinstance(part, Causal):
            hi = torch.minimum(hi, i + part.offset)
        else:
            lo = torch.maximum(lo, i + part.offset - part.left)
            hi = torch.minimum(hi, i + part.offset + part.right)
    counts = torch.nn.functional.pad(bad.long().cumsum(-1), (1, 0))  # (..., Tk + 1): bad keys before j
    lo, hi = lo.clamp(0, tk), (hi + 1).clamp(0, tk)  # [lo, hi) in 0 .. Tk
    hit = (counts[..., hi] - counts[..., lo] > 0) & (hi > lo)  # (..., Tq)
    return hit[..., None]


def poison(x: Tensor, hit: Tensor) -> Tensor:
    """``x`` (..., Tq, D) with the rows where ``hit`` (..., Tq, 1) made NaN, forward and backward."""
    return x * torch.where(hit, float("nan"), 1.0).to(x.dtype)


def finish(call: Call, bad: Bad | None, result: AttentionResult, allowed: Tensor | None = None) -> AttentionResult:
    """``result`` of the :func:`clean`-ed ``call`` with the rows that may attend a non-finite key
    or value poisoned: the output by either, the weights and ``log_prob`` by a non-finite key.
    ``allowed``: the materialized mask, where the caller has it."""
    if bad is None:
        return result

    groups, shape = getattr(call, "kv_groups", 1), call.scores_shape
    output = poison(result.output, reaches(call.region, _per_head(bad.any, groups), shape, allowed))
    weights, log_prob = result.weights, result.log_prob
    if weights is not None or log_prob is not None:
        hit_key = reaches(call.region, _per_head(bad.key, groups), shape, allowed)  # (..., Tq, 1)
        weights = None if weights is None else poison(weights, hit_key)
        log_prob = None if log_prob is None else poison(log_prob[..., None], hit_key)[..., 0]
    return AttentionResult(output, weights, log_prob)


def guarded(run: Callable[[Call], AttentionResult]) -> Callable[[Call], AttentionResult]:
    """A backend's ``run`` made to follow the rule: :func:`clean` the call, run it, :func:`finish` it.

    The registry wraps every backend but the reference, which takes the same steps itself.
    """

    @functools.wraps(run)
    def wrapper(call: Call) -> AttentionResult:
        call, bad = clean(call)
        return finish(call, bad, run(call))

    return wrapper
