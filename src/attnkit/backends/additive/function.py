"""The autograd Function of ``additive_fused``: walks the tiles, forward (online softmax) and backward.

a (N, Tq, A), b (N, Tk, A), v (N, A), value (N, Tk, Dv); the formulas are in :mod:`attnkit.backends.additive`.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from ..workers import walk
from .config import _workers
from .tiles import _Tiles


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

        walk(block, list(tiles.blocks()), _workers())
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

        walk(block, blocks, workers)
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
