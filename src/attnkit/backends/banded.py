"""Banded sliding-window attention: O(T·w) time and memory, forward and backward.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dq / Dk / Dv feature dims;
here also nb query blocks, Bq queries per block, W keys per block (the band), L = (nb - 1)·Bq + W.

A sliding window (optionally ∧ causal, ∧ key padding, ∧ other windows) lets query i attend keys
i + lo .. i + hi only. The queries are cut into nb blocks of Bq; block b reads the contiguous band of
W = Bq + hi - lo keys starting at b·Bq + lo, as an ``unfold`` view of the keys, so the scores are
(nb, ..., Bq, W) instead of (..., Tq, Tk). Score, normalizer, dropout and aggregation are the
reference's own calls, run on the band: ``call.score.fn`` and ``call.normalizer`` take any leading
dims, and ``allowed`` is False outside the window, on keys past either end and on padded keys, so
any score and any normalizer give what the reference gives. Autograd saves band-sized tensors
only, so the backward is O(T·w) as well.

The block dim nb goes in front, (nb, ..., Bq, Dq): score parameters broadcast against the leading
dims from the right (per-head ``(H, ...)``), so they line up with (nb, B, H) as they do with (B, H).

``need_weights=True`` scatters the band weights into a dense (..., Tq, Tk) tensor: O(Tq·Tk) memory,
paid only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.functional import AttentionResult, Call
from ..core.masks import And, Causal, KeyPadding, SlidingWindow
from ..core.normalizers import Normalized, Softmax, TopK
from ..errors import AttentionError
from .registry import register
from .sdpa import supports as sdpa_supports

__all__ = ["Band", "plan", "run", "supports", "worthwhile"]

# queries per block: a block reads Bq + (hi - lo) keys, of which each query may attend hi - lo + 1,
# so a block much wider than the window wastes scores, and a much narrower one copies the keys and
# values more often and runs small matmuls. Measured on CPU (float32, Dh=64, T=8192): windows of 8,
# 32 and 256 keys are fastest at Bq = 16, 32 and 64..128 (flat), which _block_size picks.
MIN_BLOCK, MAX_BLOCK = 16, 128


@dataclass(frozen=True)
class Band:
    """Query i may attend keys i + lo .. i + hi (clipped to the keys); Bq queries per block."""

    lo: int  # first allowed key, relative to the query
    hi: int  # last allowed key, relative to the query (hi >= lo)
    block: int  # Bq
    padding: tuple[KeyPadding, ...]  # key-padding parts of the mask, ANDed in

    @property
    def width(self) -> int:
        """W: the keys one block of Bq queries reads."""
        return self.block + self.hi - self.lo


def _block_size(span: int, tq: int, min_keys: int) -> int:
    """Bq: the window's width rounded up to a multiple of 16, within [MIN_BLOCK, MAX_BLOCK], at most Tq."""
    block = min(max(-(-span // 16) * 16, MIN_BLOCK), MAX_BLOCK, tq)
    return max(block, min_keys - span, 1)  # a block must see at least min_keys keys (topk's k)


def plan(call: Call) -> Band | str:
    """The band of ``call``, or a one-line reason why its mask is not a band this backend can run."""
    if call.gauss is not None:
        return "local-p's Gaussian factor is dense (..., Tq, Tk)"
    region = call.region
    parts = region.parts if isinstance(region, And) else (region,) if region is not None else ()
    other = [p for p in parts if not isinstance(p, (SlidingWindow, Causal, KeyPadding))]
    if other:
        return f"mask part {other[0]!r} is not a sliding window, causal or key-padding mask"
    windows = [p for p in parts if isinstance(p, SlidingWindow)]
    if not windows:
        return "no sliding window in the mask"
    tq, tk = call.query.shape[-2], call.key.shape[-2]
    if tq == 0 or tk == 0:
        return f"no queries or no keys (Tq={tq}, Tk={tk})"
    lo = max(w.offset - w.left for w in windows)
    hi = min([w.offset + w.right for w in windows] + [c.offset for c in parts if isinstance(c, Causal)])
    lo, hi = max(lo, 1 - tq), min(hi, tk - 1)  # no query reaches further: keys are 0 .. Tk-1
    if hi < lo:
        return f"the mask {region!r} leaves no key for any query"
    min_keys = 1
    if isinstance(call.normalizer, TopK):
        if call.normalizer.k > tk:
            return f"topk k={call.normalizer.k} is larger than Tk={tk}"
        min_keys = call.normalizer.k
    padding = tuple(p for p in parts if isinstance(p, KeyPadding))
    return Band(lo, hi, _block_size(hi - lo, tq, min_keys), padding)


def supports(call: Call) -> str | None:
    """None when the mask is a band this backend can run (however wide), else why not."""
    band = plan(call)
    return band if isinstance(band, str) else None


def worthwhile(call: Call) -> str | None:
    """Automatic dispatch only: None when the band is narrow enough to beat the dense reference."""
    band = plan(call)
    if isinstance(band, str):
        return band
    tk = call.key.shape[-2]
    # measured (CPU, float32, H=8, Dh=64): against the eager reference the band pays off up to half
    # of Tk; against fused SDPA, where SDPA can take the call, only up to about a quarter
    # (T=1024, window 255: banded 49 ms, SDPA 23 ms, reference 179 ms forward)
    share, rival = (4, "SDPA") if sdpa_supports(call) is None else (2, "the dense reference")
    if share * band.width > tk:
        return (
            f"window keys i{band.lo:+d}..i{band.hi:+d} with blocks of {band.block} queries read "
            f"{band.width} keys per block, more than 1/{share} of Tk={tk}; {rival} is faster"
        )
    return None


def _blocks(x: Tensor, nb: int, bq: int) -> Tensor:
    """(..., T, D) -> (nb, ..., Bq, D), zero-padding T up to nb·Bq."""
    x = F.pad(x, (0, 0, 0, nb * bq - x.shape[-2]))  # (..., nb·Bq, D)
    return x.unflatten(-2, (nb, bq)).movedim(-3, 0)  # (nb, ..., Bq, D)


def _unblock(x: Tensor, t: int) -> Tensor:
    """(nb, ..., Bq, D) -> (..., T, D): the inverse of :func:`_blocks`."""
    return x.movedim(0, -3).flatten(-3, -2)[..., :t, :]


def _softmax(scores: Tensor, allowed: Tensor) -> Normalized:
    """Softmax over the allowed band keys: -inf filled in at the blocked keys, and one softmax.

    Filled, not added as a -inf bias: an inf or NaN score at a blocked key would turn into NaN and
    leak into its row. A row with no allowed key (the padded queries of the last block, a fully
    padded example) is filled with zeros instead, gets a finite softmax, and is zeroed after: 0,
    never NaN, as the reference.
    """
    has_key = allowed.any(-1, keepdim=True)  # (nb, 1.., Bq, 1)
    fill = torch.where(has_key, float("-inf"), 0.0).to(scores.dtype)  # (nb, 1.., Bq, 1): small
    weights = torch.softmax(torch.where(allowed, scores, fill), dim=-1)
    if torch.compiler.is_compiling() or not bool(has_key.all()):  # no data-dependent branch in a graph
        weights = weights * has_key
    return Normalized(weights)


def run(call: Call) -> AttentionResult:
    """The call on the band; agrees with :func:`~attnkit.core.functional.reference`."""
    band = plan(call)
    if isinstance(band, str):
        raise AttentionError(f"backend='banded' cannot run this call: {band}")
    query, key, value = call.query, call.key, call.value
    lead = call.scores_shape[:-2]  # (...,) of the scores: q and k broadcast
    n = max(len(lead), value.dim() - 2)  # leading dims of the output
    query, key, value = (x.reshape((1,) * (n + 2 - x.dim()) + x.shape) for x in (query, key, value))
    tq, tk = query.shape[-2], key.shape[-2]
    bq, w = band.block, band.width
    nb = -(-tq // bq)
    device = query.device

    pos = torch.arange(band.lo, band.lo + (nb - 1) * bq + w, device=device)  # (L,) absolute key positions
    index = pos.clamp(0, tk - 1)  # out-of-range positions read a real key, then are masked

    def bands(x: Tensor) -> Tensor:  # (..., Tk, D) -> (nb, ..., W, D), block b from key b·Bq + lo
        return x.index_select(-2, index).unfold(-2, w, bq).movedim(-3, 0).transpose(-1, -2)

    q = _blocks(query, nb, bq)  # (nb, ..., Bq, Dq)
    k, v = bands(key), bands(value)  # (nb, ..., W, Dk), (nb, ..., W, Dv)

    # allowed: key slot s of block b is key j = b·Bq + lo + s; for query i = b·Bq + r, j - i = lo + s - r
    r = torch.arange(bq, device=device)[:, None]  # (Bq, 1)
    s = torch.arange(w, device=device)[None, :]  # (1, W)
    window = (s >= r) & (s <= r + band.hi - band.lo)  # (Bq, W): lo <= j - i <= hi
    real = ((pos >= 0) & (pos < tk)).unfold(0, w, bq)  # (nb, W): key inside 0 .. Tk-1
    allowed = (window & real[:, None, :]).reshape(nb, *(1,) * n, bq, w)  # (nb, 1.., Bq, W)
    for part in band.padding:
        part.materialize(call.scores_shape, device)  # the reference's shape check and message
        valid = part.valid.to(device).index_select(-1, index)  # (B, L)
        valid = valid.unfold(-1, w, bq).movedim(1, 0)  # (nb, B, W)
        b = valid.shape[1]
        allowed = allowed & valid.reshape(nb, *(1,) * (n - len(lead)), b, *(1,) * (len(lead) - 1), 1, w)

    scores = call.score.fn(q, k, call.score_params)  # (nb, ..., Bq, W)
    if type(call.normalizer) is Softmax:  # two passes over the band instead of the reference's three
        normalized = _softmax(scores, allowed)
    else:
        normalized = call.normalizer(scores, allowed)
    weights = normalized.weights  # (nb, ..., Bq, W)
    dropped = F.dropout(weights, call.dropout) if call.dropout > 0 else weights
    out = dropped.to(v.dtype) @ v  # (nb, ..., Bq, W) x (nb, ..., W, Dv) -> (nb, ..., Bq, Dv)
    out = _unblock(out, tq)  # (..., Tq, Dv)

    dense = None
    if call.need_weights:  # O(Tq·Tk): scatter each block's band into its rows; column Tk takes the rest
        cols = torch.where(real, pos.unfold(0, w, bq), tk)  # (nb, W)
        cols = cols.reshape(nb, *(1,) * (weights.dim() - 2), w).expand(weights.shape)  # (nb, ..., Bq, W)
        dense = weights.new_zeros((*weights.shape[:-1], tk + 1)).scatter(-1, cols, weights)  # (nb, ..., Bq, Tk+1)
        dense = _unblock(dense, tq)[..., :tk]  # (..., Tq, Tk)
        dense = dense.reshape(*lead, tq, tk)
    log_prob = normalized.log_prob
    if log_prob is not None:  # (nb, ..., Bq) -> (..., Tq)
        log_prob = _unblock(log_prob[..., None], tq)[..., 0].reshape(*lead, tq)
    return AttentionResult(out, dense, log_prob)


register(
    "banded",
    run,
    supports,
    "sliding window (∧ causal, key padding) on query blocks and their bands of keys; O(T·w)",
    worthwhile,
)
