"""Banded sliding-window attention: O(T·w) time and memory, forward and backward.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dq / Dk / Dv feature dims;
here also N = B·H.. (the leading dims flattened), nb query blocks, Bq queries per block, W keys per
block (the band), L = (nb - 1)·Bq + W.

A sliding window (optionally ∧ causal, ∧ key padding, ∧ other windows) lets query i attend keys
i + lo .. i + hi only. The queries are cut into nb blocks of Bq; block b reads the contiguous band of
W = Bq + hi - lo keys starting at b·Bq + lo, as an ``unfold`` view of the keys, so the scores are
(nb, ..., Bq, W) instead of (..., Tq, Tk). Two ways to run the blocks:

- fused (dot-family scores with softmax, no weights asked for: what :mod:`.sdpa` takes):
  ``scaled_dot_product_attention`` on the blocks, the blocks as SDPA's batch dim and N as its head
  dim: query (nb, N, Bq, Dh), key and value (nb, N, W, Dh) as overlapping views of the keys (no
  copy). One call takes the inner run of blocks, whose bands lie inside the keys, with one
  (1, 1, Bq, W) mask for all of them; one call each takes the few edge blocks at either end, whose
  bands reach past the keys (zero-padded there, and masked). With key padding the masks are per
  example, (blocks, N, Bq, W). PyTorch's fused kernel (the flash-style kernel on CPU) runs the
  forward and the backward in a few parallel regions and never holds more than a tile of scores,
  so it is fast and holds up when the cores are shared. The keys' gradient comes back per block,
  (nb, N, W, Dh), and :class:`_Bands` sums the overlaps in W / Bq adds.
- generic (any score, normalizer, ``need_weights``): score, normalizer, dropout and aggregation
  are the reference's own calls, run on the band: ``call.score.fn`` and ``call.normalizer`` take
  any leading dims, and ``allowed`` is False outside the window, on keys past either end and on
  padded keys, so any score and any normalizer give what the reference gives. Autograd saves
  band-sized tensors only, so the backward is O(T·w) as well. The block dim nb goes in front,
  (nb, ..., Bq, Dq): score parameters broadcast against the leading dims from the right
  (per-head ``(H, ...)``), so they line up with (nb, B, H) as they do with (B, H).

``need_weights=True`` scatters the band weights into a dense (..., Tq, Tk) tensor: O(Tq·Tk) memory,
paid only when asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.functional import AttentionResult, Call
from ..core.masks import And, Causal, KeyPadding, SlidingWindow
from ..core.normalizers import Normalized, Softmax, TopK
from ..errors import AttentionError
from .registry import register
from .sdpa import as_dot_product
from .sdpa import supports as sdpa_supports

__all__ = ["Band", "fused", "plan", "run", "supports", "worthwhile"]

# queries per block: a block reads Bq + (hi - lo) keys, of which each query may attend hi - lo + 1,
# so a block much wider than the window wastes scores, and a much narrower one copies the keys and
# values more often and runs small matmuls. Measured on CPU (float32, Dh=64, T=8192): windows of 8,
# 32 and 256 keys are fastest at Bq = 16, 32 and 64..128 (flat), which _block_size picks.
MIN_BLOCK, MAX_BLOCK = 16, 128
# the fused path: SDPA's CPU kernel works on tiles of 32 queries, and each block's key gradient is
# a (W, Dh) slab of its own, so blocks are wider. Measured on one thread (float32, N=8, Dh=64,
# fwd+bwd): a causal window of 256 keys is fastest at Bq = 64..128 (T=16384), a symmetric one of
# 512 keys at 128 (T=8192; 64 and 256 no faster), windows of 8..64 keys at 32: about w / 4.
FUSED_MIN_BLOCK, FUSED_MAX_BLOCK = 32, 128


@dataclass(frozen=True)
class Band:
    """Query i may attend keys i + lo .. i + hi (clipped to the keys); Bq queries per block."""

    lo: int  # first allowed key, relative to the query
    hi: int  # last allowed key, relative to the query (hi >= lo)
    block: int  # Bq
    padding: tuple[KeyPadding, ...]  # key-padding parts of the mask, ANDed in
    fused: bool = False  # run on one fused SDPA call (dot-family scores with softmax)

    @property
    def width(self) -> int:
        """W: the keys one block of Bq queries reads."""
        return self.block + self.hi - self.lo


def _block_size(span: int, tq: int, min_keys: int) -> int:
    """Bq: the window's width rounded up to a multiple of 16, within [MIN_BLOCK, MAX_BLOCK], at most Tq."""
    block = min(max(-(-span // 16) * 16, MIN_BLOCK), MAX_BLOCK, tq)
    return max(block, min_keys - span, 1)  # a block must see at least min_keys keys (topk's k)


def _fused_block_size(span: int, tq: int) -> int:
    """Bq of the fused path: a quarter of the window's width (hi - lo) rounded up to a multiple of
    32, within [FUSED_MIN_BLOCK, FUSED_MAX_BLOCK], at most Tq."""
    return min(max(-(-span // 128) * 32, FUSED_MIN_BLOCK), FUSED_MAX_BLOCK, tq)


def fused(call: Call) -> str | None:
    """None when the call's band runs on one fused SDPA call (:func:`_run_fused`), else why not."""
    reason = sdpa_supports(call)
    if reason is not None:
        return reason
    if 0 in call.scores_shape:
        return f"scores of shape {call.scores_shape} are empty"
    return None


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
    if fused(call) is None:
        return Band(lo, hi, _fused_block_size(hi - lo, tq), padding, fused=True)
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
    # measured (CPU, float32, H=8, Dh=64, fwd+bwd, one thread): the band pays off up to about half
    # of Tk against its rival. Fused path against dense masked SDPA, T=1024: window ±192 (W=480)
    # 1.6x faster, ±256 (W=640) 1.3x, ±384 (W=896) 0.8x; causal 512 (W=640) 1.2x. Generic path
    # against the eager reference: up to half of Tk as well.
    rival = "SDPA" if band.fused else "the dense reference"
    if 2 * band.width > tk:
        return (
            f"window keys i{band.lo:+d}..i{band.hi:+d} with blocks of {band.block} queries read "
            f"{band.width} keys per block, more than 1/2 of Tk={tk}; {rival} is faster"
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


def _pieces(nb: int, bq: int, w: int, lo: int, tk: int) -> list[tuple[int, int]]:
    """The blocks 0 .. nb-1 cut into runs (b0, b1): the inner run, whose bands lie inside the keys
    0 .. Tk-1, and the edge runs before and after it, whose bands reach past either end."""
    first = min(nb, max(0, -(lo // bq)))  # block b starts at key b·Bq + lo >= 0 from here
    last = max(first, min(nb, (tk - lo - w) // bq + 1))  # and ends at b·Bq + lo + W - 1 <= Tk - 1 before here
    return [(b0, b1) for b0, b1 in ((0, first), (first, last), (last, nb)) if b1 > b0]


class _Bands(torch.autograd.Function):
    """(N, Tk, D) -> one (b1 - b0, N, W, D) tensor per run of blocks (b0, b1): block b is keys
    b·Bq + lo .. b·Bq + lo + W - 1, zeros outside 0 .. Tk-1.

    A run whose bands lie inside the keys is an overlapping view of them (no copy); an edge run is
    a view of its zero-padded keys. ``unfold``'s own backward scatters the band gradient element by
    element; this one sums the overlaps as ceil(W / Bq) slab adds of (N, b1 - b0, Bq, D), 2-3x
    faster on CPU, into one (N, Tk, D) gradient for all runs.
    """

    @staticmethod
    def forward(ctx, x: Tensor, lo: int, width: int, step: int, pieces: list[tuple[int, int]]):
        ctx.tk, ctx.lo, ctx.width, ctx.step, ctx.pieces = x.shape[-2], lo, width, step, pieces
        sizes = [b1 - b0 for b0, b1 in pieces]
        ctx.widest = sizes.index(max(sizes))
        bands = []
        for b0, b1 in pieces:
            first, length = b0 * step + lo, (b1 - b0 - 1) * step + width  # keys first .. first + length - 1
            rows = _rows(x, first, length)  # (N, length, D)
            bands.append(rows.unfold(-2, width, step).permute(1, 0, 3, 2))  # (N, nbp, D, W) -> (nbp, N, W, D)
        return tuple(bands)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        tk, lo, w, bq = ctx.tk, ctx.lo, ctx.width, ctx.step
        given = [(piece, g.transpose(0, 1)) for piece, g in zip(ctx.pieces, grads) if g is not None]  # (N, nbp, W, D)
        if not given:
            return None, None, None, None, None
        widest = grads[ctx.widest] is not None  # its slab 0 is copied, not added: no pass to zero its rows first
        m = -(-w // bq)  # slabs of Bq keys per block; slab j of block b lands on keys (b + j)·Bq + lo ..
        nb = ctx.pieces[-1][1]
        first = min(lo, 0)  # row 0 of the buffer is key first; block b's slab 0 starts at row off + b·Bq
        off = lo - first
        n, _, _, d = given[0][1].shape
        buf = given[0][1].new_empty(n, max(off + (nb + m - 1) * bq, tk - first), d)  # (N, rows, D)

        def slabs(b0: int, b1: int, j: int) -> Tensor:  # (N, b1 - b0, Bq, D): slab j of blocks b0 .. b1-1
            return buf[:, off + (b0 + j) * bq : off + (b1 + j) * bq].unflatten(1, (b1 - b0, bq))

        b0, b1 = ctx.pieces[ctx.widest] if widest else (0, 0)
        buf[:, : off + b0 * bq].zero_()
        buf[:, off + b1 * bq :].zero_()
        if widest:
            slabs(b0, b1, 0).copy_(grads[ctx.widest].transpose(0, 1)[:, :, :bq])
        for (c0, c1), g in given:
            for j in range(1 if widest and (c0, c1) == (b0, b1) else 0, m):
                rows = min(bq, w - j * bq)
                slabs(c0, c1, j)[:, :, :rows] += g[:, :, j * bq : j * bq + rows]  # (N, nbp, rows, D)
        return buf[:, -first : tk - first], None, None, None, None  # keys 0 .. Tk-1


def _rows(x: Tensor, first: int, length: int) -> Tensor:
    """(N, Tk, D) -> (N, L, D): rows first .. first + L - 1 of ``x``, zeros where they fall outside
    0 .. Tk-1; a view where they all lie inside."""
    n, tk, d = x.shape
    start, stop = max(first, 0), min(first + length, tk)
    if start == first and stop == first + length:
        return x[:, start:stop]
    # one cat: F.pad fills the whole output and then copies x over it, two passes instead of one
    parts = [x.new_zeros(n, start - first, d), x[:, start:stop], x.new_zeros(n, first + length - stop, d)]
    return torch.cat([p for p in parts if p.shape[1] > 0], dim=1)  # (N, L, D)


def _allowed(call: Call, band: Band, b0: int, b1: int, lead: torch.Size) -> tuple[Tensor, Tensor | None]:
    """The mask of blocks b0 .. b1-1, (b1 - b0 or 1, 1 or N, Bq, W), and which of their queries have
    a key at all, (b1 - b0, 1 or N, Bq, 1), or None when all do."""
    device, tk = call.query.device, call.key.shape[-2]
    lo, bq, w, nbp = band.lo, band.block, band.width, b1 - b0
    first, length = b0 * bq + lo, (nbp - 1) * bq + w
    # key slot s of block b is key j = b·Bq + lo + s; for query i = b·Bq + r, j - i = lo + s - r
    r = torch.arange(bq, device=device)[:, None]  # (Bq, 1)
    s = torch.arange(w, device=device)[None, :]  # (1, W)
    allowed = (s >= r) & (s <= r + band.hi - lo)  # (Bq, W): lo <= j - i <= hi, the same for every block
    pos = torch.arange(first, first + length, device=device)  # (L,) absolute key positions
    if first < 0 or first + length > tk:  # an edge run: keys past either end are blocked
        real = ((pos >= 0) & (pos < tk)).unfold(0, w, bq)  # (nbp, W)
        allowed = allowed & real[:, None, :]  # (nbp, Bq, W)
    allowed = allowed.reshape(-1, *(1,) * len(lead), bq, w)  # (nbp or 1, 1.., Bq, W)
    if band.padding:  # per example: (nbp, N, Bq, W), the one band-sized tensor of this path
        for part in band.padding:
            part.materialize(call.scores_shape, device)  # the reference's shape check and message
            valid = part.valid.to(device).index_select(-1, pos.clamp(0, tk - 1)).unfold(-1, w, bq)  # (B, nbp, W)
            valid = valid.movedim(1, 0).reshape(nbp, valid.shape[0], *(1,) * (len(lead) - 1), 1, w)
            allowed = allowed & valid  # (nbp, B, 1.., Bq, W)
        allowed = allowed.expand(nbp, *lead, bq, w).reshape(nbp, -1, bq, w)  # (nbp, N, Bq, W)
        has_key = allowed.any(-1, keepdim=True)  # (nbp, N, Bq, 1)
        if not torch.compiler.is_compiling() and bool(has_key.all()):  # no data-dependent branch in a graph
            has_key = None
        return allowed, has_key
    allowed = allowed.reshape(-1, 1, bq, w)  # 4-D, so SDPA broadcasts it over N instead of copying it
    if band.hi < 0 or b1 * bq - 1 + lo > tk - 1:  # query i attends keys max(0, i + lo) .. min(Tk - 1, i + hi)
        i = torch.arange(b0 * bq, b1 * bq, device=device)
        return allowed, ((i + band.hi >= 0) & (i + lo <= tk - 1)).reshape(nbp, 1, bq, 1)
    return allowed, None  # the common case: every query, also the padded ones of the last block, has keys


def _run_fused(call: Call, band: Band) -> AttentionResult:
    """Dot-family scores with softmax: the blocks on ``scaled_dot_product_attention``, one call for
    the inner run of blocks (one (1, 1, Bq, W) mask for all, read from cache) and one for each edge.

    The blocks are SDPA's batch dim and N its head dim, (nb, N, Bq, Dh): the kernel lays its
    gradients out (batch, position, head, Dh), so the rows of one block's key gradient lie N·Dh
    apart, not nb·Dh (measured: 7% faster than (N, nb, ...) at T=8192, N=8, Bq=128).
    """
    query, key, scale = as_dot_product(call)  # softmax(scale · q'k'ᵀ) = softmax(score(q, k))
    value = call.value
    lead = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    n = math.prod(lead)
    q, k, v = (x.expand(*lead, *x.shape[-2:]).reshape(n, *x.shape[-2:]) for x in (query, key, value))  # (N, T, D)
    tq, tk = q.shape[-2], k.shape[-2]
    bq, w = band.block, band.width
    nb = -(-tq // bq)
    pieces = _pieces(nb, bq, w, band.lo, tk)

    q = F.pad(q, (0, 0, 0, nb * bq - tq)) if nb * bq != tq else q  # (N, nb·Bq, Dq)
    q = q.unflatten(1, (nb, bq)).transpose(0, 1)  # (nb, N, Bq, Dq)
    qs = q.split([b1 - b0 for b0, b1 in pieces])  # (nbp, N, Bq, Dq) each
    ks, vs = (_Bands.apply(x, band.lo, w, bq, pieces) for x in (k, v))  # (nbp, N, W, D) each
    outs = []
    for (b0, b1), qp, kp, vp in zip(pieces, qs, ks, vs):
        allowed, has_key = _allowed(call, band, b0, b1, lead)
        if has_key is not None:
            allowed = allowed | ~has_key  # a row with no key: computed on all W slots, then zeroed
        out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=allowed, dropout_p=call.dropout, scale=scale)
        if has_key is not None:
            out = out * has_key  # (nbp, N, Bq, Dv): zero output for rows that may attend nothing
        outs.append(out.transpose(0, 1))  # (N, nbp, Bq, Dv)
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0].contiguous()  # (N, nb, Bq, Dv)
    out = out.reshape(n, nb * bq, -1)[:, :tq]  # (N, Tq, Dv)
    return AttentionResult(out.reshape(*lead, tq, out.shape[-1]), None, None)


def run(call: Call) -> AttentionResult:
    """The call on the band; agrees with :func:`~attnkit.core.functional.reference`."""
    band = plan(call)
    if isinstance(band, str):
        raise AttentionError(f"backend='banded' cannot run this call: {band}")
    if band.fused:
        return _run_fused(call, band)
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
