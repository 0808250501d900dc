"""Masks: which (query, key) pairs may attend.

One polarity for the whole package: **True = may attend**. PyTorch's ``nn.MultiheadAttention``
uses the opposite (True = blocked); convert at the edge with :func:`from_key_padding` and
:func:`from_torch_attn_mask`. SDPA's boolean ``attn_mask`` already has our polarity.

A mask is a small object that knows its rule and prints itself, so fast paths can recognise a
causal or sliding-window mask without reading a dense tensor. Masks compose with ``&`` and ``|``
(or :func:`and_masks`, :func:`or_masks`). Anything a function takes as ``mask`` goes through
:func:`as_mask`: a :class:`Mask`, a bool tensor (True = may attend) or a float tensor added to the
scores (``-inf`` = blocked), broadcastable to the scores' shape (..., Tq, Tk).

>>> from attnkit import masks
>>> m = masks.causal() & masks.sliding_window(2, 0)
>>> m
And(Causal(offset=0), SlidingWindow(left=2, right=0, offset=0))
>>> m.materialize((4, 4)).int()
tensor([[1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [0, 1, 1, 1]], dtype=torch.int32)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import MAX_INT, AttentionError, check_int, shape_str

__all__ = [
    "Mask",
    "Causal",
    "SlidingWindow",
    "KeyPadding",
    "BlockSparse",
    "Dense",
    "And",
    "Or",
    "causal",
    "sliding_window",
    "padding",
    "block_sparse",
    "from_key_padding",
    "from_torch_attn_mask",
    "and_masks",
    "or_masks",
    "as_mask",
]

Shape = Sequence[int]


class Mask:
    """Base class: a rule over (query position i, key position j); True = may attend."""

    def materialize(self, shape: Shape, device: torch.device | str | None = None) -> Tensor:
        """A bool tensor broadcastable to ``shape`` = (..., Tq, Tk)."""
        raise NotImplementedError

    def bias(self, shape: Shape, device=None, dtype: torch.dtype = torch.float32) -> Tensor | None:
        """An additive float bias for the allowed pairs, or None (only float masks have one)."""
        return None

    def __and__(self, other: Mask) -> Mask:
        return and_masks(self, other)

    def __or__(self, other: Mask) -> Mask:
        return or_masks(self, other)


def _positions(shape: Shape, device) -> tuple[Tensor, Tensor]:
    tq, tk = shape[-2], shape[-1]
    i = torch.arange(tq, device=device)[:, None]  # (Tq, 1)
    j = torch.arange(tk, device=device)[None, :]  # (1, Tk)
    return i, j


@dataclass(frozen=True)
class Causal(Mask):
    """Query i may attend keys j <= i + offset (top-left aligned, as SDPA's ``is_causal``)."""

    offset: int = 0

    def __post_init__(self):
        check_int("causal offset", self.offset, -MAX_INT)

    def materialize(self, shape, device=None):
        i, j = _positions(shape, device)
        return j <= i + self.offset  # (Tq, Tk)


@dataclass(frozen=True)
class SlidingWindow(Mask):
    """Query i may attend keys i + offset - left .. i + offset + right (both ends included).

    ``offset`` is the absolute position of query 0, e.g. the step of a decoder that attends one
    query at a time (Luong's local-m centres the window of step t on source position t).
    """

    left: int
    right: int
    offset: int = 0

    def __post_init__(self):
        for name, size in (("left", self.left), ("right", self.right)):
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_INT:
                raise AttentionError(
                    f"window {name} size must be an int in 0..2**62, got {size!r} "
                    f"(window=(left, right): query i attends keys i-left..i+right)"
                )
        check_int("window offset", self.offset, -MAX_INT)

    def materialize(self, shape, device=None):
        i, j = _positions(shape, device)
        c = i + self.offset  # (Tq, 1), the window's centre
        return (j >= c - self.left) & (j <= c + self.right)  # (Tq, Tk)


@dataclass(frozen=True, repr=False)
class KeyPadding(Mask):
    """Per-example valid keys: ``valid`` (B, Tk), True = a real key (not padding)."""

    valid: Tensor

    def __repr__(self):
        return f"KeyPadding(valid={shape_str(self.valid.shape)})"

    def materialize(self, shape, device=None):
        b, tk = self.valid.shape
        if len(shape) < 3 or shape[0] != b or shape[-1] != tk:
            raise AttentionError(
                f"key padding mask has shape {shape_str(self.valid.shape)} but expected (B, Tk) = "
                f"({shape[0] if len(shape) >= 3 else 'B'}, {shape[-1]}) for scores of shape {shape_str(shape)}"
            )
        view = (b,) + (1,) * (len(shape) - 2) + (tk,)  # (B, 1.., 1, Tk)
        return self.valid.to(device).reshape(view)


@dataclass(frozen=True, repr=False)
class BlockSparse(Mask):
    """A mask given per block: query i may attend key j iff ``layout[i // block, j // block]``.

    ``layout`` (ceil(Tq / block), ceil(Tk / block)) bool, e.g. a BigBird-style pattern.
    """

    layout: Tensor
    block: int

    def __post_init__(self):
        if not isinstance(self.layout, Tensor) or self.layout.dim() != 2 or self.layout.dtype != torch.bool:
            got = shape_str(self.layout.shape) if isinstance(self.layout, Tensor) else type(self.layout).__name__
            raise AttentionError(f"block_sparse layout has shape {got} but expected a 2-D bool tensor (Tq/block, Tk/block)")
        check_int("block_sparse block", self.block, 1)

    def __repr__(self):
        return f"BlockSparse(layout={shape_str(self.layout.shape)}, block={self.block})"

    def materialize(self, shape, device=None):
        tq, tk = shape[-2], shape[-1]
        need = (-(-tq // self.block), -(-tk // self.block))
        if tuple(self.layout.shape) != need:
            raise AttentionError(
                f"block_sparse layout has shape {shape_str(self.layout.shape)} but expected {shape_str(need)} "
                f"= (ceil(Tq / {self.block}), ceil(Tk / {self.block})) for scores of shape {shape_str(shape)}"
            )
        i, j = _positions(shape, device)
        return self.layout.to(device)[i // self.block, j // self.block]  # (Tq, Tk)


@dataclass(frozen=True, repr=False)
class Dense(Mask):
    """An explicit tensor: bool (True = may attend) or float, added to the scores (-inf = blocked)."""

    tensor: Tensor

    def __post_init__(self):
        t = self.tensor
        if not isinstance(t, Tensor):
            raise AttentionError(f"mask must be a Mask, a bool tensor or a float tensor, got {type(t).__name__}")
        if t.dtype != torch.bool and not t.is_floating_point():
            raise AttentionError(
                f"mask has dtype {t.dtype} but expected torch.bool (True = may attend) or a floating "
                f"dtype (additive, -inf = blocked)"
            )
        # one pass: NaN < inf and +inf < inf are both False
        if t.is_floating_point() and not torch.compiler.is_compiling() and not bool((t < float("inf")).all()):
            raise AttentionError(
                "float mask holds NaN or +inf; expected an additive mask of finite values and -inf (= blocked)"
            )

    def __repr__(self):
        return f"Dense({str(self.tensor.dtype).removeprefix('torch.')}{shape_str(self.tensor.shape)})"

    def _check(self, shape):
        t = self.tensor
        try:
            ok = tuple(torch.broadcast_shapes(t.shape, tuple(shape))) == tuple(shape)
        except RuntimeError:
            ok = False
        if not ok:
            raise AttentionError(
                f"mask has shape {shape_str(t.shape)} but expected a shape broadcastable to the scores' "
                f"shape {shape_str(shape)} (..., Tq, Tk)"
            )

    def materialize(self, shape, device=None):
        self._check(shape)
        t = self.tensor.to(device)
        return t if t.dtype == torch.bool else t != float("-inf")

    def bias(self, shape, device=None, dtype=torch.float32):
        if self.tensor.dtype == torch.bool:
            return None
        self._check(shape)
        t = self.tensor.to(device=device, dtype=dtype)
        return t.masked_fill(t == float("-inf"), 0.0)


@dataclass(frozen=True, init=False)
class And(Mask):
    """Every part allows the pair."""

    parts: tuple[Mask, ...]

    def __init__(self, *parts: Mask):
        object.__setattr__(self, "parts", parts)

    def __repr__(self):
        return f"And({', '.join(map(repr, self.parts))})"

    def materialize(self, shape, device=None):
        out = self.parts[0].materialize(shape, device)
        for part in self.parts[1:]:
            out = out & part.materialize(shape, device)
        return out

    def bias(self, shape, device=None, dtype=torch.float32):
        biases = [b for b in (p.bias(shape, device, dtype) for p in self.parts) if b is not None]
        return sum(biases[1:], biases[0]) if biases else None


@dataclass(frozen=True, init=False)
class Or(Mask):
    """Some part allows the pair."""

    parts: tuple[Mask, ...]

    def __init__(self, *parts: Mask):
        if any(isinstance(p, Dense) and p.tensor.is_floating_point() for p in parts):
            raise AttentionError("or_masks cannot combine additive float masks; pass bool masks instead")
        object.__setattr__(self, "parts", parts)

    def __repr__(self):
        return f"Or({', '.join(map(repr, self.parts))})"

    def materialize(self, shape, device=None):
        out = self.parts[0].materialize(shape, device)
        for part in self.parts[1:]:
            out = out | part.materialize(shape, device)
        return out


def causal(offset: int = 0) -> Causal:
    """Query i may attend keys j <= i + offset."""
    return Causal(offset)


def sliding_window(left: int, right: int = 0, offset: int = 0) -> SlidingWindow:
    """Query i may attend keys i + offset - left .. i + offset + right."""
    return SlidingWindow(left, right, offset)


def padding(lengths: Tensor | Sequence[int], max_len: int | None = None) -> KeyPadding:
    """Key padding from sequence lengths: example b has keys 0 .. lengths[b] - 1."""
    if max_len is not None:
        check_int("max_len", max_len, 0)
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.is_complex():
        raise AttentionError(
            f"lengths has shape {shape_str(lengths.shape)} and dtype {lengths.dtype} but expected "
            f"an integer tensor of shape (B,)"
        )
    if len(lengths) and (lengths.min() < 0 or (max_len is not None and lengths.max() > max_len)):
        raise AttentionError(
            f"lengths must lie in 0..{max_len if max_len is not None else 'Tk'}, got {lengths.tolist()}"
        )
    tk = int(max_len if max_len is not None else (lengths.max() if len(lengths) else 0))
    return KeyPadding(torch.arange(tk, device=lengths.device)[None, :] < lengths[:, None])  # (B, Tk)


def block_sparse(layout: Tensor, block: int) -> BlockSparse:
    """Query i may attend key j iff ``layout[i // block, j // block]``."""
    return BlockSparse(layout, block)


def from_key_padding(key_padding_mask: Tensor) -> KeyPadding:
    """Convert PyTorch's ``key_padding_mask`` (B, Tk), True = padding, to our polarity."""
    if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dim() != 2:
        got = shape_str(key_padding_mask.shape) if isinstance(key_padding_mask, Tensor) else type(key_padding_mask).__name__
        raise AttentionError(f"key_padding_mask has shape {got} but expected (B, Tk) with True = padding")
    if key_padding_mask.dtype != torch.bool:
        raise AttentionError(
            f"key_padding_mask has dtype {key_padding_mask.dtype} but expected torch.bool (True = padding)"
        )
    return KeyPadding(~key_padding_mask)


def from_torch_attn_mask(attn_mask: Tensor) -> Dense:
    """Convert ``nn.MultiheadAttention``'s ``attn_mask`` (bool True = blocked, or float additive)."""
    return Dense(~attn_mask if attn_mask.dtype == torch.bool else attn_mask)


def _flatten(kind: type, masks: Sequence[Mask | Tensor | None]) -> list[Mask]:
    out: list[Mask] = []
    for m in masks:
        m = as_mask(m)
        if m is None:
            continue
        out.extend(m.parts if isinstance(m, kind) else [m])
    return out


def and_masks(*masks: Mask | Tensor | None) -> Mask | None:
    """Pairs allowed by every mask (None entries are ignored; nothing left gives None)."""
    parts = _flatten(And, masks)
    return None if not parts else parts[0] if len(parts) == 1 else And(*parts)


def or_masks(*masks: Mask | Tensor | None) -> Mask | None:
    """Pairs allowed by some mask (None entries are ignored; nothing left gives None)."""
    parts = _flatten(Or, masks)
    return None if not parts else parts[0] if len(parts) == 1 else Or(*parts)


def as_mask(mask: Mask | Tensor | None) -> Mask | None:
    """Normalise anything accepted as ``mask``: None, a :class:`Mask`, a bool or float tensor."""
    if mask is None or isinstance(mask, Mask):
        return mask
    return Dense(mask)
