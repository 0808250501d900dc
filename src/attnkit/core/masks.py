"""Masks: which (query, key) pairs may attend.

One polarity for the whole package: **True = may attend**. PyTorch's ``nn.MultiheadAttention``
uses the opposite (True = blocked); convert at the edge with :func:`from_key_padding` and
:func:`from_torch_attn_mask`. SDPA's boolean ``attn_mask`` already has our polarity.

A mask is a small object that knows its rule and prints itself, so fast paths can recognise a
causal or sliding-window mask without reading a dense tensor. Masks compose with ``&`` and ``|``
(or :func:`and_masks`, :func:`or_masks`). Anything a function takes as ``mask`` goes through
:func:`as_mask`: a :class:`Mask`, a bool tensor (True = may attend) or a float tensor added to the
scores (``-inf`` = blocked), broadcastable to the scores' shape (..., Tq, Tk).

Shape legend: B batch, Tq query positions, Tk key positions, T positions of a sequence, G global
positions; (..., Tq, Tk) the scores, whose dim 0 is B where a mask holds one row per example.

The rules:

- :func:`causal`, :func:`sliding_window`: query i attends keys j <= i, or i - left .. i + right;
- :func:`padding` (:class:`KeyPadding`): per-example valid keys; :func:`block_sparse`: a layout of blocks;
- for long inputs: :func:`document` / :func:`packed` (packed sequences: the same sequence id),
  :func:`prefix_lm` (the prefix attended both ways, the rest causally), :func:`global_tokens` and
  :func:`longformer` (a window plus global positions), :func:`sinks` and :func:`streaming`
  (StreamingLLM: a few first keys always, plus a causal window).

A rule over positions answers three questions: :meth:`Mask.materialize` (the dense bool mask),
:meth:`Mask.allows` (the rule at given query and key positions, as a rolling KV cache and the
block-sparse backend need it) and :meth:`Mask.block_layout` (which blocks of Bq x Bk pairs may hold
an allowed pair, without the dense mask). A rule whose verdict depends on the query's position has
an ``offset`` field, the position of query 0, which a KV cache shifts past the cached positions.

>>> from attnkit import masks
>>> m = masks.causal() & masks.sliding_window(2, 0)
>>> m
And(Causal(offset=0), SlidingWindow(left=2, right=0, offset=0))
>>> m.materialize((4, 4)).int()
tensor([[1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [0, 1, 1, 1]], dtype=torch.int32)
>>> (masks.packed([2, 3]) & masks.causal()).materialize((5, 5)).int()
tensor([[1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1]], dtype=torch.int32)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import MAX_INT, AttentionError, check_int, shape_str

__all__ = [
    "And",
    "BlockSparse",
    "Causal",
    "Dense",
    "Document",
    "GlobalTokens",
    "KeyPadding",
    "Mask",
    "Or",
    "PrefixLM",
    "Sinks",
    "SlidingWindow",
    "and_masks",
    "as_mask",
    "block_sparse",
    "causal",
    "document",
    "from_key_padding",
    "from_torch_attn_mask",
    "global_tokens",
    "longformer",
    "or_masks",
    "packed",
    "padding",
    "prefix_lm",
    "sinks",
    "sliding_window",
    "streaming",
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

    def allows(self, i: Tensor, j: Tensor) -> Tensor:
        """The rule at query indices ``i`` and key positions ``j``: integer tensors that broadcast
        together (query i of a call sits at position i + offset); a bool tensor of their broadcast
        shape. A rule holding one row per example (B, ...) reads dim 0 of a result with 3 or more
        dims as the example (size B or 1), as :meth:`materialize` puts B in front of (..., Tq, Tk).

        This default materializes the mask over (max i + 1, max j + 1) pairs and reads it there:
        right for a rule of (i, j) alone, not for one sized to a call (those override it or raise)."""
        shape = torch.broadcast_shapes(i.shape, j.shape)
        if i.numel() == 0 or j.numel() == 0:
            return torch.zeros(shape, dtype=torch.bool, device=i.device)
        grid = (int(i.max()) + 1, int(j.max()) + 1)
        return self.materialize(grid, i.device).expand(grid)[i, j]  # (broadcast of i and j)

    def block_layout(self, shape: Shape, block: int, device: torch.device | str | None = None) -> Tensor:
        """Which blocks of ``block`` x ``block`` (query, key) pairs may hold an allowed pair: a bool
        tensor broadcastable to (..., ceil(Tq / block), ceil(Tk / block)), True at (r, c) where query
        block r (queries r·block ..) may attend a key of key block c. A superset is fine (the pairs
        are then checked one by one); a block left False holds no allowed pair.

        This default materializes the mask; the rules compute their layout from their parameters."""
        return _reduce_blocks(self.materialize(shape, device), block)

    def __and__(self, other: Mask) -> Mask:
        return and_masks(self, other)

    def __or__(self, other: Mask) -> Mask:
        return or_masks(self, other)


def _positions(shape: Shape, device) -> tuple[Tensor, Tensor]:
    tq, tk = shape[-2], shape[-1]
    i = torch.arange(tq, device=device)[:, None]  # (Tq, 1)
    j = torch.arange(tk, device=device)[None, :]  # (1, Tk)
    return i, j


def _grid(shape: Shape, rank: int, device) -> tuple[Tensor, Tensor]:
    """Query and key indices (1.., Tq, 1) and (1.., 1, Tk) with ``rank`` dims (>= 2)."""
    i, j = _positions(shape, device)
    ones = (1,) * (rank - 2)
    return i.reshape(*ones, -1, 1), j.reshape(*ones, 1, -1)


def _spread(x: Tensor, *others: Tensor) -> Tensor:
    """``x`` expanded to the broadcast shape of itself and ``others`` (a view)."""
    return x.expand(torch.broadcast_shapes(x.shape, *(o.shape for o in others)))


def _block_ends(n: int, block: int, device, start: int = 0) -> tuple[Tensor, Tensor]:
    """(first, last) position of each of the ceil(n / block) blocks of positions start .. start + n - 1."""
    lo = start + torch.arange(0, n, block, device=device)  # (nb,)
    return lo, (lo + block - 1).clamp(max=start + n - 1)


def _block_any(x: Tensor, block: int) -> Tensor:
    """(..., T) bool -> (..., ceil(T / block)): whether each block of ``block`` positions holds a True."""
    nb = -(-x.shape[-1] // block)
    return F.pad(x, (0, nb * block - x.shape[-1])).unflatten(-1, (nb, block)).any(-1)


def _block_min_max(x: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """(..., T) integers -> smallest and largest value of each block of ``block`` positions (..., nb)."""
    nb = -(-x.shape[-1] // block)
    if nb:  # the last block padded with its last value: its min and max are unchanged
        x = torch.cat([x, x[..., -1:].expand(*x.shape[:-1], nb * block - x.shape[-1])], -1)
    x = x.unflatten(-1, (nb, block))  # (..., nb, block)
    return x.amin(-1), x.amax(-1)


def _reduce_blocks(m: Tensor, block: int) -> Tensor:
    """A bool mask (..., Tq, Tk) (a dim of size 1 broadcasts) -> (..., nq, nk): any pair per block."""
    if m.shape[-1] > 1:
        m = _block_any(m, block)  # (..., Tq, nk)
    if m.shape[-2] > 1:
        m = _block_any(m.transpose(-1, -2), block).transpose(-1, -2)  # (..., nq, nk)
    return m


def _per_example_view(x: Tensor, rank: int) -> Tensor:
    """(B, X, Y) -> (B, 1.., X, Y) with ``rank`` dims: per-example layouts against (B, ..., nq, nk)."""
    return x.reshape(x.shape[0], *(1,) * (rank - 3), *x.shape[1:])


def _check_examples(name: str, t: Tensor, shape: Shape) -> None:
    """Raise unless ``t``, one row per example (B, ...), fits scores of ``shape`` (B, ..., Tq, Tk)."""
    if len(shape) < 3 or shape[0] != t.shape[0]:
        b = shape[0] if len(shape) >= 3 else "B"
        raise AttentionError(
            f"{name} has shape {shape_str(t.shape)}, one row per example, but the scores have shape "
            f"{shape_str(shape)}: expected scores (B, ..., Tq, Tk) with B = {t.shape[0]} (got B = {b}), "
            f"or a {name} shared by every example"
        )


def _rank(name: str, table: Tensor, i: Tensor, j: Tensor, per_example: bool | None = None) -> int:
    """The dims of ``allows``' result; a per-example ``table`` (B, ...) (by default: a 2-D one)
    needs 3 or more, B or 1 in front."""
    rank = max(i.dim(), j.dim(), 2)
    if table.dim() == 2 if per_example is None else per_example:
        lead = torch.broadcast_shapes(i.shape, j.shape)
        if rank < 3 or lead[0] not in (1, table.shape[0]):
            raise AttentionError(
                f"{name} has shape {shape_str(table.shape)}, one row per example, but the positions asked "
                f"for broadcast to {shape_str(lead)}: expected (B, ..., Tq, Tk) with B = {table.shape[0]} or 1 in front"
            )
    return rank


def _lookup(name: str, table: Tensor, pos: Tensor) -> Tensor:
    """``table`` (T,) or (B, T) read at positions ``pos``: (T,) -> table[pos]; (B, T) -> table[b, pos]
    with b along dim 0 of ``pos`` (size B or 1). Positions outside 0..T-1 raise."""
    t = table.shape[-1]
    if not torch.compiler.is_compiling() and pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= t):
        raise AttentionError(
            f"{name} has shape {shape_str(table.shape)}, covering positions 0..{t - 1}, but positions "
            f"{int(pos.min())}..{int(pos.max())} were asked for; expected a {name} that covers every "
            f"query (at i + offset) and key position of the call"
        )
    table = table.to(pos.device)
    if table.dim() == 1:
        return table[pos]
    rows = torch.arange(table.shape[0], device=pos.device).reshape(-1, *(1,) * (pos.dim() - 1))  # (B, 1..)
    return table[rows, pos]


def _check_positions(name: str, values: Tensor) -> Tensor:
    """``values`` as an integer tensor of positions (>= 0), else raise naming ``name``."""
    if not isinstance(values, Tensor):
        try:
            values = torch.as_tensor(values, dtype=torch.long if len(values) == 0 else None)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise AttentionError(f"{name} must be an integer tensor or a list of ints, got {values!r}") from None
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise AttentionError(f"{name} has dtype {values.dtype} but expected an integer dtype")
    if values.numel() and not torch.compiler.is_compiling() and int(values.min()) < 0:
        raise AttentionError(f"{name} holds {int(values.min())} but expected positions and lengths >= 0")
    return values


@dataclass(frozen=True)
class Causal(Mask):
    """Query i may attend keys j <= i + offset (top-left aligned, as SDPA's ``is_causal``)."""

    offset: int = 0

    def __post_init__(self):
        check_int("causal offset", self.offset, -MAX_INT)

    def materialize(self, shape, device=None):
        i, j = _positions(shape, device)
        return j <= i + self.offset  # (Tq, Tk)

    def allows(self, i, j):
        return j <= i + self.offset

    def block_layout(self, shape, block, device=None):
        _, q_last = _block_ends(shape[-2], block, device)
        k_first, _ = _block_ends(shape[-1], block, device)
        return k_first[None, :] <= q_last[:, None] + self.offset  # (nq, nk)


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
        return self.allows(i, j)  # (Tq, Tk)

    def allows(self, i, j):
        c = i + self.offset  # the window's centre
        return (j >= c - self.left) & (j <= c + self.right)

    def block_layout(self, shape, block, device=None):
        q_first, q_last = _block_ends(shape[-2], block, device)
        k_first, k_last = _block_ends(shape[-1], block, device)
        # a block of consecutive queries reaches the keys q_first + offset - left .. q_last + offset + right
        reach_lo, reach_hi = q_first + self.offset - self.left, q_last + self.offset + self.right
        return (k_first[None, :] <= reach_hi[:, None]) & (k_last[None, :] >= reach_lo[:, None])  # (nq, nk)


@dataclass(frozen=True, repr=False)
class KeyPadding(Mask):
    """Per-example valid keys: ``valid`` (B, Tk), True = a real key (not padding)."""

    valid: Tensor

    def __repr__(self):
        return f"KeyPadding(valid={shape_str(self.valid.shape)})"

    def _check(self, shape):
        b, tk = self.valid.shape
        if len(shape) < 3 or shape[0] != b or shape[-1] != tk:
            raise AttentionError(
                f"key padding mask has shape {shape_str(self.valid.shape)} but expected (B, Tk) = "
                f"({shape[0] if len(shape) >= 3 else 'B'}, {shape[-1]}) for scores of shape {shape_str(shape)}"
            )

    def materialize(self, shape, device=None):
        self._check(shape)
        b, tk = self.valid.shape
        view = (b,) + (1,) * (len(shape) - 2) + (tk,)  # (B, 1.., 1, Tk)
        return self.valid.to(device).reshape(view)

    def allows(self, i, j):
        rank = _rank("key padding mask", self.valid, i, j)
        j = j.reshape(*(1,) * (rank - j.dim()), *j.shape)
        return _spread(_lookup("key padding mask", self.valid, j), i)

    def block_layout(self, shape, block, device=None):
        self._check(shape)
        valid = _block_any(self.valid.to(device), block)  # (B, nk)
        return valid.reshape(valid.shape[0], *(1,) * (len(shape) - 2), -1)  # (B, 1.., 1, nk)


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

    def allows(self, i, j):
        return self.layout.to(i.device)[i // self.block, j // self.block]

    def block_layout(self, shape, block, device=None):
        if block != self.block:
            return super().block_layout(shape, block, device)
        need = (-(-shape[-2] // block), -(-shape[-1] // block))
        if tuple(self.layout.shape) != need:
            self.materialize(shape, device)  # raises, naming the layout's shape and the one expected
        return self.layout.to(device)  # (nq, nk)


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

    def allows(self, i, j):
        out = self.parts[0].allows(i, j)
        for part in self.parts[1:]:
            out = out & part.allows(i, j)
        return out

    def block_layout(self, shape, block, device=None):
        out = self.parts[0].block_layout(shape, block, device)  # a superset: each part has a pair there
        for part in self.parts[1:]:
            out = out & part.block_layout(shape, block, device)
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

    def allows(self, i, j):
        out = self.parts[0].allows(i, j)
        for part in self.parts[1:]:
            out = out | part.allows(i, j)
        return out

    def block_layout(self, shape, block, device=None):
        out = self.parts[0].block_layout(shape, block, device)
        for part in self.parts[1:]:
            out = out | part.block_layout(shape, block, device)
        return out


def _integer_table(name: str, t, dims: str) -> Tensor:
    """``t`` as a (T,) or (B, T) integer tensor, else raise naming ``name`` and ``dims``."""
    if not isinstance(t, Tensor):
        raise AttentionError(f"{name} must be an integer torch.Tensor of shape {dims}, got {type(t).__name__}")
    if t.dim() not in (1, 2) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise AttentionError(
            f"{name} has shape {shape_str(t.shape)} and dtype {t.dtype} but expected an integer tensor of shape {dims}"
        )
    return t


def _check_covers(name: str, t: Tensor, need: int, what: str) -> None:
    if t.shape[-1] < need:
        raise AttentionError(
            f"{name} has shape {shape_str(t.shape)}, covering {t.shape[-1]} positions, but the call needs "
            f"{need} ({what}); expected one entry per position of the sequence"
        )


@dataclass(frozen=True, eq=False, repr=False)
class Document(Mask):
    """Packed sequences (documents): query i may attend key j iff both belong to the same sequence,
    ``ids[i + offset] == key_ids[j]``.

    ``ids`` (T,) shared by every example or (B, T), one row per example: an integer sequence id per
    position; ``key_ids`` (T,) or (B, T) the keys' ids where they differ (default: ``ids``, the
    self-attention case); ``offset`` the position of query 0 (a KV cache shifts it). The ids may
    run past the call (query i reads position i + offset, key j position j), so one mask serves
    every step of a decoder. Usually combined with :func:`causal`; see :func:`packed`.
    """

    ids: Tensor
    key_ids: Tensor | None = None
    offset: int = 0

    def __post_init__(self):
        _integer_table("document ids", self.ids, "(T,) or (B, T)")
        if self.key_ids is not None:
            _integer_table("document key_ids", self.key_ids, "(T,) or (B, T)")
            if self.ids.dim() == self.key_ids.dim() == 2 and self.ids.shape[0] != self.key_ids.shape[0]:
                raise AttentionError(
                    f"document ids {shape_str(self.ids.shape)} and key_ids {shape_str(self.key_ids.shape)} "
                    f"have different B; expected one row per example in both"
                )
        check_int("document offset", self.offset, 0)

    @property
    def keys(self) -> Tensor:
        """The keys' ids (T,) or (B, T)."""
        return self.ids if self.key_ids is None else self.key_ids

    def __repr__(self):
        keys = "" if self.key_ids is None else f", key_ids={shape_str(self.key_ids.shape)}"
        return f"Document(ids={shape_str(self.ids.shape)}{keys}, offset={self.offset})"

    def _check(self, shape):
        tq, tk = shape[-2], shape[-1]
        for name, t in (("document ids", self.ids), ("document key_ids", self.keys)):
            if t.dim() == 2:
                _check_examples(name, t, shape)
        queries = f"queries at positions {self.offset}..{self.offset + tq - 1}"
        _check_covers("document ids", self.ids, self.offset + tq, queries)
        _check_covers(f"document {'ids' if self.key_ids is None else 'key_ids'}", self.keys, tk, f"Tk = {tk} keys")

    def materialize(self, shape, device=None):
        self._check(shape)
        per_example = self.ids.dim() == 2 or self.keys.dim() == 2
        return self.allows(*_grid(shape, len(shape) if per_example else 2, device))  # (B?, 1.., Tq, Tk)

    def allows(self, i, j):
        keys = "document ids" if self.key_ids is None else "document key_ids"
        rank = max(_rank("document ids", self.ids, i, j), _rank(keys, self.keys, i, j))
        i, j = (x.reshape(*(1,) * (rank - x.dim()), *x.shape) for x in (i, j))
        return _lookup("document ids", self.ids, i + self.offset) == _lookup(keys, self.keys, j)

    def block_layout(self, shape, block, device=None):
        self._check(shape)
        tq, tk = shape[-2], shape[-1]
        q_lo, q_hi = _block_min_max(self.ids.to(device)[..., self.offset : self.offset + tq], block)  # (B?, nq)
        k_lo, k_hi = _block_min_max(self.keys.to(device)[..., :tk], block)  # (B?, nk)
        # a shared id lies in both blocks' ranges, so the ranges meet (exact for sorted ids: packing)
        layout = (q_lo[..., :, None] <= k_hi[..., None, :]) & (k_lo[..., None, :] <= q_hi[..., :, None])
        return layout if layout.dim() == 2 else _per_example_view(layout, len(shape))  # (B?, 1.., nq, nk)


@dataclass(frozen=True, eq=False, repr=False)
class PrefixLM(Mask):
    """Prefix language model: query i may attend key j iff j < prefix (the prefix is read both ways)
    or j <= i + offset (the rest causally).

    ``prefix``: an int, or a (B,) integer tensor of one prefix length per example, at most Tk;
    ``offset``: the position of query 0 (a KV cache shifts it).
    """

    prefix: int | Tensor
    offset: int = 0

    def __post_init__(self):
        if isinstance(self.prefix, Tensor):
            if self.prefix.dim() != 1:
                raise AttentionError(
                    f"prefix_lm prefix has shape {shape_str(self.prefix.shape)} but expected an int or an "
                    f"integer tensor (B,) of one prefix length per example"
                )
            _check_positions("prefix_lm prefix", self.prefix)
        else:
            check_int("prefix_lm prefix", self.prefix, 0)
        check_int("prefix_lm offset", self.offset, -MAX_INT)

    def __repr__(self):
        prefix = shape_str(self.prefix.shape) if isinstance(self.prefix, Tensor) else self.prefix
        return f"PrefixLM(prefix={prefix}, offset={self.offset})"

    def _check(self, shape):
        tk = shape[-1]
        per_example = isinstance(self.prefix, Tensor)
        if per_example:
            _check_examples("prefix_lm prefix", self.prefix, shape)
        longest = (int(self.prefix.max()) if self.prefix.numel() else 0) if per_example else self.prefix
        if not torch.compiler.is_compiling() and longest > tk:
            raise AttentionError(
                f"prefix_lm prefix {longest} is beyond the Tk = {tk} keys of scores {shape_str(shape)}; "
                f"expected prefix lengths in 0..{tk}"
            )

    def _prefix(self, rank: int, device) -> Tensor | int:
        """The prefix, (B, 1..) with ``rank`` dims when given per example."""
        if not isinstance(self.prefix, Tensor):
            return self.prefix
        return self.prefix.to(device).reshape(-1, *(1,) * (rank - 1))

    def materialize(self, shape, device=None):
        self._check(shape)
        return self.allows(*_grid(shape, len(shape) if isinstance(self.prefix, Tensor) else 2, device))

    def allows(self, i, j):
        if isinstance(self.prefix, Tensor):
            rank = _rank("prefix_lm prefix", self.prefix, i, j, per_example=True)
            i, j = (x.reshape(*(1,) * (rank - x.dim()), *x.shape) for x in (i, j))
        else:
            rank = 2
        return (j < self._prefix(rank, j.device)) | (j <= i + self.offset)

    def block_layout(self, shape, block, device=None):
        self._check(shape)
        _, q_last = _block_ends(shape[-2], block, device)
        k_first, _ = _block_ends(shape[-1], block, device)
        causal = k_first[None, :] <= q_last[:, None] + self.offset  # (nq, nk)
        rank = len(shape) if isinstance(self.prefix, Tensor) else 2
        return (k_first < self._prefix(rank, device)) | causal  # (B?, 1.., nq, nk)


@dataclass(frozen=True, eq=False, repr=False)
class GlobalTokens(Mask):
    """Longformer's global attention: query i may attend key j iff position i + offset or position
    j is global (a global position attends every key, and every query attends it).

    ``indices``: the global positions, an integer tensor (G,) shared by every example or (B, G) one
    row per example (positions past the call have no effect), or a bool tensor (T,) or (B, T),
    True = global; ``offset``: the position of query 0 (a KV cache shifts it).
    """

    indices: Tensor
    offset: int = 0

    def __post_init__(self):
        t = self.indices
        if not isinstance(t, Tensor) or t.dim() not in (1, 2) or t.is_floating_point() or t.is_complex():
            got = f"shape {shape_str(t.shape)} and dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise AttentionError(
                f"global_tokens indices has {got} but expected integer positions (G,) or (B, G), or a bool "
                f"tensor (T,) or (B, T) with True = global"
            )
        if t.dtype != torch.bool:
            _check_positions("global_tokens indices", t)
        check_int("global_tokens offset", self.offset, 0)

    def __repr__(self):
        t = self.indices
        if t.dtype != torch.bool and t.dim() == 1 and t.numel() <= 8:
            return f"GlobalTokens(indices={t.tolist()}, offset={self.offset})"
        kind = "bool" if t.dtype == torch.bool else "indices"
        return f"GlobalTokens({kind}={shape_str(t.shape)}, offset={self.offset})"

    def _check(self, shape):
        if self.indices.dim() == 2:
            _check_examples("global_tokens indices", self.indices, shape)
        if self.indices.dtype == torch.bool:
            need = max(shape[-2] + self.offset, shape[-1])
            _check_covers("global_tokens indices", self.indices, need, "every query (at i + offset) and key")

    def _is_global(self, pos: Tensor) -> Tensor:
        """Whether the positions ``pos`` are global; a per-example table reads B along dim 0 of ``pos``."""
        t = self.indices.to(pos.device)
        if t.dtype == torch.bool:
            return _lookup("global_tokens indices", t, pos)
        if t.dim() == 2:  # (B, G) -> (B, 1.., G) against pos (B or 1, ..., 1)
            t = t.reshape(t.shape[0], *(1,) * (pos.dim() - 1), t.shape[1])
        return (pos[..., None] == t).any(-1)  # O(pos x G): G is a few positions

    def materialize(self, shape, device=None):
        self._check(shape)
        return self.allows(*_grid(shape, len(shape) if self.indices.dim() == 2 else 2, device))

    def allows(self, i, j):
        rank = _rank("global_tokens indices", self.indices, i, j)
        i, j = (x.reshape(*(1,) * (rank - x.dim()), *x.shape) for x in (i, j))
        return _spread(self._is_global(i + self.offset) | self._is_global(j), i, j)

    def block_layout(self, shape, block, device=None):
        self._check(shape)
        rows = (1, -1) if self.indices.dim() == 2 else (-1,)  # per example: (B, T) flags from (1, T) positions
        q = self._is_global((torch.arange(shape[-2], device=device) + self.offset).reshape(rows))  # (B?, Tq)
        k = self._is_global(torch.arange(shape[-1], device=device).reshape(rows))  # (B?, Tk)
        layout = _block_any(q, block)[..., :, None] | _block_any(k, block)[..., None, :]  # (B?, nq, nk)
        return layout if layout.dim() == 2 else _per_example_view(layout, len(shape))


@dataclass(frozen=True)
class Sinks(Mask):
    """Attention sinks (StreamingLLM): the first ``k`` keys, j < k, are visible to every query."""

    k: int

    def __post_init__(self):
        check_int("sinks k", self.k, 0)

    def materialize(self, shape, device=None):
        i, j = _positions(shape, device)
        return self.allows(i, j)  # (Tq, Tk)

    def allows(self, i, j):
        return _spread(j < self.k, i)

    def block_layout(self, shape, block, device=None):
        k_first, _ = _block_ends(shape[-1], block, device)
        return (k_first < self.k)[None, :].expand(-(-shape[-2] // block), -1)  # (nq, nk)


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


def document(ids: Tensor, key_ids: Tensor | None = None) -> Document:
    """Packed sequences: query i may attend key j iff ``ids[i] == key_ids[j]`` (``key_ids``
    defaults to ``ids``); ``ids`` (T,) or (B, T) integer sequence ids per position."""
    return Document(ids, key_ids)


def packed(lengths: Tensor | Sequence[int] | Sequence[Sequence[int]]) -> Document:
    """:func:`document` for sequences of these lengths packed one after another: ``[2, 3]`` gives
    ids [0, 0, 1, 1, 1]. A 2-D ``lengths`` (B, n) packs each example's row; the rows must sum to
    the same T (pad with a sequence of its own)."""
    try:
        t = torch.as_tensor(lengths, dtype=torch.long if len(lengths) == 0 else None)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise AttentionError(
            f"packed lengths must be a list of ints, a list of lists of equal sums or an integer tensor "
            f"(n,) or (B, n), got {lengths!r}"
        ) from None
    if t.dim() not in (1, 2):
        raise AttentionError(
            f"packed lengths has shape {shape_str(t.shape)} but expected (n,) or (B, n) sequence lengths"
        )
    t = _check_positions("packed lengths", t)
    if t.dim() == 1:
        return Document(torch.repeat_interleave(torch.arange(len(t), device=t.device), t))  # (T,)
    sums = t.sum(-1)
    if len(sums) and bool((sums != sums[0]).any()):
        raise AttentionError(
            f"packed lengths (B, n) = {shape_str(t.shape)} has rows summing to {sums.tolist()}; expected every "
            f"example to pack the same T positions (pad with a sequence of its own)"
        )
    ids = torch.stack([torch.repeat_interleave(torch.arange(t.shape[1], device=t.device), row) for row in t])
    return Document(ids.reshape(t.shape[0], -1))  # (B, T)


def prefix_lm(prefix: int | Tensor) -> PrefixLM:
    """Query i may attend key j iff j < prefix or j <= i; ``prefix`` an int or (B,) per example."""
    return PrefixLM(prefix)


def global_tokens(indices: Tensor | Sequence[int]) -> GlobalTokens:
    """Query i may attend key j iff i or j is a global position: ``indices`` ints (G,), an integer
    tensor (G,) or (B, G), or a bool tensor (T,) or (B, T) with True = global."""
    if not isinstance(indices, Tensor):
        indices = _check_positions("global_tokens indices", indices)
    return GlobalTokens(indices)


def longformer(window: int, global_indices: Tensor | Sequence[int]) -> Or:
    """Longformer: a symmetric sliding window of ``window`` keys each side, or a global position
    (:func:`global_tokens`): ``sliding_window(window, window) | global_tokens(global_indices)``."""
    return Or(sliding_window(window, window), global_tokens(global_indices))


def sinks(k: int) -> Sinks:
    """The first ``k`` keys are visible to every query (StreamingLLM's attention sinks)."""
    return Sinks(k)


def streaming(sinks: int, window: int) -> And:
    """StreamingLLM: each query attends the first ``sinks`` keys and the ``window`` keys before it
    (and itself): ``causal() & (sinks(k) | sliding_window(window, 0))``. What a rolling
    ``KVCache(sinks=k, window=w)`` keeps."""
    check_int("streaming sinks", sinks, 0)
    check_int("streaming window", window, 0)
    return And(causal(), Or(Sinks(sinks), sliding_window(window, 0)))


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
