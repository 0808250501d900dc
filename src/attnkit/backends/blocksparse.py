"""``blocksparse``: dot-family scores + softmax on the blocks of pairs a mask allows, O(T · allowed blocks).

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dq / Dk / Dv feature dims;
here also nq / nk query / key blocks of Bq positions, M the most key blocks one query block reads.

Masks for long inputs leave most (query block, key block) pairs empty: packed documents, prefix-LM,
StreamingLLM's sinks + window, Longformer's window + global tokens, block-sparse layouts. Each rule
gives its block layout from its parameters (:meth:`~attnkit.masks.Mask.block_layout`, (..., nq, nk),
no dense mask); each query block then gathers the key blocks it may attend, padded to M per row,
and runs PyTorch's SDPA on (..., nq, Bq, Dq) x (..., nq, M·Bq, Dk) with the exact element mask of
those pairs (:meth:`~attnkit.masks.Mask.allows` at the gathered positions) as its bool
``attn_mask``. Autograd keeps block-sized tensors only: forward and backward are O(Tq · M · Bq).

Scores are the dot family rewritten onto a scaled dot product as for ``sdpa``
(:func:`~attnkit.backends.sdpa.as_dot_product`), the normalizer softmax. A query with no allowed
key gets output 0, as on the reference. Declined: weights asked for (SDPA never returns them),
other scores or normalizers, float (additive) masks, dense tensor masks, rules without a block
layout. Chosen automatically for Tq, Tk >= :data:`MIN_LENGTH` with at most :data:`MAX_DENSITY` of
the blocks allowed; other calls stay on SDPA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.functional import AttentionResult, Call
from ..core.masks import (
    And,
    BlockSparse,
    Causal,
    Dense,
    Document,
    GlobalTokens,
    KeyPadding,
    Mask,
    Or,
    PrefixLM,
    Sinks,
    SlidingWindow,
)
from ..errors import AttentionError
from .registry import register
from .sdpa import as_dot_product
from .sdpa import supports as sdpa_supports

__all__ = ["MAX_DENSITY", "MIN_LENGTH", "block_size", "layout", "run", "supports", "worthwhile"]

RULES = (Causal, SlidingWindow, KeyPadding, BlockSparse, Document, PrefixLM, GlobalTokens, Sinks)
MIN_LENGTH = 1024  # automatic dispatch: shorter calls stay on SDPA, whose dense pass is as fast there
MAX_DENSITY = 0.5  # automatic dispatch: the share of allowed blocks above which dense SDPA is faster
# Bq: larger blocks run SDPA on fewer, larger matmuls; smaller ones skip finer. Measured on CPU (one
# thread, float32, document mask of 8 x 1024, H=8, Dh=64, forward + backward): Bq = 64, 128, 256
# took about 10, 7 and 6 s, dense masked SDPA 28 s. 128 keeps most of the gain for finer masks
# (windows); short inputs get smaller blocks, so that they still have several.
MIN_BLOCK, MAX_BLOCK = 8, 128


def block_size(tq: int, tk: int) -> int:
    """Bq: a power of two near max(Tq, Tk) / 16, within [MIN_BLOCK, MAX_BLOCK]."""
    target = max(tq, tk, 1) / 16
    return min(MAX_BLOCK, max(MIN_BLOCK, 1 << max(0, math.ceil(math.log2(target)))))


def _unsupported(mask: Mask) -> str | None:
    """Why ``mask`` has no block rule here (None: every part has one)."""
    if isinstance(mask, (And, Or)):
        return next((r for r in map(_unsupported, mask.parts) if r is not None), None)
    if isinstance(mask, Dense):
        if mask.tensor.is_floating_point():
            return f"an additive float mask {mask!r} is not a rule of blocks"
        return f"a dense tensor mask {mask!r} has no block rule (SDPA takes it as it is)"
    if not isinstance(mask, RULES):
        return f"mask part {mask!r} has no block rule"
    return None


def supports(call: Call) -> str | None:
    reason = sdpa_supports(call)
    if reason is not None:
        return reason
    if call.region is None:
        return "no mask: no block to skip"
    reason = _unsupported(call.region)
    if reason is not None:
        return reason
    shape = call.scores_shape
    if 0 in shape[-2:]:
        return f"no queries or no keys (Tq={shape[-2]}, Tk={shape[-1]})"
    if call.value.dim() - 2 > len(shape) - 2:
        return f"value {tuple(call.value.shape)} has more leading dims than the scores {tuple(shape)}"
    return None


def layout(call: Call) -> tuple[Tensor, int]:
    """The call's block layout ``(*L, nq, nk)`` bool (``*L`` broadcastable to the scores' leading
    dims, at least one dim) and Bq."""
    shape = call.scores_shape
    tq, tk = shape[-2:]
    bq = block_size(tq, tk)
    blocks = call.region.block_layout(shape, bq, call.query.device)  # (..., nq, nk), may broadcast
    rank = max(len(shape), 3)
    blocks = blocks.reshape(*(1,) * (rank - blocks.dim()), *blocks.shape)
    return blocks.expand(*blocks.shape[:-2], -(-tq // bq), -(-tk // bq)), bq


def worthwhile(call: Call) -> str | None:
    """Automatic dispatch only: None for long calls whose mask leaves most blocks empty."""
    tq, tk = call.scores_shape[-2:]
    if min(tq, tk) < MIN_LENGTH:
        return f"Tq={tq}, Tk={tk}: shorter than {MIN_LENGTH}, where dense SDPA is as fast"
    blocks, bq = layout(call)
    density = float(blocks.float().mean())
    if density > MAX_DENSITY:
        return (
            f"the mask allows {density:.0%} of the {bq}x{bq} blocks, more than {MAX_DENSITY:.0%}: dense SDPA is faster"
        )
    return None


def run(call: Call) -> AttentionResult:
    """The call on its allowed blocks; agrees with :func:`~attnkit.core.functional.reference`."""
    reason = supports(call)
    if reason is not None:
        raise AttentionError(f"backend='blocksparse' cannot run this call: {reason}")
    q, k, scale = as_dot_product(call)
    v = call.value
    shape = call.scores_shape
    lead, (tq, tk) = tuple(shape[:-2]), shape[-2:]
    squeeze = not lead  # (Tq, Tk) scores: one leading dim of 1, dropped at the end
    lead = lead or (1,)
    q, k, v = (t.expand(*lead, *t.shape[-2:]) for t in (q, k, v))  # (*lead, T, D)
    blocks, bq = layout(call)  # (*L, nq, nk)
    nq, nk = blocks.shape[-2:]
    device = q.device

    # each query block's allowed key blocks first, in order, then the others; keep M slots per row
    cols = torch.arange(nk, device=device)  # (nk,)
    m = max(int(blocks.sum(-1).max()), 1)  # M
    order = torch.where(blocks, cols, cols + nk).sort(-1).values[..., :m]  # (*L, nq, M)
    slot = order < nk  # (*L, nq, M): a real allowed block, not row padding
    order = order.masked_fill(~slot, 0)
    offsets = torch.arange(bq, device=device)  # (Bq,)
    kpos = (order[..., None] * bq + offsets).flatten(-2)  # (*L, nq, M·Bq): key positions gathered
    kreal = (slot[..., None] & (kpos.unflatten(-1, (m, bq)) < tk)).flatten(-2)  # (*L, nq, M·Bq)
    qpos = torch.arange(nq * bq, device=device).reshape(nq, bq)  # (nq, Bq)

    # the exact rule at the gathered pairs (positions past the ends read the last one, then are masked)
    i = qpos.clamp(max=tq - 1).reshape(*(1,) * len(lead), nq, bq, 1)  # (1.., nq, Bq, 1)
    j = kpos.clamp(max=tk - 1)[..., None, :]  # (*L, nq, 1, M·Bq)
    allowed = call.region.allows(i, j) & kreal[..., None, :] & (qpos < tq)[..., None]  # (*L', nq, Bq, M·Bq)
    has_key = allowed.any(-1, keepdim=True)  # (*L', nq, Bq, 1)
    allowed = allowed | ~has_key  # a row with no key: computed on every slot, then zeroed

    def gather(x: Tensor) -> Tensor:  # (*lead, Tk, D) -> (*lead, nq, M·Bq, D)
        xb = F.pad(x, (0, 0, 0, nk * bq - tk)).unflatten(-2, (nk, bq))  # (*lead, nk, Bq, D)
        if all(s == 1 for s in order.shape[:-2]):  # one layout for every example and head
            got = xb.index_select(-3, order.flatten())  # (*lead, nq·M, Bq, D)
        else:
            index = order.expand(*lead, nq, m).reshape(*lead, nq * m, 1, 1)
            got = xb.gather(-3, index.expand(*lead, nq * m, bq, x.shape[-1]))  # (*lead, nq·M, Bq, D)
        return got.reshape(*lead, nq, m * bq, x.shape[-1])

    qb = F.pad(q, (0, 0, 0, nq * bq - tq)).unflatten(-2, (nq, bq))  # (*lead, nq, Bq, Dq)
    kb, vb = gather(k), gather(v)  # (*lead, nq, M·Bq, Dk), (*lead, nq, M·Bq, Dv)
    # SDPA's fused kernels take 4-D (N, nq, Bq, D): the leading dims flattened into N, the mask
    # kept at N = 1 where it is the same for every example and head
    n = math.prod(lead)
    allowed = allowed.reshape(*(1,) * (len(lead) + 3 - allowed.dim()), *allowed.shape)
    if any(s != 1 for s in allowed.shape[:-3]):
        allowed = allowed.expand(*lead, *allowed.shape[-3:]).reshape(n, *allowed.shape[-3:])
        has_key = has_key.reshape(*(1,) * (len(lead) + 3 - has_key.dim()), *has_key.shape)
        has_key = has_key.expand(*lead, *has_key.shape[-3:]).reshape(n, *has_key.shape[-3:])
    else:
        allowed, has_key = allowed.reshape(1, *allowed.shape[-3:]), has_key.reshape(1, *has_key.shape[-3:])
    out = F.scaled_dot_product_attention(
        *(t.reshape(n, *t.shape[-3:]) for t in (qb, kb, vb)), attn_mask=allowed, dropout_p=call.dropout, scale=scale
    )  # (N, nq, Bq, Dv)
    out = (out * has_key).reshape(*lead, nq * bq, -1)[..., :tq, :]  # (*lead, Tq, Dv): rows without a key are 0
    return AttentionResult(out[0] if squeeze else out, None, None)


register(
    "blocksparse",
    run,
    supports,
    "dot-family + softmax on the blocks a long-input mask allows (documents, prefix-LM, sinks, Longformer); O(T·blocks)",
    worthwhile,
)
