"""Position-aware score modifiers: rotary embeddings (RoPE), ALiBi, T5's relative position bias,
and tanh soft-capping of the scores (Gemma 2).

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dh head dim, R rotated
features (R <= Dh), N buckets of T5's relative positions.

Positions are top-left aligned, as the masks': query i of a call is at position ``offset`` + i, key
j at position j (a self-attention :class:`~attnkit.KVCache` sets ``offset`` to the cached length).

- :class:`Rotary` (RoPE, Su et al. 2021) rotates q and k before the score: feature pairs (f,
  f + R/2) of position p turn by the angle p · base^(-2f/R), so qᵀk depends on the positions'
  difference only: Hugging Face Llama's rotate-half layout. ``interleaved=True`` pairs features
  (2f, 2f + 1) instead, as GPT-J and x-transformers.
- :class:`ALiBi` (Press et al. 2022) adds -m_h · ``|i + offset - j|`` to head h's scores, with
  x-transformers' slopes m_h. A :class:`~attnkit.masks.Mask` that blocks nothing: causal ALiBi is
  ``ALiBi(H) & masks.causal()``.
- :class:`T5RelativeBias` (Raffel et al. 2020) adds a learned bias per head and bucket of the
  relative position j - (i + offset), bucketed as Hugging Face's T5; :meth:`T5RelativeBias.mask`
  gives it as a :class:`RelativeBias` mask. T5 does not divide its scores by √Dh: that is the
  choice of score (``score="dot"``), not of this bias.
- :func:`soft_cap` wraps a score as cap · tanh(score / cap) (Gemma 2's logit soft-capping), a new
  :class:`~attnkit.core.scores.Score` named ``"<base>+softcap"``; fused backends do not know that
  name and decline it, the reference runs it.

Composition order on the reference path: score -> soft cap -> + biases (ALiBi, T5, float masks)
-> mask -> normalize. The cap bounds the content score only: a bias added after it keeps its full
size, so a large negative bias (a user's float mask, ALiBi far away) is not squashed to -cap.

Registry: ``POSITIONS["rope" | "alibi" | "t5"]`` is the class of each method.

>>> import torch
>>> from attnkit import positions
>>> rope = positions.Rotary(8)
>>> q, k = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
>>> s = rope.rotate(q) @ rope.rotate(k).transpose(-2, -1)  # (1, 5, 5)
>>> s2 = rope.rotate(q, offset=3) @ rope.rotate(k, offset=3).transpose(-2, -1)  # every position + 3
>>> bool(torch.allclose(s, s2, atol=1e-5))
True
>>> positions.ALiBi(2).bias((2, 3, 3))[0]  # head 0's slope is 1/16: -|i - j| / 16
tensor([[ 0.0000, -0.0625, -0.1250],
        [-0.0625,  0.0000, -0.0625],
        [-0.1250, -0.0625,  0.0000]])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import MAX_INT, AttentionError, check_bool, check_float_input, check_int, check_rank, shape_str
from .masks import And, Mask, Or
from .scores import Score, ScoreFn, resolve

__all__ = [
    "POSITIONS",
    "ALiBi",
    "RelativeBias",
    "Rotary",
    "T5RelativeBias",
    "alibi_slopes",
    "select_heads",
    "soft_cap",
    "t5_bucket",
]

Shape = Sequence[int]


def _positive(name: str, value, rule: str) -> float:
    """``value`` as a float, if it is a real number, finite and > 0; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AttentionError(f"{name} must be a finite number > 0 ({rule}), got {value!r} ({type(value).__name__})")
    try:
        v = float(value)
    except OverflowError:
        raise AttentionError(f"{name} must be a finite number > 0 ({rule}), got an int too large for a float") from None
    if not math.isfinite(v) or v <= 0:
        raise AttentionError(f"{name} must be a finite number > 0 ({rule}), got {value!r}")
    return v


def _grid(shape: Shape, offset: int, device) -> tuple[Tensor, Tensor]:
    """Query positions offset + i (Tq, 1) and key positions j (1, Tk) of scores (..., Tq, Tk)."""
    i = torch.arange(shape[-2], device=device)[:, None] + offset  # (Tq, 1)
    j = torch.arange(shape[-1], device=device)[None, :]  # (1, Tk)
    return i, j


def _check_heads(what: str, heads: int, shape: Shape) -> None:
    if len(shape) < 3 or shape[-3] != heads:
        raise AttentionError(
            f"{what} holds a bias for H={heads} heads but the scores have shape {shape_str(shape)}, expected "
            f"(..., H={heads}, Tq, Tk): pass query and key with their heads at dim -3, (B, H, T, Dh)"
        )


# ---------------------------------------------------------------------------------------- RoPE


@dataclass(frozen=True)
class Rotary:
    """Rotary position embedding: rotate the first ``dim`` features of q and k by their positions.

    Feature pair f (of R = ``dim``) of position p turns by the angle θ = p · base^(-2f/R):
    x' = x · cos θ + rotate_half(x) · sin θ, with the cos and sin tables repeated over both halves
    (Hugging Face's Llama ``apply_rotary_pos_emb``). Features past R pass unrotated (partial
    rotary, as GPT-J and x-transformers). ``interleaved=True`` pairs features (2f, 2f + 1) instead
    of (f, f + R/2), as GPT-J and x-transformers do.

    Angles are computed in float64 for float64 inputs and in float32 otherwise (as Hugging Face,
    bit for bit in float32), then cast to the input's dtype.
    """

    dim: int  # R, the rotated features: even, at most Dh
    base: float = 10000.0  # θ's base: feature pair f turns base^(-2f/R) radians per position
    interleaved: bool = False  # pairs (2f, 2f + 1) (GPT-J) instead of (f, f + R/2) (Llama)

    def __post_init__(self):
        check_int("rotary dim", self.dim, 2)
        if self.dim % 2:
            raise AttentionError(f"rotary dim must be even (features turn in pairs), got {self.dim}")
        object.__setattr__(self, "base", _positive("rotary base", self.base, "the angles' base, e.g. 10000.0"))
        check_bool("rotary interleaved", self.interleaved)

    def inv_freq(self, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """base^(-2f/R) for f = 0 .. R/2 - 1: (R/2,) radians per position."""
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=dtype, device=device) / self.dim))

    def rotate(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        """``x`` (..., T, Dh) at positions ``offset`` .. ``offset`` + T - 1, rotated: same shape and dtype.

        ``offset``: an int >= 0, or an integer tensor (B,) or (B, 1) of one offset per row of
        ``x`` (B, ..., T, Dh) (left-padded batches, rows decoded from different lengths).
        """
        return self._rotate(x, offset, "x")

    def _rotate(self, x: Tensor, offset: int | Tensor, name: str) -> Tensor:
        check_rank(name, x, 2, "(..., T, Dh)")
        check_float_input(name, x)
        r = self.dim
        if x.shape[-1] < r:
            raise AttentionError(
                f"{name} has shape {shape_str(x.shape)} but expected (..., T, Dh) with Dh >= {r}, the rotary dim "
                f"(partial rotary turns the first dim features; pass a smaller dim)"
            )
        table = torch.float64 if x.dtype == torch.float64 else torch.float32
        pos = self._positions(x, offset, name)  # (T,) or (B, 1.., T)
        freqs = pos.to(table)[..., None] * self.inv_freq(table, x.device)  # (..., T, R/2)
        if self.interleaved:
            emb = freqs.repeat_interleave(2, dim=-1)  # (..., T, R): θ_0 θ_0 θ_1 θ_1 ..
        else:
            emb = torch.cat((freqs, freqs), dim=-1)  # (..., T, R): θ_0 .. θ_{R/2-1} θ_0 .. θ_{R/2-1}
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        turned, rest = x[..., :r], x[..., r:]  # (..., T, R), (..., T, Dh - R)
        out = (turned * cos) + (self._rotate_pairs(turned) * sin)  # (..., T, R)
        return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out

    def _rotate_pairs(self, x: Tensor) -> Tensor:
        """(x1, x2) -> (-x2, x1) for every feature pair: the 90° turn of each pair."""
        if self.interleaved:
            pairs = x.unflatten(-1, (-1, 2))  # (..., R/2, 2)
            return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    @staticmethod
    def _positions(x: Tensor, offset: int | Tensor, name: str) -> Tensor:
        t = x.shape[-2]
        steps = torch.arange(t, device=x.device)  # (T,)
        if not isinstance(offset, Tensor):
            return steps + check_int("rotary offset", offset, 0, MAX_INT - t)
        b = offset.shape[0] if offset.dim() in (1, 2) else None
        integer = not (offset.is_floating_point() or offset.is_complex() or offset.dtype == torch.bool)
        fits = b is not None and (offset.dim() == 1 or offset.shape[1] == 1) and x.dim() >= 3 and x.shape[0] == b
        if not (integer and fits):
            lead = x.shape[0] if x.dim() >= 3 else "B"
            raise AttentionError(
                f"rotary offset has shape {shape_str(offset.shape)} and dtype {offset.dtype} but expected an int or an "
                f"integer tensor (B,) or (B, 1) with B = {lead}, the first dim of {name} {shape_str(x.shape)}"
            )
        if not torch.compiler.is_compiling() and bool((offset < 0).any()):
            raise AttentionError(f"rotary offset must be >= 0, got {offset.flatten().tolist()[:8]}")
        view = (b,) + (1,) * (x.dim() - 3) + (1,)  # (B, 1.., 1)
        return offset.to(x.device, torch.long).reshape(view) + steps  # (B, 1.., T)


# ---------------------------------------------------------------------------------------- ALiBi


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi's head slopes m_h, as x-transformers' ``AlibiPositionalBias._get_slopes``: for H a power
    of two the geometric sequence 2^(-8/H), 2^(-16/H), ..; otherwise the sequence of the power of
    two below H, then every other slope of the one above, up to H slopes."""
    check_int("ALiBi heads", heads)

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_2(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_2(closest) + power_of_2(2 * closest)[0::2][: heads - closest]


@dataclass(frozen=True, repr=False)
class ALiBi(Mask):
    """Attention with linear biases: head h's scores get -m_h · ``|i + offset - j|``.

    Blocks nothing (it materializes all True); ``ALiBi(H) & masks.causal()`` is the causal form,
    ``ALiBi(H)`` alone the bidirectional one (symmetric in i - j, as x-transformers'). ``slopes``:
    H numbers m_h (default :func:`alibi_slopes`); a 0 leaves its head without a bias (as
    x-transformers' ``total_heads`` > ``heads``). ``offset`` is the position of query 0, moved by a
    KV cache as the causal mask's.

    ``directional``: head h's keys to the left (j <= i) get slope m_h and those to the right slope
    m_(H-1-h), the slopes in reverse order, so each head leans one way. The symmetric form cannot
    tell a sequence from its reverse: an encoder that has only it, read by a cross-attention without
    positions, gives "stop" and "pots" the same output; the directional form can. (Not in the ALiBi
    paper, which is causal; one asymmetric choice among several, kept linear in the distance.)
    """

    heads: int
    offset: int = 0
    slopes: tuple[float, ...] | None = None
    directional: bool = False
    right_slopes: tuple[float, ...] | None = None  # keys j > i, when not the default's (set by select_heads)

    def __post_init__(self):
        check_int("ALiBi heads", self.heads)
        check_int("ALiBi offset", self.offset, -MAX_INT)
        if self.slopes is not None:
            s = self.slopes
            ok = isinstance(s, (tuple, list)) and len(s) == self.heads
            ok = ok and all(not isinstance(m, bool) and isinstance(m, (int, float)) and math.isfinite(m) for m in s)
            if not ok:
                raise AttentionError(f"ALiBi slopes must be {self.heads} finite numbers (one per head), got {s!r}")
            object.__setattr__(self, "slopes", tuple(float(m) for m in s))
        check_bool("ALiBi directional", self.directional)
        if self.right_slopes is not None:
            r = tuple(float(m) for m in self.right_slopes)
            if len(r) != self.heads or not all(math.isfinite(m) for m in r):
                raise AttentionError(
                    f"ALiBi right_slopes must be {self.heads} finite numbers, got {self.right_slopes!r}"
                )
            object.__setattr__(self, "right_slopes", r)

    def __repr__(self):
        slopes = "" if self.slopes is None else f", slopes={self.slopes}"
        directional = ", directional=True" if self.directional else ""
        return f"ALiBi(heads={self.heads}, offset={self.offset}{slopes}{directional})"

    def slope_values(self) -> tuple[float, ...]:
        """m_h of every head: ``slopes`` or the default :func:`alibi_slopes`."""
        return self.slopes if self.slopes is not None else tuple(alibi_slopes(self.heads))

    def right_slope_values(self) -> tuple[float, ...]:
        """The slope of every head for keys to the right of the query (j > i)."""
        if self.right_slopes is not None:
            return self.right_slopes
        left = self.slope_values()
        return tuple(reversed(left)) if self.directional else left

    def materialize(self, shape, device=None):
        return torch.ones((1, 1), dtype=torch.bool, device=device)  # (1, 1): every pair may attend

    def bias(self, shape, device=None, dtype=torch.float32):
        _check_heads(repr(self), self.heads, shape)
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        i, j = _grid(shape, self.offset, device)
        distance = (i - j).abs().to(wide)  # (Tq, Tk)
        slopes = torch.tensor(self.slope_values(), dtype=wide, device=device)  # (H,)
        right = self.right_slope_values()
        if right != self.slope_values():  # directional: left keys at m_h, right keys at m_(H-1-h)
            right = torch.tensor(right, dtype=wide, device=device)  # (H,)
            slopes = torch.where(j <= i, slopes[:, None, None], right[:, None, None])  # (H, Tq, Tk)
        else:
            slopes = slopes[:, None, None]  # (H, 1, 1)
        bias = 0.0 - slopes * distance  # (H, Tq, Tk); 0.0 - : no -0.0 on the diagonal
        info = torch.finfo(dtype)  # far keys in half precision: a large finite bias, not -inf
        return bias.clamp(info.min, info.max).to(dtype)


# ------------------------------------------------------------------------------------------ T5


def t5_bucket(relative_position: Tensor, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128):
    """The bucket (0 .. N - 1) of each relative position j - i, as Hugging Face's T5
    ``_relative_position_bucket`` (from Mesh TensorFlow).

    Bidirectional: half the buckets for j > i, half for j <= i; else (causal) only j <= i counts
    (j > i shares bucket 0). Of each half, the first half are exact distances 0, 1, ..; the rest
    are logarithmically wider, up to ``max_distance``, beyond which all distances share the last."""
    buckets = 0
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2  # distances 0 .. max_exact - 1 get a bucket each
    is_small = relative_position < max_exact
    if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    if_large = torch.min(if_large, torch.full_like(if_large, num_buckets - 1))
    return buckets + torch.where(is_small, relative_position, if_large)


def _check_t5(num_buckets, max_distance, bidirectional) -> None:
    check_bool("T5 bidirectional", bidirectional)
    least = 4 if bidirectional else 2  # each direction's buckets: at least one exact and one wider
    check_int("T5 num_buckets", num_buckets, least)
    max_exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
    check_int("T5 max_distance", max_distance, max_exact + 1)


@dataclass(frozen=True, eq=False, repr=False)
class RelativeBias(Mask):
    """T5's relative position bias as a mask that blocks nothing: head h's scores get
    ``table[t5_bucket(j - (i + offset)), h]``, differentiable with respect to ``table`` (N, H)."""

    table: Tensor  # (N, H)
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True
    offset: int = 0

    def __post_init__(self):
        _check_t5(self.num_buckets, self.max_distance, self.bidirectional)
        check_int("T5 offset", self.offset, -MAX_INT)
        t = self.table
        if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[0] != self.num_buckets or not t.is_floating_point():
            got = f"shape {shape_str(t.shape)} and dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise AttentionError(
                f"T5 bias table has {got} but expected a floating tensor (num_buckets, H) = ({self.num_buckets}, H)"
            )

    @property
    def heads(self) -> int:
        return self.table.shape[1]

    def __repr__(self):
        direction = "bidirectional" if self.bidirectional else "causal"
        return (
            f"RelativeBias(heads={self.heads}, num_buckets={self.num_buckets}, max_distance={self.max_distance}, "
            f"{direction}, offset={self.offset})"
        )

    def materialize(self, shape, device=None):
        return torch.ones((1, 1), dtype=torch.bool, device=device)  # (1, 1): every pair may attend

    def bias(self, shape, device=None, dtype=torch.float32):
        _check_heads(repr(self), self.heads, shape)
        i, j = _grid(shape, self.offset, self.table.device)
        buckets = t5_bucket(j - i, self.bidirectional, self.num_buckets, self.max_distance)  # (Tq, Tk)
        values = F.embedding(buckets, self.table)  # (Tq, Tk, H)
        return values.permute(2, 0, 1).to(device=device, dtype=dtype)  # (H, Tq, Tk)


class T5RelativeBias(nn.Module):
    """T5's learned relative position bias: one scalar per head and bucket of j - i, added to the
    scores. ``bias`` is the table, an ``nn.Embedding(num_buckets, heads)`` (Hugging Face's
    ``relative_attention_bias``); ``bidirectional`` False for a causal decoder (T5's ``is_decoder``).

    :meth:`mask` is the bias as a :class:`RelativeBias` mask for ``attnkit.attention(mask=...)``;
    calling the module gives the bias (H, Tq, Tk) itself. T5 scores with ``score="dot"``, without
    1/√Dh (its initialisation absorbs it).
    """

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        check_int("T5 heads", heads)
        _check_t5(num_buckets, max_distance, bidirectional)
        self.heads, self.num_buckets, self.max_distance = heads, num_buckets, max_distance
        self.bidirectional = bidirectional
        self.bias = nn.Embedding(num_buckets, heads)  # (N, H)

    def extra_repr(self) -> str:
        direction = "bidirectional" if self.bidirectional else "causal"
        return f"heads={self.heads}, num_buckets={self.num_buckets}, max_distance={self.max_distance}, {direction}"

    def bucket(self, relative_position: Tensor) -> Tensor:
        """:func:`t5_bucket` of key position - query position, with this module's options."""
        return t5_bucket(relative_position, self.bidirectional, self.num_buckets, self.max_distance)

    def mask(self, offset: int = 0) -> RelativeBias:
        """The bias as a mask over scores (..., H, Tq, Tk), query 0 at position ``offset``."""
        return RelativeBias(self.bias.weight, self.num_buckets, self.max_distance, self.bidirectional, offset)

    def forward(self, tq: int, tk: int, offset: int = 0) -> Tensor:
        """The bias (H, Tq, Tk) of queries ``offset`` .. ``offset`` + Tq - 1 over keys 0 .. Tk - 1."""
        check_int("tq", tq, 0)
        check_int("tk", tk, 0)
        w = self.bias.weight
        return self.mask(offset).bias((self.heads, tq, tk), w.device, w.dtype)


# ------------------------------------------------------------------------------------ soft cap


@dataclass(frozen=True)
class _SoftCapped:
    """score(q, k) = cap · tanh(base(q, k) / cap)

    Gemma 2's logit soft-capping: the scores stay in (-cap, cap), near-linear for |score| << cap.
    """

    base: ScoreFn
    cap: float

    def __call__(self, query: Tensor, key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        return self.cap * torch.tanh(self.base(query, key, params) / self.cap)  # (..., Tq, Tk)


def soft_cap(score: str | Score, cap: float) -> Score:
    """``score`` capped: cap · tanh(score(q, k) / cap), a :class:`~attnkit.core.scores.Score` named
    ``"<score>+softcap"`` with the base score's parameters. ``cap``: a finite number > 0 (Gemma 2
    uses 50.0). Backends that recognise scores by name (SDPA, FlexAttention) decline it."""
    base = resolve(score)
    cap = _positive("softcap", cap, "the scores are squashed into (-cap, cap), e.g. 50.0")
    return Score(f"{base.name}+softcap", _SoftCapped(base.fn, cap), base.params, base.same_dim)


# ------------------------------------------------------------------------------ heads, registry


def select_heads(mask: Mask | None, heads: Sequence[int]) -> Mask | None:
    """``mask`` for the scores of heads ``heads`` only: ALiBi's slopes and T5's table columns are
    taken at those heads (``MultiHeadAttention`` runs heads with different scores apart); any other
    mask is the same for every head and is returned as it is (inside ``&``, ``|`` and wrappers)."""
    heads = list(heads)
    if isinstance(mask, ALiBi):
        left, right = mask.slope_values(), mask.right_slope_values()
        return ALiBi(
            len(heads), mask.offset, tuple(left[h] for h in heads), right_slopes=tuple(right[h] for h in heads)
        )
    if isinstance(mask, RelativeBias):
        return replace(mask, table=mask.table[:, heads])  # (N, len(heads))
    if isinstance(mask, (And, Or)):
        return type(mask)(*(select_heads(p, heads) for p in mask.parts))
    if is_dataclass(mask) and any(f.name == "inner" for f in fields(mask)):  # a wrapper of one mask
        return replace(mask, inner=select_heads(mask.inner, heads))
    return mask


POSITIONS: dict[str, type] = {"rope": Rotary, "alibi": ALiBi, "t5": T5RelativeBias}
