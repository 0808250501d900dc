"""``additive_fused``: the additive score vᵀtanh(W_q q + W_k k) with softmax, without its (..., Tq, Tk, A) tensor.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dq / Dk / Dv feature dims, A hidden
dim of the additive score; N the leading dims (...) flattened, e.g. B or B·H.

The reference scores with hidden = tanh(a_i + b_j), a = q W_q (..., Tq, A) and b = k W_k (..., Tk, A):
a (..., Tq, Tk, A) tensor, A times the size of the scores, which autograd also keeps for the backward.
Here a and b come from ordinary autograd, and one autograd Function does the rest tile by tile, as
FlashAttention does: a tile is nb rows of N × ci queries × cj keys; a row's keys are walked with an
online softmax (a running max and sum), and only a, b, v, the values, the output and each row's
log-sum-exp are saved. The backward recomputes each tile's hidden units and forms

    dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O)),   da_i = v ⊙ Σ_j dS_ij tanh'_ij,   db_j = v ⊙ Σ_i dS_ij tanh'_ij,
    dv = Σ_ij dS_ij tanh_ij,   tanh'_ij = 1 − tanh²(a_i + b_j).

The cost is one hidden unit per (n, i, j, a), forward and again backward, and on a CPU tanh is the slow
part of a unit (torch 2.13's CPU tanh: 2.3 ns per element, on one thread only, 15x a multiply). So the
tiles use

    tanh(a + b) = 2r − 1,   1 − tanh²(a + b) = 4r(1 − r),   r = 1 / (1 + e^(−2a) · e^(−2b)),

with e^(−2a) and e^(−2b) computed once per row instead of once per pair: a multiply, an add and a
reciprocal per unit. It is exact while neither exponential overflows or underflows (|a|, |b| <= 40 in
float32, 340 in float64; a product that overflows or underflows just saturates tanh to ∓1, correctly);
calls outside that range use r = sigmoid(2(a + b)) per unit instead (FACTORED_LIMIT).

Tiles run eagerly (each tile written once, small enough to stay in cache) or compiled: AOTInductor fuses
a tile kernel into loops that never write the tile (5x to 9x faster than the eager tile on one core). No
call waits for the compiler: from the ``config.compile_after``-th call of a tile shape (of at least
``config.compile_min_work`` units) a separate low-priority process builds that shape's kernels (20 to 30 s
of one core, longer when the cores are busy) into a cache folder ($ATTNKIT_CACHE, else ~/.cache/attnkit);
calls run eagerly until the build is there, then load it into the C++ runtime in a few milliseconds
(no dynamo, no inductor in this process), and so does every later process from its first call. Tile
shapes are padded up to fixed sizes, so a fixed call shape builds once. Builds that fail (no C++
compiler) leave every later call eager; ``config.compile = "always"`` waits for the build instead (tests),
``"never"`` never builds. Calls under ``config.min_work`` units are left to the reference by automatic
dispatch: there its few large ops beat the tile loop's small ones.

The tiles are walked by ``config.workers`` threads (default: torch's thread count), each taking whole
blocks of queries from a shared queue and running their ops on one core, without torch's OpenMP team:
a tile's ops are small, and split over the team each ended in a barrier that waited a scheduler slice
whenever another process held a core (25x to 100x slower calls under load; see :func:`_walk`).

Half-precision inputs run in float32 inside and are rounded once at the end. Dropout and local-p's
Gaussian factor are not fused: such calls go to another backend.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..core.functional import AttentionResult, Call
from ..core.normalizers import Softmax
from ..core.scores import SCORES
from ..errors import AttentionError
from .registry import register

__all__ = ["FusedConfig", "config", "run", "supports", "worthwhile", "additive_softmax_problem", "flatten"]

log = logging.getLogger("attnkit.backends")


@dataclass(slots=True)  # slots: a misspelt knob raises instead of being ignored
class FusedConfig:
    """Knobs of ``additive_fused``; change the module's :data:`config` in place (tests do)."""

    min_work: int = 1 << 17  # N·Tq·Tk·A below which auto dispatch keeps the reference (as fast there)
    compile: str = "auto"  # "auto": see compile_min_work and compile_after; "always"; "never"
    compile_min_work: int = 1 << 24  # N·Tq·Tk·A: below it eager tiles take ~10 ms, less than compiling
    compile_after: int = 2  # "auto" starts a tile shape's background build on its 2nd call, not for one-offs
    eager_tile: int = 1 << 20  # units (n, i, j, a) per eager tile: 4 MB in float32, kept in L2/L3
    compiled_tile: int = 1 << 23  # units per compiled call (never written): amortises ~50 µs per call
    key_tile: int = 1 << 17  # keys × A per tile at most: b's tile (512 KB in float32) stays in L2
    max_compiled_shapes: int = 6  # tile shapes compiled or loaded per process; then eager
    workers: int = 0  # threads walking the tiles, each running its ops on one core; 0: torch.get_num_threads()


config = FusedConfig()

# |a|, |b| up to which e^(-2a) stays a normal number: e^80 < 3e38 (float32), e^680 < 1e308 (float64)
FACTORED_LIMIT = {torch.float32: 40.0, torch.float64: 340.0}


def additive_softmax_problem(call: Call) -> str | None:
    """Why ``call`` is not additive + softmax without dropout or local-p, in one dtype, with a value
    that does not broadcast beyond the scores' leading dims (None: it is).

    The checks every backend of the additive score shares (this one, as its ``supports``, and
    ``additive_triton``); both flatten the scores' leading dims into rows (:func:`flatten`).
    """
    if call.score is not SCORES["additive"]:
        return f"takes the additive score only, not score={call.score.name!r}"
    if type(call.normalizer) is not Softmax:
        return f"takes softmax only, not {call.normalizer}"
    if call.dropout > 0:
        return f"dropout={call.dropout} on the weights is not supported; pass dropout=0 (e.g. at eval time)"
    if call.gauss is not None:
        return "local-p's Gaussian factor is applied after the softmax, which this backend does not do"
    # one floating dtype for q, k, v and the parameters: prepare() has checked it
    score_lead = call.scores_shape[:-2]
    if torch.broadcast_shapes(score_lead, call.value.shape[:-2]) != score_lead:
        return (
            f"value's leading dims {tuple(call.value.shape[:-2])} broadcast beyond the scores' "
            f"{tuple(score_lead)}; the scores' leading dims are flattened into rows"
        )
    return None


def flatten(call: Call) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """a = q W_q (N, Tq, A), b = k W_k (N, Tk, A), v (N, A), value (N, Tk, Dv): leading dims as N rows.

    Views where the broadcast allows (stride 0 over shared rows), copies otherwise.
    """
    params = call.score_params
    a = call.query @ params["W_q"]  # (..., Tq, Dq) x (..., Dq, A) -> (..., Tq, A)
    b = call.key @ params["W_k"]  # (..., Tk, Dk) x (..., Dk, A) -> (..., Tk, A)
    *lead, tq, tk = call.scores_shape
    hidden, dv = a.shape[-1], call.value.shape[-1]
    n = math.prod(lead)
    a = a.expand(*lead, tq, hidden).reshape(n, tq, hidden)  # (N, Tq, A)
    b = b.expand(*lead, tk, hidden).reshape(n, tk, hidden)  # (N, Tk, A)
    v = params["v"].expand(*lead, hidden).reshape(n, hidden)  # (N, A)
    value = call.value.expand(*lead, tk, dv).reshape(n, tk, dv)  # (N, Tk, Dv)
    return a, b, v, value


supports = additive_softmax_problem


def worthwhile(call: Call) -> str | None:
    """Auto dispatch only: tiny calls stay on the reference, whose few big ops beat the tile loop's many small ones."""
    units = math.prod(call.scores_shape) * call.score_params["W_q"].shape[-1]  # N·Tq·Tk·A
    if units < config.min_work:
        return f"N·Tq·Tk·A = {units} hidden units, under {config.min_work}: the reference is as fast"
    return None


def run(call: Call) -> AttentionResult:
    a, b, v, value = flatten(call)
    shape = call.scores_shape  # (..., Tq, Tk)
    *lead, tq, tk = shape
    n = a.shape[0]
    allowed = bias = None
    if call.region is not None:
        device, dtype = a.device, _compute_dtype(a.dtype)
        allowed = call.region.materialize(shape, device).expand(shape).reshape(n, tq, tk)  # bool
        bias = call.region.bias(shape, device, dtype)
        if bias is not None:
            bias = bias.expand(shape).reshape(n, tq, tk)
    out, weights = _AdditiveSoftmax.apply(a, b, v, value, allowed, bias, call.need_weights)
    out = out.reshape(*lead, tq, value.shape[-1])
    return AttentionResult(out, None if weights is None else weights.reshape(shape))


register(
    "additive_fused",
    run,
    supports,
    "additive score + softmax in tiles with an online softmax; never forms the (..., Tq, Tk, A) tensor",
    worthwhile,
)


# ---------------------------------------------------------------------------------------------
# the autograd Function: walks the tiles, forward and backward


class _AdditiveSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, v, value, allowed, bias, need_weights):
        # a (N, Tq, A), b (N, Tk, A), v (N, A), value (N, Tk, Dv); allowed bool / bias (N, Tq, Tk) or None
        ctx.set_materialize_grads(False)
        tiles = _Tiles.build(a, b, v, allowed, bias, new_call=True)
        n, tq, tk, dv = *tiles.sizes, value.shape[-1]
        cd = tiles.dtype
        value_c = value.to(cd)
        out = a.new_empty(n, tq, dv, dtype=cd)
        lse = a.new_empty(n, tq, dtype=cd)  # log Σ_j exp(s_ij) over allowed keys; +inf on a row with none
        scores = a.new_empty(n, tq, tk, dtype=cd) if need_weights else None

        def block(rows: slice, queries: slice, worker: int) -> None:
            best = a.new_full((rows.stop - rows.start, queries.stop - queries.start), -math.inf, dtype=cd)
            total = torch.zeros_like(best)  # Σ_j exp(s_ij - best_i) so far
            acc = a.new_zeros(*best.shape, dv, dtype=cd)  # Σ_j exp(s_ij - best_i) value_j so far
            for keys in tiles.key_ranges():
                s = tiles.scores(rows, queries, keys)  # (nv, iv, jv), -inf where not allowed
                if scores is not None:
                    scores[rows, queries, keys] = s
                new_best = torch.maximum(best, s.amax(-1))  # (nv, iv)
                shift = new_best.masked_fill(new_best == -math.inf, 0.0)  # no key yet: exp(-inf - 0) = 0
                p = torch.exp(s - shift[..., None])  # (nv, iv, jv)
                keep = torch.exp(best - shift)  # rescales what was summed under the old max
                total = total * keep + p.sum(-1)
                acc = acc * keep[..., None] + p @ value_c[rows, keys]  # (nv, iv, jv) x (nv, jv, Dv)
                best = new_best
            has_key = total > 0
            out[rows, queries] = acc / torch.where(has_key, total, 1.0)[..., None]  # blocks write disjoint slices
            lse[rows, queries] = torch.where(has_key, best + total.log(), math.inf)

        _walk(block, list(tiles.blocks()))
        weights = None
        if scores is not None:
            weights = scores.sub_(lse[..., None]).exp_()  # exp(-inf - lse) = 0 where not allowed
        ctx.save_for_backward(a, b, v, value, allowed, bias, out, lse, weights)
        return out.to(value.dtype), None if weights is None else weights.to(a.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_weights):
        a, b, v, value, allowed, bias, out, lse, weights = ctx.saved_tensors
        tiles = _Tiles.build(a, b, v, allowed, bias, new_call=False)
        n, tq, tk = tiles.sizes
        cd = tiles.dtype
        value_c = value.to(cd)
        d_out = None if d_out is None else d_out.to(cd)
        d_weights = None if d_weights is None else d_weights.to(cd)
        # rowsum(dP ⊙ P) per query: dO·O for the output, dW·W for the weights
        delta = a.new_zeros(n, tq, dtype=cd)
        if d_out is not None:
            delta += (d_out * out).sum(-1)
        if d_weights is not None:
            delta += (d_weights * weights).sum(-1)
        hidden_grads = any(ctx.needs_input_grad[:3])  # a, b or v: the tiles' second pass over (i, j, A)
        blocks = list(tiles.blocks())
        workers = max(1, min(_workers(), len(blocks)))
        # blocks write disjoint slices of da and d_bias; db, dv and d_value sum over query blocks, so each
        # worker adds into its own copy (created when it takes its first block), summed at the end
        da = tiles.grad_buffers()[0] if hidden_grads else None
        shared: list[tuple | None] = [None] * workers

        def sums(worker: int) -> tuple:
            if shared[worker] is None:
                _, db, dvec = tiles.grad_buffers() if hidden_grads else (None, None, None)
                d_value = torch.zeros_like(value_c) if ctx.needs_input_grad[3] else None
                shared[worker] = (db, dvec, d_value)
            return shared[worker]

        d_bias = a.new_zeros(n, tq, tk, dtype=cd) if ctx.needs_input_grad[5] else None

        def block(rows: slice, queries: slice, worker: int) -> None:
            db, dvec, d_value = sums(worker)
            for keys in tiles.key_ranges():
                s = tiles.scores(rows, queries, keys)  # (nv, iv, jv)
                p = torch.exp(s - lse[rows, queries, None])  # 0 where not allowed, and on empty rows
                dp = torch.zeros_like(p)  # dL/dP
                if d_out is not None:
                    dp += d_out[rows, queries] @ value_c[rows, keys].transpose(-2, -1)  # (nv, iv, Dv) x (nv, Dv, jv)
                    if d_value is not None:
                        d_value[rows, keys] += p.transpose(-2, -1) @ d_out[rows, queries]  # (nv, jv, iv) x (nv, iv, Dv)
                if d_weights is not None:
                    dp += d_weights[rows, queries, keys]
                ds = p * (dp - delta[rows, queries, None])  # dL/ds, (nv, iv, jv)
                if d_bias is not None:
                    d_bias[rows, queries, keys] = ds
                if hidden_grads:
                    tiles.accumulate_grads(rows, queries, keys, ds, da, db, dvec)

        _walk(block, blocks, workers)
        sums(0)  # no block at all (Tq = 0): zeros
        taken = [t for t in shared if t is not None]
        db, dvec, d_value = (None if taken[0][i] is None else sum(t[i] for t in taken) for i in range(3))
        return (
            None if da is None else da[:n, :tq].to(a.dtype),
            None if db is None else db[:n, :tk].to(b.dtype),
            None if dvec is None else dvec[:n].to(v.dtype),
            None if d_value is None else d_value.to(value.dtype),
            None,
            None if d_bias is None else d_bias.to(bias.dtype),
            None,
        )


# ---------------------------------------------------------------------------------------------
# the walk over the tiles: one core per worker, no barrier per op


def _workers() -> int:
    """Threads that walk the tiles: ``config.workers``, or torch's intra-op thread count."""
    return config.workers if config.workers > 0 else torch.get_num_threads()


_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _walk(block: Callable[[slice, slice, int], None], blocks: list, workers: int | None = None) -> None:
    """Run ``block(rows, queries, worker)`` for every block, on ``workers`` threads of one intra-op thread each.

    A tile's ops are small (a few MB); split over torch's OpenMP team, each ends in a barrier where the
    team's threads spin, then sleep, until the slowest arrives. When another process holds a core, that
    thread waits a scheduler slice (milliseconds) at every op: thousands of ops per call made the tiles
    25x to 100x slower than on a quiet machine. Here each worker takes whole blocks from a shared queue,
    running their ops on its own thread alone, and the workers meet once, at the end: a busy core only
    slows the worker on it, and the others take more blocks. The calling thread is one of the workers.
    """
    global _pool, _pool_size
    workers = max(1, min(workers or _workers(), len(blocks)))
    threads = torch.get_num_threads()
    if workers == 1 and threads == 1:
        for rows, queries in blocks:
            block(rows, queries, 0)
        return
    queue = iter(blocks)
    lock = threading.Lock()
    failed: list[BaseException] = []

    def drain(worker: int) -> None:
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)  # this thread's OpenMP team (and torch's default for new threads)
        while not failed:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            try:
                block(*item, worker)
            except BaseException as err:  # noqa: BLE001  re-raised in the calling thread
                failed.append(err)

    try:
        if workers > 1:
            if _pool_size < workers - 1:
                _pool, _pool_size = ThreadPoolExecutor(workers - 1, "attnkit-additive"), workers - 1
            helpers = [_pool.submit(drain, w) for w in range(1, workers)]
        drain(0)
        if workers > 1:
            for h in helpers:
                h.result()
    finally:
        torch.set_num_threads(threads)  # the calling thread's team back, and torch's default for new threads
    if failed:
        raise failed[0]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _split(length: int, most: int, granule: int) -> tuple[int, int]:
    """(tile, padded length): ``length`` cut into equal tiles of at most ``most``, rounded up to ``granule``."""
    most = max(most, granule)
    count = -(-max(length, 1) // most)
    tile = -(-max(length, 1) // count)
    tile = -(-tile // granule) * granule
    return tile, tile * count


@dataclass
class _Tiles:
    """One call's operands, padded to whole tiles, and the walk over its (rows, queries, keys) tiles."""

    sizes: tuple[int, int, int]  # (N, Tq, Tk), before padding
    tile: tuple[int, int, int]  # (nb, ci, cj): rows of N, queries, keys per tile
    dtype: torch.dtype  # the compute dtype
    x: Tensor  # (N', Tq', A): e^(-2a) when factored, else a; padded with the value for a = 0
    y: Tensor  # (N', Tk', A): e^(-2b) when factored, else b
    v: Tensor  # (N', A), zero on padded rows
    factored: bool
    kernels: tuple[Callable, Callable]  # (scores, grads), compiled or eager
    allowed: Tensor | None  # (N, Tq, Tk) bool
    bias: Tensor | None  # (N, Tq, Tk)

    @classmethod
    def build(
        cls, a: Tensor, b: Tensor, v: Tensor, allowed: Tensor | None, bias: Tensor | None, new_call: bool
    ) -> _Tiles:
        """The tiles of a call (``new_call``: the forward, which counts towards compiling its tile shape)."""
        (n, tq, hidden), tk = a.shape, b.shape[1]
        cd = _compute_dtype(a.dtype)
        compiled = _compile_wanted(n * tq * tk * hidden, a.device)
        tile, padded = _plan(n, tq, tk, hidden, compiled)
        a, b, v = (t.detach().to(cd) for t in (a, b, v))
        # False for NaN too: the per-unit formula propagates it as tanh would
        factored = all(float(t.abs().max()) <= FACTORED_LIMIT[cd] for t in (a, b) if t.numel())
        key = (*tile, *padded, hidden, cd, a.device.type, factored)
        kernels = _compiled_kernels(key, (*tile, hidden, cd, factored), new_call) if compiled else None
        if kernels is None:
            compiled = False
            kernels = (_scores_eager, _grads_eager)
            tile, padded = _plan(n, tq, tk, hidden, compiled)
        x = F.pad(a, (0, 0, 0, padded[1] - tq, 0, padded[0] - n))  # (N', Tq', A)
        y = F.pad(b, (0, 0, 0, padded[2] - tk, 0, padded[0] - n))  # (N', Tk', A)
        if factored:
            x, y = torch.exp(-2 * x), torch.exp(-2 * y)
        v = F.pad(v, (0, 0, 0, padded[0] - n))  # (N', A)
        return cls((n, tq, tk), tile, cd, x, y, v, factored, kernels, allowed, bias)

    def blocks(self) -> Iterator[tuple[slice, slice]]:
        """(rows, queries) of each row block, clipped to the unpadded sizes."""
        (n, tq, _), (nb, ci, _) = self.sizes, self.tile
        for n0 in range(0, n, nb):
            for i0 in range(0, tq, ci):
                yield slice(n0, min(n0 + nb, n)), slice(i0, min(i0 + ci, tq))

    def key_ranges(self) -> Iterator[slice]:
        tk, cj = self.sizes[2], self.tile[2]
        for j0 in range(0, tk, cj):
            yield slice(j0, min(j0 + cj, tk))

    def _operands(self, rows: slice, queries: slice, keys: slice) -> tuple[Tensor, Tensor, Tensor]:
        """Whole padded tiles: x (nb, ci, A), y (nb, cj, A), v (nb, A)."""
        nb, ci, cj = self.tile
        n0, i0, j0 = rows.start, queries.start, keys.start
        return self.x[n0 : n0 + nb, i0 : i0 + ci], self.y[n0 : n0 + nb, j0 : j0 + cj], self.v[n0 : n0 + nb]

    def scores(self, rows: slice, queries: slice, keys: slice) -> Tensor:
        """The scores of one tile plus the bias, -inf where not allowed: (nv, iv, jv)."""
        s = self.kernels[0](*self._operands(rows, queries, keys), self.factored)  # (nb, ci, cj)
        s = s[: rows.stop - rows.start, : queries.stop - queries.start, : keys.stop - keys.start]
        if self.bias is not None:
            s = s + self.bias[rows, queries, keys]
        if self.allowed is not None:
            s = s.masked_fill(~self.allowed[rows, queries, keys], -math.inf)
        return s

    def grad_buffers(self) -> tuple[Tensor, Tensor, Tensor]:
        """Zeroed da (N', Tq', A), db (N', Tk', A), dv (N', A)."""
        return torch.zeros_like(self.x), torch.zeros_like(self.y), torch.zeros_like(self.v)

    def accumulate_grads(self, rows, queries, keys, ds: Tensor, da: Tensor, db: Tensor, dvec: Tensor) -> None:
        """Add one tile's share of da, db and dv, given its dL/ds (nv, iv, jv)."""
        nb, ci, cj = self.tile
        nv, iv, jv = ds.shape
        ds = F.pad(ds, (0, cj - jv, 0, ci - iv, 0, nb - nv))  # (nb, ci, cj), zero on padding
        ga, gb, gv = self.kernels[1](*self._operands(rows, queries, keys), ds, self.factored)
        n0, i0, j0 = rows.start, queries.start, keys.start
        da[n0 : n0 + nb, i0 : i0 + ci] += ga
        db[n0 : n0 + nb, j0 : j0 + cj] += gb
        dvec[n0 : n0 + nb] += gv


def _plan(n: int, tq: int, tk: int, hidden: int, compiled: bool) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Tile (nb, ci, cj) and padded sizes (N', Tq', Tk'): whole tiles of at most the configured units."""
    budget = config.compiled_tile if compiled else config.eager_tile
    granule = 16 if compiled else 1  # compiled: few distinct tile shapes, so few compilations
    cj, tkp = _split(tk, config.key_tile // hidden, granule)
    ci, tqp = _split(tq, budget // (cj * hidden), granule)
    nb, np_ = _split(n, budget // (ci * cj * hidden), 1)
    return (nb, ci, cj), (np_, tqp, tkp)


# ---------------------------------------------------------------------------------------------
# tile kernels: x (n, i, A), y (n, j, A), v (n, A) [, ds (n, i, j)], factored: see the module docstring


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


# ---------------------------------------------------------------------------------------------
# compilation: when, and what happens when it fails

_building: dict[tuple, subprocess.Popen] = {}  # kernel key -> its build, running in the background
_loaded: dict[tuple, tuple[Callable, Callable]] = {}  # kernel key -> (scores, grads), loaded in this process
_calls: dict[tuple, int] = {}  # tile key -> calls seen, for compile_after
_compile_failed = False


def _compile_wanted(units: int, device: torch.device) -> bool:
    if config.compile not in ("auto", "always", "never"):
        raise AttentionError(f"additive config.compile must be 'auto', 'always' or 'never', got {config.compile!r}")
    if config.compile == "never" or _compile_failed or device.type != "cpu":
        return False
    if torch.compiler.is_compiling():  # inside the caller's own torch.compile: it compiles us
        return False
    return config.compile == "always" or units >= config.compile_min_work


def _compiled_kernels(key: tuple, kernel_key: tuple, new_call: bool) -> tuple[Callable, Callable] | None:
    """The compiled kernels of a tile shape if they are built (in this process, or by an earlier one);
    else None, having started their build in the background once the shape has been seen often enough
    ("auto"), or having waited for it ("always")."""
    global _compile_failed
    if kernel_key in _loaded:
        return _loaded[kernel_key]
    paths = _kernel_paths(kernel_key)
    if not all(path.exists() for path in paths):
        if config.compile == "auto":
            _calls[key] = _calls.get(key, 0) + new_call
        build = _building.get(kernel_key)
        if build is None:
            wanted = config.compile == "always" or _calls[key] >= config.compile_after
            if not wanted or len(_building) + len(_loaded) >= config.max_compiled_shapes:
                return None
            build = _building[kernel_key] = _start_build(kernel_key, paths)
        if config.compile == "always":
            build.wait()
        if build.poll() is None:
            return None
        del _building[kernel_key]
        if build.returncode != 0 or not all(path.exists() for path in paths):
            _compile_failed = True
            build.log.seek(0)
            err = build.log.read().strip().splitlines()[-3:]
            log.warning("additive_fused: compiling the tiles failed, they run eagerly from now on: %s", " ".join(err))
            return None
    try:
        _loaded[kernel_key] = _load_kernels(paths)
    except Exception as err:  # noqa: BLE001  a damaged or foreign package: eager is the same maths
        _compile_failed = True
        log.warning("additive_fused: loading the compiled tiles failed, they run eagerly from now on: %s", err)
        return None
    return _loaded[kernel_key]


def _cache_dir() -> Path:
    """Where compiled tile kernels are kept across processes: $ATTNKIT_CACHE, else ~/.cache/attnkit."""
    root = (
        os.environ.get("ATTNKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attnkit"
    )
    return Path(root) / "additive" / f"torch-{torch.__version__}-{platform.machine()}"


def _kernel_paths(kernel_key: tuple) -> tuple[Path, Path]:
    name = "-".join(str(part).removeprefix("torch.") for part in kernel_key)
    return _cache_dir() / f"{name}.scores.pt2", _cache_dir() / f"{name}.grads.pt2"


def _start_build(kernel_key: tuple, paths: tuple[Path, Path]) -> subprocess.Popen:
    """AOTInductor-compile a tile shape's kernels in a separate, low-priority process (20 to 30 s of one
    core), so that no call waits for the compiler or shares its interpreter with it."""
    log.debug("additive_fused: compiling the tiles %s in the background", kernel_key)
    args = json.dumps([*kernel_key[:4], str(kernel_key[4]).removeprefix("torch."), kernel_key[5], *map(str, paths)])
    code = f"from attnkit.backends.additive import _build; _build({args!r})"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    nice = (lambda: os.nice(10)) if hasattr(os, "nice") else None
    log_file = tempfile.TemporaryFile("w+")  # a file, not a pipe: the build never blocks on its warnings
    build = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        env=env,
        preexec_fn=nice,  # noqa: PLW1509  os.nice only: no lock is taken
    )
    build.log = log_file
    return build


def _build(args: str) -> None:
    """In the build process: export and compile both kernels for one thread (each worker runs them on its
    own), each written to a temporary file and renamed, so a killed build leaves no half package."""
    nb, ci, cj, hidden, dtype, factored, scores_path, grads_path = json.loads(args)
    torch.set_num_threads(1)
    dtype = getattr(torch, dtype)
    x, y = torch.rand(nb, ci, hidden, dtype=dtype), torch.rand(nb, cj, hidden, dtype=dtype)
    v, ds = torch.rand(nb, hidden, dtype=dtype), torch.rand(nb, ci, cj, dtype=dtype)

    class Scores(torch.nn.Module):
        def forward(self, x, y, v):
            return _scores_fused(x, y, v, factored)

    class Grads(torch.nn.Module):
        def forward(self, x, y, v, ds):
            return _grads_fused(x, y, v, ds, factored)

    for module, inputs, path in ((Scores(), (x, y, v), scores_path), (Grads(), (x, y, v, ds), grads_path)):
        program = torch.export.export(module, inputs)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        partial = f"{path.removesuffix('.pt2')}.{os.getpid()}.partial.pt2"  # aoti wants the suffix
        torch._inductor.aoti_compile_and_package(program, package_path=partial)
        os.replace(partial, path)


def _load_kernels(paths: tuple[Path, Path]) -> tuple[Callable, Callable]:
    """The built kernels, loaded straight into the C++ runtime (a few ms; no dynamo, no inductor import),
    with a runner per worker so that workers call them at once."""
    runners = max(2, _workers())
    scores, grads = (torch._C._aoti.AOTIModelPackageLoader(str(p), "model", False, runners, -1) for p in paths)

    def scores_call(x: Tensor, y: Tensor, v: Tensor, factored: bool) -> Tensor:
        return scores.run([x.contiguous(), y.contiguous(), v.contiguous()])[0]

    def grads_call(x: Tensor, y: Tensor, v: Tensor, ds: Tensor, factored: bool) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(grads.run([x.contiguous(), y.contiguous(), v.contiguous(), ds.contiguous()]))

    return scores_call, grads_call
