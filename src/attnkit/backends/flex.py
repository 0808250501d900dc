"""``flex``: structured masks (causal, windows, padding, block-sparse) on PyTorch's FlexAttention.

attnkit's masks are rules, not tensors, so each translates to a FlexAttention ``mask_mod``
(``mask_mod(b, h, q_idx, kv_idx) -> bool``, True = may attend, our polarity) and a block mask
that lets the compiled kernel skip whole blocks nobody attends. Scores are the dot family,
rewritten onto a scaled dot product as for SDPA; the normalizer is softmax.

Limits, measured on torch 2.13: FlexAttention has no backward on CPU (training there takes
another path) and no float64 there (its compiled kernel takes float32, float16 and bfloat16),
and every new shape costs a compilation (about 20 s on a 2-core CPU for T=256), so on CPU it is
used only when forced (``backend="flex"``); on CUDA it is chosen automatically.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..core.functional import AttentionResult, Call
from ..core.masks import And, BlockSparse, Causal, KeyPadding, Mask, Or, SlidingWindow
from ..core.nonfinite import maybe_any, nonfinite_rows, poison, reaches
from .registry import register
from .sdpa import as_dot_product
from .sdpa import supports as sdpa_supports

CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the compiled CPU kernel takes (torch 2.13)


def mask_mod(mask: Mask):
    """The FlexAttention mask_mod of a mask, or None where the mask has no rule form (Dense)."""
    if isinstance(mask, Causal):
        return lambda b, h, q, kv: kv <= q + mask.offset
    if isinstance(mask, SlidingWindow):
        return lambda b, h, q, kv: (kv >= q + mask.offset - mask.left) & (kv <= q + mask.offset + mask.right)
    if isinstance(mask, KeyPadding):
        valid = mask.valid
        return lambda b, h, q, kv: valid[b, kv]
    if isinstance(mask, BlockSparse):
        layout, block = mask.layout, mask.block
        return lambda b, h, q, kv: layout[q // block, kv // block]
    if isinstance(mask, (And, Or)):
        from torch.nn.attention.flex_attention import and_masks, or_masks

        parts = [mask_mod(p) for p in mask.parts]
        if any(p is None for p in parts):
            return None
        return (and_masks if isinstance(mask, And) else or_masks)(*parts)
    return None


def _depends_on_batch(mask: Mask) -> bool:
    if isinstance(mask, KeyPadding):
        return True
    return isinstance(mask, (And, Or)) and any(_depends_on_batch(p) for p in mask.parts)


def _validate(mask: Mask, shape: tuple[int, ...]) -> None:
    """Raise AttentionError where a mask's tensors do not fit these sizes (cheap: no (Tq, Tk) tensor)."""
    if isinstance(mask, KeyPadding):
        mask.materialize(shape)  # a (B, 1, 1, Tk) view
    elif isinstance(mask, BlockSparse):
        need = (-(-shape[-2] // mask.block), -(-shape[-1] // mask.block))
        if tuple(mask.layout.shape) != need:
            mask.materialize(shape)  # raises, naming the layout's shape and the one expected
    elif isinstance(mask, (And, Or)):
        for part in mask.parts:
            _validate(part, shape)


def supports(call: Call) -> str | None:
    reason = sdpa_supports(call)
    if reason is not None:
        return reason.replace("SDPA", "FlexAttention")
    if call.dropout > 0:
        return "FlexAttention has no dropout"
    if call.region is None or mask_mod(call.region) is None:
        return "FlexAttention pays off for structured masks (causal, window, padding, block-sparse) only"
    if call.query.dim() not in (3, 4) or call.key.dim() != call.query.dim():
        return "FlexAttention takes (B, T, D) or (B, H, T, D) inputs"
    device, dtype = call.query.device, call.query.dtype
    if device.type == "cpu" and dtype not in CPU_DTYPES:  # its compiled CPU kernel: an InductorError
        return f"FlexAttention on CPU takes float32, float16 or bfloat16, got dtype {dtype} on device {device}"
    if device.type == "cpu" and call.requires_grad:
        return "FlexAttention has no backward on CPU"
    return None


def worthwhile(call: Call) -> str | None:
    if call.query.device.type == "cpu":
        return "on CPU each new shape costs a compilation (~20 s); force backend='flex' to use it"
    return None


@functools.cache
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def run(call: Call) -> AttentionResult:
    from torch.nn.attention.flex_attention import create_block_mask

    q, k, scale = as_dot_product(call)
    v = call.value
    squeeze = q.dim() == 3
    if squeeze:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)  # (B, 1, T, D)
    b, h = torch.broadcast_shapes(q.shape[:2], k.shape[:2], v.shape[:2])
    q, k, v = (t.expand(b, h, *t.shape[-2:]) for t in (q, k, v))
    tq, tk = q.shape[-2], k.shape[-2]
    _validate(call.region, (b, h, tq, tk))
    block_mask = create_block_mask(
        mask_mod(call.region), b if _depends_on_batch(call.region) else None, None, tq, tk, device=q.device
    )
    out: Tensor = _compiled()(q, k, v, block_mask=block_mask, scale=scale)
    out = out.squeeze(1) if squeeze else out
    return AttentionResult(_nan_queries(call, out), None, None)


def _nan_queries(call: Call, out: Tensor) -> Tensor:
    """A query row holding NaN or inf gives a NaN output row wherever it may attend a key, as on
    every other backend (the compiled CPU kernel under a window mask returned finite rows)."""
    bad_q = nonfinite_rows(call.query)  # (..., Tq)
    if not maybe_any(bad_q):
        return out
    shape = call.scores_shape
    every_key = torch.ones(shape[-1], dtype=torch.bool, device=out.device).expand(*shape[:-2], shape[-1])
    has_key = reaches(call.region, every_key, shape)  # (..., Tq, 1)
    return poison(out, has_key & bad_q[..., None])


register(
    "flex",
    run,
    supports,
    "dot-family scores + softmax under structured masks on compiled FlexAttention (block-sparse skipping)",
    worthwhile,
)
