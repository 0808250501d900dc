"""``sdpa``: dot-family scores with softmax on ``torch.nn.functional.scaled_dot_product_attention``.

PyTorch's fused kernels (FlashAttention-class on CUDA, a flash-style kernel on CPU) score only with
a scaled dot product, so the other dot-family scores are first rewritten into one:

- ``dot``: qᵀk is SDPA with scale 1;
- ``scaled_dot``: SDPA as it is;
- ``general``: qᵀWk = (qW)ᵀk, SDPA on (qW, k) with scale 1;
- ``cosine``: (q/‖q‖τ)ᵀ(k/‖k‖), SDPA on normalized inputs with scale 1 (but not with a learnable
  τ in half precision, whose gradient SDPA's half-precision backward makes inaccurate).

SDPA never returns the weights, so a call with ``need_weights=True`` goes elsewhere. Grouped-query
calls (``enable_gqa=True``) run on SDPA's ``enable_gqa`` with key and value left at Hkv heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.functional import AttentionResult, Call
from ..core.masks import Causal
from ..core.normalizers import Softmax
from .registry import register

SCORES = ("dot", "scaled_dot", "general", "cosine")


def supports(call: Call) -> str | None:
    if call.score.name not in SCORES:
        return f"SDPA scores with a dot product only; score={call.score.name!r} is not one of {SCORES}"
    if type(call.normalizer) is not Softmax:
        return f"SDPA normalizes with softmax only, not {call.normalizer}"
    if call.need_weights:
        return "SDPA cannot return the weights (need_weights=True)"
    if call.gauss is not None:
        return "local-p's Gaussian factor is applied after the softmax, which SDPA cannot do"
    tau = call.score_params.get("temperature")
    if tau is not None and tau.requires_grad and call.query.dtype in (torch.bfloat16, torch.float16):
        # measured: τ's gradient is a sum with cancellation over SDPA's half-precision backward of
        # q/τ; in bfloat16 it came out 12% off where the reference was within 0.1%
        return "a learnable cosine temperature in half precision loses its gradient's accuracy in SDPA"
    return None


def as_dot_product(call: Call) -> tuple[Tensor, Tensor, float | None]:
    """(q', k', scale) such that softmax(scale · q'k'ᵀ) equals softmax(score(q, k))."""
    q, k, params = call.query, call.key, call.score_params
    name = call.score.name
    if name == "scaled_dot":
        return q, k, None
    if name == "general":
        return q @ params["W"], k, 1.0  # (..., Tq, Dq) x (..., Dq, Dk) -> (..., Tq, Dk)
    if name == "cosine":
        # normalize and divide by τ in at least float32: τ's gradient sums over every query entry
        wide = torch.promote_types(q.dtype, torch.float32)
        q, k = F.normalize(q.to(wide), dim=-1), F.normalize(k, dim=-1)
        if "temperature" in params:
            q = q / params["temperature"].to(wide)[..., None, None]
        return q.to(k.dtype), k, 1.0
    return q, k, 1.0  # dot


def run(call: Call) -> AttentionResult:
    q, k, scale = as_dot_product(call)
    v = call.value
    kwargs: dict = {}
    if call.kv_groups > 1:  # grouped-query: q (..., H, Tq, D), k and v (..., Hkv, Tk, D)
        batch = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
        q, k, v = (t.expand(*batch, *t.shape[-3:]) for t in (q, k, v))
        lead, kwargs["enable_gqa"] = q.shape[:-2], True
    else:
        lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        q, k, v = (t.expand(*lead, *t.shape[-2:]) for t in (q, k, v))  # SDPA's kernels want equal batch dims
    region, has_key = call.region, None
    if region == Causal(0):
        kwargs["is_causal"] = True  # SDPA's causal mask is top-left aligned, as ours
    elif region is not None:
        shape = (*lead, q.shape[-2], k.shape[-2])
        allowed = region.materialize(shape, q.device)
        bias = region.bias(shape, q.device, q.dtype)
        has_key = allowed.any(-1, keepdim=True)  # (..., Tq, 1)
        if torch.compiler.is_compiling() or not bool(has_key.all()):  # no data-dependent branch in a graph
            allowed = allowed | ~has_key  # a row with no key: compute it on all keys, then zero it
        else:
            has_key = None
        kwargs["attn_mask"] = allowed if bias is None else bias.masked_fill(~allowed, float("-inf"))
    # without a head dim SDPA runs its unfused math on the CPU: given (B, 1, T, D) views it takes its
    # fused kernel instead (measured at B=8, T=512, D=256, one thread: forward 33 ms against 62)
    missing = max(0, 4 - q.dim())
    if missing:
        q, k, v = (t[(None,) * missing] for t in (q, k, v))
        if "attn_mask" in kwargs:
            kwargs["attn_mask"] = kwargs["attn_mask"][(None,) * missing]
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=call.dropout, scale=scale, **kwargs)
    out = out[(0,) * missing] if missing else out
    if has_key is not None:
        out = out * has_key  # (..., Tq, Dv): zero output for rows that may attend nothing
    return AttentionResult(out, None, None)


register("sdpa", run, supports, "dot/scaled_dot/general/cosine + softmax on PyTorch's fused SDPA kernels", gqa=True)
