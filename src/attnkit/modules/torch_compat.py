"""Compatibility with ``torch.nn.MultiheadAttention``: its weights, masks and extra keys, converted
at the edge into attnkit's.

Shape legend: B batch, H heads, Hkv key/value heads, Tq query positions, Tk key positions, D model
dim, Dh = D / H. Masks: attnkit's True = may attend; torch's ``attn_mask`` True = *blocked*.

- ``from_torch``: the body of ``MultiHeadAttention.from_torch`` (a copy of a torch module's weights).
- ``_torch_mask``, ``_from_attn_mask``, ``_is_causal``: ``attn_mask`` (Tq, Tk) or (B·H, Tq, Tk)
  and the ``is_causal`` hint as one attnkit mask.
- ``_padding``: ``key_padding_mask`` (B, Tk), bool True = padding or float added to the scores.
- ``_per_example``: a 3-D ``mask`` (B, Tq, Tk), as ``masks.from_torch_attn_mask`` gives, read per example.
- ``_extra_keys`` and ``_ExtraKeys``: the keys and values that ``add_bias_kv``/``add_zero_attn`` append
  after the Tk projected ones, and a mask over them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..core import masks
from ..errors import AttentionError, shape_str

__all__ = ["from_torch"]


def from_torch(cls: type[nn.Module], module: nn.MultiheadAttention, **kwargs) -> nn.Module:
    """``cls.from_torch(module, **kwargs)`` (``cls``: ``MultiHeadAttention`` or a subclass): a
    ``cls`` built with ``module``'s options and a copy of its weights."""
    if "kv_heads" in kwargs:
        raise AttentionError("from_torch: nn.MultiheadAttention has no grouped key/value heads; drop kv_heads")
    has_bias = module.in_proj_bias is not None
    kwargs = {
        "batch_first": module.batch_first,
        "add_bias_kv": module.bias_k is not None,
        "add_zero_attn": module.add_zero_attn,
        **kwargs,
    }
    new = cls(
        module.embed_dim,
        module.num_heads,
        dropout=module.dropout,
        bias=has_bias,
        kdim=module.kdim,
        vdim=module.vdim,
        **kwargs,
    )
    weight = module.out_proj.weight
    new.to(device=weight.device, dtype=weight.dtype)
    if module.in_proj_weight is not None:  # packed (D == kdim == vdim)
        w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    with torch.no_grad():
        for proj, w in ((new.q_proj, w_q), (new.k_proj, w_k), (new.v_proj, w_v)):
            proj.weight.copy_(w)
        if has_bias:
            for proj, b in zip((new.q_proj, new.k_proj, new.v_proj), module.in_proj_bias.chunk(3)):
                proj.bias.copy_(b)
        new.out_proj.weight.copy_(module.out_proj.weight)
        if new.out_proj.bias is not None:
            new.out_proj.bias.copy_(module.out_proj.bias)
        if new.bias_k is not None:
            new.bias_k.copy_(module.bias_k)
            new.bias_v.copy_(module.bias_v)
    return new


def _torch_mask(
    attn_mask: Tensor | None, is_causal: bool, b: int, h: int, tq: int, tk: int, past: int = 0
) -> masks.Mask | None:
    """torch's ``attn_mask`` and ``is_causal`` of a call as one mask over scores (B, H, Tq, Tk), None
    without them; the call's query i is at position ``past`` + i (``past`` keys cached before it)."""
    torch_mask = None if attn_mask is None else _from_attn_mask(attn_mask, b, h, tq, tk)
    if is_causal:
        if attn_mask is None:
            raise AttentionError(
                "is_causal=True is a hint that attn_mask is the causal mask (as in nn.MultiheadAttention), "
                "so it needs attn_mask, e.g. nn.Transformer.generate_square_subsequent_mask(Tq); for causal "
                "attention without one, use MultiHeadAttention(..., causal=True) or mask=masks.causal()"
            )
        if not torch.compiler.is_compiling() and not _is_causal(attn_mask, past):
            where = f"key j > query i + {past} (query i at position {past} + i after the cache)" if past else ""
            raise AttentionError(
                f"is_causal=True says attn_mask {shape_str(attn_mask.shape)} is the causal mask (blocked "
                f"exactly where {where or 'key j > query i'}), but it is not; drop is_causal to apply "
                f"attn_mask as given"
            )
        torch_mask = masks.causal(past)  # the same mask, in a form the fast paths recognise
    return torch_mask


def _from_attn_mask(attn_mask: Tensor, b: int, h: int, tq: int, tk: int) -> masks.Mask:
    """``nn.MultiheadAttention``'s ``attn_mask`` (Tq, Tk) or (B·H, Tq, Tk), True = blocked."""
    if not isinstance(attn_mask, Tensor):
        raise AttentionError(f"attn_mask must be a bool or float tensor, got {type(attn_mask).__name__}")
    if attn_mask.dim() == 3 and tuple(attn_mask.shape) == (b * h, tq, tk):
        attn_mask = attn_mask.reshape(b, h, tq, tk)  # row b·H + h: example b, head h (torch's order)
    elif attn_mask.dim() != 2 or tuple(attn_mask.shape) != (tq, tk):
        raise AttentionError(
            f"attn_mask has shape {shape_str(attn_mask.shape)} but expected (Tq, Tk) = {shape_str((tq, tk))} "
            f"or (B·H, Tq, Tk) = {shape_str((b * h, tq, tk))}, as nn.MultiheadAttention's"
        )
    return masks.from_torch_attn_mask(attn_mask)


def _is_causal(attn_mask: Tensor, past: int = 0) -> bool:
    """Whether torch's ``attn_mask`` (..., Tq, Tk) blocks exactly the keys j > i + ``past`` (bool
    True, or -inf with 0 elsewhere)."""
    tq, tk = attn_mask.shape[-2:]
    above = torch.ones(tq, tk, dtype=torch.bool, device=attn_mask.device).triu(1 + past)  # (Tq, Tk)
    if attn_mask.dtype == torch.bool:
        return bool((attn_mask == above).all())
    blocked = attn_mask == float("-inf")
    return bool((blocked == above).all() and (attn_mask.masked_fill(blocked, 0.0) == 0).all())


def _per_example(mask: masks.Mask | None) -> masks.Mask | None:
    """The mask argument's rule: a 3-D tensor or ``Dense`` mask is (B, Tq, Tk), the same for every
    head, so (B, 1, Tq, Tk) against scores (B, H, Tq, Tk); inside ``&`` and ``|`` too."""
    if isinstance(mask, masks.Dense) and mask.tensor.dim() == 3:
        return masks.Dense(mask.tensor.unsqueeze(1))
    if isinstance(mask, (masks.And, masks.Or)):
        return type(mask)(*map(_per_example, mask.parts))
    return mask


def _padding(key_padding_mask: Tensor | None, b: int, tk: int) -> masks.Mask | None:
    """``key_padding_mask`` (B, Tk) as torch's: bool True = padding, or float added to the scores."""
    kpm = key_padding_mask
    if kpm is None or (isinstance(kpm, Tensor) and kpm.dtype == torch.bool):
        return None if kpm is None else masks.from_key_padding(kpm)
    if not isinstance(kpm, Tensor) or not kpm.is_floating_point():
        got = f"dtype {kpm.dtype}" if isinstance(kpm, Tensor) else f"type {type(kpm).__name__}"
        raise AttentionError(
            f"key_padding_mask has {got} but expected torch.bool (True = padding) or a floating dtype "
            f"(added to the scores), as nn.MultiheadAttention's"
        )
    if tuple(kpm.shape) != (b, tk):
        raise AttentionError(
            f"key_padding_mask has shape {shape_str(kpm.shape)} but expected (B, Tk) = {shape_str((b, tk))}"
        )
    return masks.Dense(kpm[:, None, None, :])  # (B, 1, 1, Tk)


def _extra_keys(
    k: Tensor, v: Tensor, bias_k: Tensor | None, bias_v: Tensor | None, add_zero_attn: bool
) -> tuple[Tensor, Tensor]:
    """Projected keys and values (B, Hkv, Tk, Dh) with torch's extra keys appended: ``bias_k``/``bias_v``
    (add_bias_kv), then a zero key and value (add_zero_attn)."""
    b = k.shape[0]
    if bias_k is not None:
        for name, extra in (("k", bias_k), ("v", bias_v)):
            extra = rearrange(extra, "1 1 (H Dh) -> 1 H 1 Dh", H=k.shape[1]).expand(b, -1, -1, -1)
            if name == "k":
                k = torch.cat([k, extra], dim=2)
            else:
                v = torch.cat([v, extra], dim=2)
    if add_zero_attn:
        k = torch.cat([k, k.new_zeros(b, k.shape[1], 1, k.shape[-1])], dim=2)
        v = torch.cat([v, v.new_zeros(b, v.shape[1], 1, v.shape[-1])], dim=2)
    return k, v


@dataclass(frozen=True, eq=False)
class _ExtraKeys(masks.Mask):
    """``inner`` over the first Tk keys, and ``n`` keys appended after them (``add_bias_kv``,
    ``add_zero_attn``) that every query may attend, as torch pads its masks with a column."""

    inner: masks.Mask
    n: int

    def _inner_shape(self, shape):
        return (*shape[:-1], shape[-1] - self.n)

    def materialize(self, shape, device=None):
        m = self.inner.materialize(self._inner_shape(shape), device)
        m = m.expand(*m.shape[:-1], shape[-1] - self.n)  # a mask may broadcast over keys
        return F.pad(m, (0, self.n), value=True)

    def bias(self, shape, device=None, dtype=torch.float32):
        b = self.inner.bias(self._inner_shape(shape), device, dtype)
        if b is None:
            return None
        return F.pad(b.expand(*b.shape[:-1], shape[-1] - self.n), (0, self.n), value=0.0)
