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
reciprocal per unit. It is exact while neither exponential overflows or underflows (``|a|``, ``|b|`` <= 40 in
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
whenever another process held a core (25x to 100x slower calls under load; see
:func:`attnkit.backends.workers.walk`, the pool the workers come from).

Half-precision inputs run in float32 inside and are rounded once at the end. Dropout and local-p's
Gaussian factor are not fused: such calls go to another backend.

The package: this module checks and registers the backend; :mod:`.function` holds the autograd Function,
:mod:`.tiles` the plan and walk of a call's tiles, :mod:`.kernels` the tile kernels, :mod:`.compile` their
background build and cache, :mod:`.config` the knobs. The private names below are re-exported for the
code and tests that imported them from here; to patch one, patch the module that defines it (a patch
here changes no caller), e.g. ``monkeypatch.setattr(additive.compile, "_start_build", ...)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...core.functional import AttentionResult, Call
from ...core.normalizers import Softmax
from ...core.scores import SCORES
from .. import workers as _workers_module
from ..registry import register
from ..workers import walk as _walk  # noqa: F401  re-exported: was defined here
from . import compile as _compile_module
from .compile import (  # noqa: F401  re-exported
    _build,
    _cache_dir,
    _compile_wanted,
    _compiled_kernels,
    _kernel_paths,
    _load_kernels,
    _start_build,
    log,
)
from .config import FusedConfig, _workers, config  # noqa: F401  re-exported
from .function import _AdditiveSoftmax
from .kernels import (  # noqa: F401  re-exported
    FACTORED_LIMIT,
    _grads_eager,
    _grads_fused,
    _half_tanh,
    _half_tanh_eager,
    _scores_eager,
    _scores_fused,
)
from .tiles import _compute_dtype, _plan, _split, _Tiles  # noqa: F401  re-exported

__all__ = ["FusedConfig", "config", "run", "supports", "worthwhile", "additive_softmax_problem", "flatten"]

# state that .compile and the worker pool rebind as calls go: read here, it is read there, so never stale
_STATE = {name: _compile_module for name in ("_building", "_loaded", "_calls", "_compile_failed")}
_STATE.update({name: _workers_module for name in ("_pool", "_pool_size")})


def __getattr__(name: str):
    if name in _STATE:
        return getattr(_STATE[name], name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
