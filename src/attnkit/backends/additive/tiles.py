"""The tiles of one call: the plan (tile and padded sizes), the padded operands, and the walk over them.

A tile is nb rows of N × ci queries × cj keys (see :mod:`attnkit.backends.additive`); its kernels are the
compiled ones when built (:mod:`.compile`), else the eager ones (:mod:`.kernels`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels as tile_kernels  # looked up per call, as a module global was: tests patch them there
from .compile import _compile_wanted, _compiled_kernels
from .config import config


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
        factored = all(float(t.abs().max()) <= tile_kernels.FACTORED_LIMIT[cd] for t in (a, b) if t.numel())
        key = (*tile, *padded, hidden, cd, a.device.type, factored)
        kernels = _compiled_kernels(key, (*tile, hidden, cd, factored), new_call) if compiled else None
        if kernels is None:
            compiled = False
            kernels = (tile_kernels._scores_eager, tile_kernels._grads_eager)
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
