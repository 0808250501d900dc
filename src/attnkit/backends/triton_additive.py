"""``additive_triton``: the additive score vᵀtanh(W_q q + W_k k) with softmax in Triton kernels, forward and backward.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dq / Dk / Dv feature dims, A hidden
dim of the additive score; N the leading dims (...) flattened, e.g. B or B·H.

The same maths as ``additive_fused`` (see :mod:`attnkit.backends.additive`), on the GPU: a = q W_q
(..., Tq, A) and b = k W_k (..., Tk, A) come from ordinary autograd (so W_q, W_k, q and k get their
gradients from PyTorch's matmuls), and one autograd Function runs the rest in two kernels
(:mod:`attnkit.backends._triton_additive_kernels`), FlashAttention-style:

- forward, one program per (n, block of BM queries): walk the key blocks; per block form
  s_ij = Σ_a v_a tanh(a_ia + b_ja) in registers, chunk by chunk of BA hidden units, and fold it into
  an online softmax (running max and sum) and Σ_j P_ij value_j. Saved: a, b, v, the values, the output
  and each row's log-sum-exp; never the (N, Tq, Tk, A) hidden tensor nor the (N, Tq, Tk) weights.
- backward, one program per (n, block of BN keys): walk the query blocks, recompute s and
  P = exp(s − lse), then dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O)), and with tanh' = 1 − tanh²:

      d value_j = Σ_i P_ij dO_i,   db_j = v ⊙ Σ_i dS_ij tanh'_ij,
      da_i = v ⊙ Σ_j dS_ij tanh'_ij,   dv = Σ_ij dS_ij tanh_ij.

  Reductions over queries belong to the key block's program, which no other program writes: d value
  sums in registers; db and dv, walked chunk by chunk of A, take atomic adds that meet no contention
  (they only make the in-place accumulation safe across loop iterations), and dv is one partial sum
  per key block, summed in PyTorch. da, a reduction over keys, takes ``tl.atomic_add`` from every key
  block. Why atomics rather than a second pass over key blocks for da: the cost of this score is the
  tanh of every (i, j, a) unit, not a matmul as in FlashAttention; a second pass would evaluate every
  unit twice more (its scores, then its slopes: four evaluations per unit in the backward instead of
  two), while the atomics add Tq·A values per key block, 1/BN of the units. The price: da's summation
  order, and so its last bits in float32, may change from run to run.

Masks: a band of keys i + lo <= j <= i + hi (``masks.causal(offset)``: hi = offset;
``masks.sliding_window(left, right, offset)``: lo = offset − left, hi = offset + right; several
intersect), whose blocks out of reach are skipped forward and backward, and key padding
(``masks.padding``: a (B, Tk) vector) are evaluated in the kernels; any other bool mask
(block-sparse, dense tensors, ``Or``) is materialized once as a dense bool (..., Tq, Tk), broadcast
where it can be (a (Tq, Tk) mask is not copied per row), and loaded per block. A query with no
allowed key gets a zero output and zero gradients. Float (additive) masks are declined: pass a bool
mask, or use ``additive_fused``.

``need_weights=True``: the forward kernel also writes the scores, and the weights are
exp(s − lse) in PyTorch; their gradient joins dS in the backward kernel.

Parameters may be shared ((Dq, A), ...) or per head ((H, Dq, A), ...): a, b and v are broadcast to
the N rows as views (stride 0, no copy) and the kernels index them by their strides; autograd sums
the gradients of the broadcast back. Half-precision inputs run in float32 inside (converted copies),
float64 in float64.

Where it runs: on CUDA tensors, or on CPU under Triton's interpreter, which runs the same kernels in
numpy, slowly: the tests use it. ``TRITON_INTERPRET=1`` must be set before anything imports triton
(triton decorates its own library on import); :func:`supports` says so when it was not. Automatic
dispatch never picks the interpreter; force it with ``backend="additive_triton"``. On CPU without the
interpreter it declines, so the CPU behaviour of the library does not change. Dropout and local-p's
Gaussian factor are declined too.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..core.functional import AttentionResult, Call
from ..core.masks import And, Causal, Dense, KeyPadding, Mask, SlidingWindow, and_masks
from .additive import additive_softmax_problem, flatten
from .registry import register

__all__ = ["TritonConfig", "config", "interpreting", "run", "supports", "triton_problem", "worthwhile"]


@dataclass
class TritonConfig:
    """Block sizes of ``additive_triton``; change the module's :data:`config` in place.

    Not timed on a GPU yet. A (BM, BN, BA) block of hidden units lives in registers: 16·16·16 = 4096
    values, 32 per thread with 4 warps. Compiled for sm_90 (ptxas, no GPU), these sizes take about 110
    registers (forward) and 240 (backward) per thread in float32, without spilling; 32 × 32 × 16
    spills in the backward. float64 spills at 16·16·16 (it is there for checks; GPUs run it slowly anyway).
    """

    block_q: int = 16  # BM: queries per block
    block_k: int = 16  # BN: keys per block
    block_a: int = 16  # BA: hidden units per chunk of the score's sum
    num_warps: int = 4


config = TritonConfig()


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter (read as triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes", "y")


def triton_problem(interpreter: bool) -> str | None:
    """Why triton cannot run the kernels compiled (``interpreter=False``) or interpreted, or None.

    Triton decorates its own library (``tl.zeros``, ``tl.sum``, ...) when it is imported, compiled or
    interpreted as ``TRITON_INTERPRET`` says then; setting the variable later changes nothing.
    """
    try:
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return "triton is not installed (pip install triton; PyTorch's CUDA wheels bring it)"
    imported_interpreted = isinstance(tl.zeros, InterpretedFunction)
    if interpreter and not imported_interpreted:
        return (
            "triton was imported before TRITON_INTERPRET=1 was set, so its library is compiled-only; "
            "set the variable before anything imports triton (e.g. in a fresh process)"
        )
    if not interpreter and imported_interpreted:
        return "triton was imported with TRITON_INTERPRET=1 (CPU interpreter); unset it before triton is imported"
    return None


def _float_mask(mask: Mask | None) -> bool:
    if isinstance(mask, Dense):
        return mask.tensor.is_floating_point()
    return isinstance(mask, And) and any(_float_mask(p) for p in mask.parts)


def supports(call: Call) -> str | None:
    reason = additive_softmax_problem(call)
    if reason is not None:
        return reason
    if _float_mask(call.region):
        return "additive float masks (biases) are not in the kernels; pass a bool mask (True = may attend)"
    tensors = {"query": call.query, "key": call.key, "value": call.value, **call.score_params}
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        got = ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        return f"query, key, value and score_params must be on one device, got {got}"
    device = next(iter(devices))
    if device.type == "cpu" and not interpreting():
        return (
            "runs Triton kernels on CUDA tensors, and these are on cpu "
            "(on CPU only under Triton's interpreter, TRITON_INTERPRET=1, for tests)"
        )
    if device.type not in ("cpu", "cuda"):
        return f"runs Triton kernels on CUDA tensors, and these are on {device.type}"
    return triton_problem(interpreter=device.type == "cpu")


def worthwhile(call: Call) -> str | None:
    """Auto dispatch only: opt-in until the kernels have run on a GPU.

    The kernels match the reference in Triton's interpreter (float64 to ~1e-15) and compile for
    sm_80 and sm_90, but no GPU was at hand to run them, time them or tune their block sizes; until
    then automatic dispatch does not pick them.
    """
    if call.query.device.type == "cpu":
        return "Triton's interpreter (TRITON_INTERPRET=1) is for tests; force it with backend='additive_triton'"
    return "not yet validated on GPU hardware; force it with backend='additive_triton'"


def run(call: Call) -> AttentionResult:
    a, b, v, value = flatten(call)
    shape = call.scores_shape  # (..., Tq, Tk)
    masks = _KernelMasks.build(call.region, shape, a.device)
    out, weights = _AdditiveSoftmax.apply(a, b, v, value, masks, call.need_weights)
    out = out.reshape(*shape[:-1], value.shape[-1])
    return AttentionResult(out, None if weights is None else weights.reshape(shape))


register(
    "additive_triton",
    run,
    supports,
    "additive score + softmax in Triton kernels (CUDA), FlashAttention-style; no (..., Tq, Tk, A) tensor",
    worthwhile,
)


# ---------------------------------------------------------------------------------------------
# masks, as the kernels take them


@dataclass(frozen=True)
class _KernelMasks:
    """A call's mask split into what the kernels evaluate: a band of keys, key padding, a dense rest."""

    lo: int | None  # query i may attend keys j >= i + lo; None: no lower bound
    hi: int | None  # ... and j <= i + hi; None: no upper bound (causal(offset): hi = offset)
    valid: Tensor | None  # (B, Tk) uint8, 1 = a real key
    inner: int  # rows of N per example of the padding: N / B
    dense: Tensor | None  # (N, Tq, Tk) uint8 view, stride 0 over the rows it is shared by

    @classmethod
    def build(cls, region: Mask | None, shape: tuple[int, ...], device: torch.device) -> _KernelMasks:
        parts = () if region is None else region.parts if isinstance(region, And) else (region,)
        lo, hi, valid, rest = None, None, None, []
        for part in parts:
            if isinstance(part, (Causal, SlidingWindow)):  # bands intersect: the largest lo, the smallest hi
                if isinstance(part, SlidingWindow):
                    lo = max(lo, part.offset - part.left) if lo is not None else part.offset - part.left
                    part_hi = part.offset + part.right
                else:
                    part_hi = part.offset
                hi = min(hi, part_hi) if hi is not None else part_hi
            elif isinstance(part, KeyPadding):
                part.materialize(shape)  # raises AttentionError when (B, Tk) does not fit the scores
                ok = part.valid.to(device)
                valid = ok if valid is None else valid & ok
            else:
                rest.append(part)
        *lead, tq, tk = shape
        n = math.prod(lead)
        dense = and_masks(*rest)
        if dense is not None:
            dense = dense.materialize(shape, device).expand(shape).reshape(n, tq, tk).view(torch.uint8)
        if valid is not None:
            valid = valid.contiguous().view(torch.uint8)
        inner = n // shape[0] if valid is not None else 1
        return cls(lo, hi, valid, inner, dense)


# ---------------------------------------------------------------------------------------------
# the autograd Function and the kernel launches


def _kernels():
    """The kernels module, built in the mode (compiled or interpreted) that ``TRITON_INTERPRET`` asks for now."""
    import triton

    from . import _triton_additive_kernels as kernels

    if kernels.INTERPRETED != bool(triton.knobs.runtime.interpret):
        kernels = importlib.reload(kernels)
    return kernels


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _value_block(dv: int) -> int:
    return max(16, 1 << max(0, dv - 1).bit_length())  # a power of two >= Dv; tl.dot's K needs >= 8


def _mask_args(masks: _KernelMasks, dummy: Tensor) -> tuple[list, dict]:
    """(pointers, strides and sizes) and constexpr flags of the masks; ``dummy`` stands in for absent tensors."""
    valid = masks.valid if masks.valid is not None else dummy
    dense = masks.dense if masks.dense is not None else dummy
    sv = masks.valid.stride() if masks.valid is not None else (0, 0)
    sd = masks.dense.stride() if masks.dense is not None else (0, 0, 0)
    flags = dict(
        HAS_LO=masks.lo is not None,
        HAS_HI=masks.hi is not None,
        HAS_VALID=masks.valid is not None,
        HAS_DENSE=masks.dense is not None,
    )
    return [valid, dense, masks.inner, masks.lo or 0, masks.hi or 0, *sv, *sd], flags


def _forward(a, b, v, value, masks: _KernelMasks, write_scores: bool):
    """Launch the forward kernel: (out (N, Tq, Dv), lse (N, Tq), scores (N, Tq, Tk) or None)."""
    n, tq, hidden = a.shape
    tk, dv = b.shape[1], value.shape[-1]
    out = a.new_empty(n, tq, dv)
    lse = a.new_empty(n, tq)
    scores = a.new_full((n, tq, tk), -math.inf) if write_scores else None
    bm, bn, ba = config.block_q, config.block_k, config.block_a
    q_blocks = -(-tq // bm)
    if n * q_blocks == 0:
        return out, lse, scores
    (valid, dense, inner, lo, hi, *mask_strides), flags = _mask_args(masks, a)
    s = scores if scores is not None else out
    ss = scores.stride() if scores is not None else (0, 0, 0)
    _kernels().forward_kernel[(n * q_blocks,)](
        a, b, v, value, out, lse, s, valid, dense,
        tq, tk, hidden, dv, inner, lo, hi, q_blocks,
        *a.stride(), *b.stride(), *v.stride(), *value.stride(),
        *out.stride(), *lse.stride(), *ss, *mask_strides,
        WRITE_SCORES=write_scores, BM=bm, BN=bn, BA=ba, BD=_value_block(dv), num_warps=config.num_warps, **flags,
    )
    return out, lse, scores


def _backward(a, b, v, value, masks: _KernelMasks, lse, delta, d_out, d_weights, hidden_grads: bool):
    """Launch the backward kernel: da (N, Tq, A), db (N, Tk, A), dv (N, A) (None unless hidden_grads), dvalue."""
    n, tq, hidden = a.shape
    tk, dv = b.shape[1], value.shape[-1]
    bm, bn, ba = config.block_q, config.block_k, config.block_a
    k_blocks = -(-tk // bn)
    da = torch.zeros_like(a, memory_format=torch.contiguous_format) if hidden_grads else None
    db = torch.zeros_like(b, memory_format=torch.contiguous_format) if hidden_grads else None
    dv_parts = a.new_zeros(n, k_blocks, hidden) if hidden_grads else None
    d_value = a.new_zeros(n, tk, dv)
    if n * k_blocks == 0 or tq == 0:
        return da, db, None if dv_parts is None else dv_parts.sum(1), d_value
    (valid, dense, inner, lo, hi, *mask_strides), flags = _mask_args(masks, a)
    dw = d_weights if d_weights is not None else a
    sdw = d_weights.stride() if d_weights is not None else (0, 0, 0)
    grads = (da, db, dv_parts) if hidden_grads else (a, a, a)  # the kernel writes none of them without HIDDEN_GRADS
    grad_strides = [s for g in grads for s in (g.stride() if hidden_grads else (0, 0, 0))]
    _kernels().backward_kernel[(n * k_blocks,)](
        a, b, v, value, d_out, lse, delta, dw, valid, dense,
        *grads, d_value,
        tq, tk, hidden, dv, inner, lo, hi, k_blocks,
        *a.stride(), *b.stride(), *v.stride(), *value.stride(),
        *d_out.stride(), *lse.stride(), *sdw, *mask_strides,
        *grad_strides, *d_value.stride(),
        HAS_DW=d_weights is not None, HIDDEN_GRADS=hidden_grads,
        BM=bm, BN=bn, BA=ba, BD=_value_block(dv), num_warps=config.num_warps, **flags,
    )
    return da, db, None if dv_parts is None else dv_parts.sum(1), d_value


class _AdditiveSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, v, value, masks, need_weights):
        # a (N, Tq, A), b (N, Tk, A), v (N, A), value (N, Tk, Dv); masks: _KernelMasks
        ctx.set_materialize_grads(False)
        cd = _compute_dtype(a.dtype)
        a_c, b_c, v_c, value_c = (t.detach().to(cd) for t in (a, b, v, value))
        out, lse, scores = _forward(a_c, b_c, v_c, value_c, masks, need_weights)
        weights = None
        if scores is not None:
            weights = scores.sub_(lse[..., None]).exp_()  # 0 where not allowed and on rows with no key
        ctx.masks = masks
        ctx.dtypes = (a.dtype, b.dtype, v.dtype, value.dtype)
        ctx.save_for_backward(a_c, b_c, v_c, value_c, out, lse, weights)
        return out.to(value.dtype), None if weights is None else weights.to(a.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_weights):
        a, b, v, value, out, lse, weights = ctx.saved_tensors
        cd = a.dtype
        d_out = torch.zeros_like(out) if d_out is None else d_out.to(cd)
        d_weights = None if d_weights is None else d_weights.to(cd)
        delta = (d_out * out).sum(-1)  # rowsum(dP ⊙ P) per query: dO·O for the output ...
        if d_weights is not None:
            delta = delta + (d_weights * weights).sum(-1)  # ... and dW·W for the weights
        hidden_grads = any(ctx.needs_input_grad[:3])
        da, db, dvec, d_value = _backward(a, b, v, value, ctx.masks, lse, delta, d_out, d_weights, hidden_grads)
        return (
            None if da is None or not ctx.needs_input_grad[0] else da.to(ctx.dtypes[0]),
            None if db is None or not ctx.needs_input_grad[1] else db.to(ctx.dtypes[1]),
            None if dvec is None or not ctx.needs_input_grad[2] else dvec.to(ctx.dtypes[2]),
            d_value.to(ctx.dtypes[3]) if ctx.needs_input_grad[3] else None,
            None,
            None,
        )
