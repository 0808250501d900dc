"""``KVCache``: the projected keys and values of a ``MultiHeadAttention``'s past calls, for
decoding one step at a time, and the checks and mask shift that go with it.

Shape legend: B batch, H heads, Hkv key/value heads, Tq query positions, Tk key positions, T the
positions a cache holds, Dh head dim.

- :class:`KVCache`, the cache itself: appending into storage that doubles when full, ``reorder``
  for beam search, forks by ``copy``/``deepcopy``, pickling without its weak references; a rolling
  cache (``sinks``, ``window``) keeps the first and the last positions only, and their positions.
- ``_Source``, ``_check_same_source``, ``_check_source_identity``: a cross-attention cache is
  reused only with the very source it was filled from.
- ``_check_fits``: a filled cache's k and v fit the module and the batch that use it.
- ``_check_index``: ``KVCache.reorder``'s index.
- ``_after`` and ``_Later``: the ``mask`` argument shifted for queries after T cached positions.
- ``_at_kept_keys`` and ``_AtPositions``: a call's mask rules over the absolute positions of the
  keys a rolling cache kept, not over their columns.

This file does not import the module that uses it: a cache remembers its owner as a weak
reference to any ``nn.Module``, and ``MultiHeadAttention`` checks that it is the owner.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core import masks
from ..errors import AttentionError, check_bool, check_float_input, check_int, shape_str

__all__ = ["KVCache"]


@dataclass(eq=False)
class KVCache:
    """The projected keys and values of one ``MultiHeadAttention``'s past calls, for decoding one
    step at a time: ``mha(x_t, cache=cache)`` projects only the new positions.

    ``k``, ``v``: (B, Hkv, T, Dh), the projections before ``add_bias_kv``/``add_zero_attn``'s extra
    keys (those are appended at every call); None while empty. ``cross``:

    - False (self-attention): every call appends its keys and values (by default its queries'), and
      its Tq queries sit at positions T .. T + Tq - 1, after the T cached ones: the module's own
      ``causal`` and ``window`` masks are shifted by T, so step-by-step calls equal one causal call
      over the whole sequence.
    - True (cross-attention): the first call projects ``key`` and ``value`` (the source) and stores
      them; later calls reuse them, with ``key``/``value`` omitted or the very same tensors (not
      modified in place since): any other key or value raises, as a new source needs a new cache.

    Rolling cache (StreamingLLM, self-attention only): ``KVCache(sinks=k, window=w)`` keeps, after
    each call, the first ``k`` positions and the last ``w`` ones and drops those in between, so it
    holds at most k + w positions however long the sequence (``window=None``, the default, keeps
    everything). A call attends the kept keys and its own; ``positions`` holds the kept keys'
    absolute positions and ``seen`` counts every position appended (the next query's position),
    while ``length`` is the number held. Mask rules are evaluated at those positions (tensor masks
    cover the call's keys: kept + new), so steps with ``mask=masks.streaming(k, w)`` equal one call
    over the whole sequence with that mask.

    The module updates the cache in place (as Hugging Face's ``DynamicCache``), and the cache
    belongs to the module that filled it: another module (another layer) raises. Query i of a call
    is at position T + i (``seen`` + i once a rolling cache dropped some): mask rules
    (``masks.causal()``, windows, their ``&``/``|``, any :class:`~attnkit.masks.Mask` but a
    tensor) are shifted by T like the module's own, so
    ``mask=masks.causal()`` steps equal ``causal=True``; tensor masks cover all the keys:
    ``key_padding_mask`` (B, T + Tk_new), ``attn_mask`` and ``mask`` (Tq, T + Tk_new). Beam search
    calls :meth:`reorder` when it reorders its hypotheses; ``copy.copy`` and ``copy.deepcopy`` fork
    a cache (appending to one branch leaves the other as it was).

    >>> from attnkit import MultiHeadAttention
    >>> mha = MultiHeadAttention(8, 2, causal=True).eval()
    >>> x, cache = torch.randn(1, 3, 8), KVCache()
    >>> steps = torch.cat([mha(x[:, t : t + 1], cache=cache).output for t in range(3)], 1)
    >>> cache.length, torch.allclose(steps, mha(x).output, atol=1e-6)
    (3, True)
    """

    cross: bool = False
    k: Tensor | None = field(default=None, repr=False)
    v: Tensor | None = field(default=None, repr=False)
    sinks: int | None = None  # rolling: the first positions always kept (None: 0)
    window: int | None = None  # rolling: the last positions kept (None: every position)
    # rolling: positions dropped so far, all between the first ``sinks`` and the last ``window``
    _dropped: int = field(default=0, init=False, repr=False)
    # storage (B, Hkv, capacity, Dh) whose first T positions are k and v: appending writes into it,
    # doubling it when full, so T steps copy O(T) positions in all, not O(T^2) as torch.cat would
    _storage: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False)
    # the module that filled the cache (a weak reference: a cache does not keep a model alive)
    _owner: weakref.ref | None = field(default=None, init=False, repr=False)
    # cross: what the caller passed as key and value when the cache was filled, (_Source, _Source)
    _source: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        check_bool("cross", self.cross)
        if (self.k is None) != (self.v is None):
            raise AttentionError("KVCache needs both k and v (B, Hkv, T, Dh), or neither (an empty cache)")
        for name, size in (("sinks", self.sinks), ("window", self.window)):
            if size is not None:
                check_int(f"KVCache {name}", size, 0)
        if self.sinks is not None and self.window is None:
            raise AttentionError(
                f"KVCache(sinks={self.sinks}) needs window= too: a cache keeps the first sinks positions and "
                f"the last window ones (StreamingLLM); without window it keeps every position"
            )
        if self.cross and self.window is not None:
            raise AttentionError(
                "KVCache(cross=True) holds a fixed source; sinks= and window= (a rolling cache) are for "
                "self-attention caches, KVCache(sinks=k, window=w)"
            )

    def __copy__(self) -> KVCache:
        """A fork sharing the T positions held (never written again) but not the room to grow: its
        first append reallocates, and the original writes only past T, where the fork does not look."""
        new = dataclasses.replace(self)
        new._owner, new._source, new._dropped = self._owner, self._source, self._dropped
        return new

    def __deepcopy__(self, memo) -> KVCache:
        """A fork with its own k and v (clones, so gradients still flow to the past steps)."""
        new = dataclasses.replace(
            self, k=None if self.k is None else self.k.clone(), v=None if self.v is None else self.v.clone()
        )
        new._owner, new._source, new._dropped = self._owner, self._source, self._dropped
        memo[id(self)] = new
        return new

    def __getstate__(self) -> dict:
        """For pickle: without the weak references to the module and source (a loaded cache is
        claimed by the first module that uses it, and a cross one is reused with key=None)."""
        return {**self.__dict__, "_owner": None, "_source": None}

    @property
    def length(self) -> int:
        """T, the key positions held (0 while empty)."""
        return 0 if self.k is None else self.k.shape[2]

    @property
    def seen(self) -> int:
        """The positions appended so far, kept or dropped: the position of the next query."""
        return self.length + self._dropped

    @property
    def positions(self) -> Tensor:
        """(T,) long: the absolute position of each key held (0 .. T-1 unless a rolling cache dropped some)."""
        device = None if self.k is None else self.k.device
        if not self._dropped:
            return torch.arange(self.length, device=device)
        first = min(self.sinks or 0, self.length)  # the sinks, then the last positions after the gap
        start = first + self._dropped
        return torch.cat([torch.arange(first, device=device), torch.arange(start, self.seen, device=device)])

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add keys and values (B, Hkv, Tnew, Dh) after the T held; return all T + Tnew of them.

        Written into the storage in place, except where autograd needs the earlier tensors
        intact (gradients enabled and k, v or the cache requiring them): then a new tensor.
        A rolling cache returns the T + Tnew keys too, then keeps only the first ``sinks`` and the
        last ``window`` of them."""
        if self.window is not None:
            return self._roll(k, v)
        if self.k is None:
            self.k, self.v, self._storage = k, v, None
            return k, v
        t, n = self.length, k.shape[2]
        tracked = torch.is_grad_enabled() and any(x.requires_grad for x in (k, v, self.k, self.v))
        if tracked:
            self.k, self.v, self._storage = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2), None
            return self.k, self.v
        own = self._storage is not None and self.k._base is self._storage[0] and self.v._base is self._storage[1]
        if not own or self._storage[0].shape[2] < t + n:  # (re)allocate with room to grow
            capacity = max(2 * (t + n), 16)
            storage = tuple(x.new_empty(*x.shape[:2], capacity, x.shape[3]) for x in (self.k, self.v))
            storage[0][:, :, :t], storage[1][:, :, :t] = self.k, self.v
            self._storage = storage
        self._storage[0][:, :, t : t + n], self._storage[1][:, :, t : t + n] = k, v
        self.k, self.v = self._storage[0][:, :, : t + n], self._storage[1][:, :, : t + n]  # (B, Hkv, T + Tnew, Dh)
        return self.k, self.v

    def _roll(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """A rolling cache's append: the held and new keys and values for this call, of which the
        first ``sinks`` and last ``window`` are kept (copies of k + w positions at most, no storage)."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)  # (B, Hkv, T + Tnew, Dh)
        first, t = self.sinks or 0, k.shape[2]
        drop = t - first - self.window
        if drop > 0:
            self.k, self.v = (torch.cat([x[:, :, :first], x[:, :, t - self.window :]], dim=2) for x in (k, v))
            self._dropped += drop
        else:
            self.k, self.v = k, v
        self._storage = None
        return k, v

    def reorder(self, index: Tensor | Sequence[int]) -> KVCache:
        """Take rows ``index`` (B',) along the batch dim, in place (beam search's reordering); returns self.

        ``index``: a 1-D integer tensor (or a list of ints) on the cache's device, values in 0..B-1."""
        index = _check_index(index, self.k)
        if self.k is None:
            return self
        own = self._storage is not None and self.k._base is self._storage[0] and self.v._base is self._storage[1]
        if own:  # keep the room to grow
            t = self.length
            self._storage = tuple(x.index_select(0, index) for x in self._storage)
            self.k, self.v = self._storage[0][:, :, :t], self._storage[1][:, :, :t]
        else:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
        return self


def _check_fits(cache: KVCache, b: int | None, kv_heads: int, head_dim: int, weight: Tensor) -> None:
    """Raise unless the filled ``cache``'s k and v are (B, Hkv, T, Dh) = (``b``, ``kv_heads``, T,
    ``head_dim``) (``b`` None: not checked) with the dtype and device of ``weight``, a parameter
    of the module that uses the cache."""
    expected = (b, kv_heads, "T", head_dim)
    for name, t in (("k", cache.k), ("v", cache.v)):
        ok = isinstance(t, Tensor) and t.dim() == 4 and t.shape[1] == kv_heads and t.shape[3] == head_dim
        if not ok or (b is not None and t.shape[0] != b) or t.shape[2] != cache.k.shape[2]:
            got = shape_str(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise AttentionError(
                f"cache.{name} has shape {got} but expected (B, Hkv, T, Dh) = ({', '.join(map(str, expected))}) "
                f"with T shared by k and v: B of the query, this module's kv_heads and head dim; a cache "
                f"belongs to one module and one batch (reorder it with cache.reorder(index))"
            )
        check_float_input(f"cache.{name}", t, weight.dtype, "the module's parameters")
        if t.device != weight.device:
            raise AttentionError(f"cache.{name} is on {t.device} but the module's parameters are on {weight.device}")


def _check_same_source(cache: KVCache, key: Tensor | None) -> None:
    """A filled cross-attention cache is reused: a ``key`` passed with it must be its source's shape."""
    if key is not None and (key.shape[0] != cache.k.shape[0] or key.shape[1] != cache.k.shape[2]):
        raise AttentionError(
            f"cache holds the keys of a source (B, Tk) = {shape_str((cache.k.shape[0], cache.k.shape[2]))} "
            f"(KVCache(cross=True) projects its first call's key and reuses it) but key has shape "
            f"{shape_str(key.shape)} (batch first); pass the same source, or key=None, or a new KVCache for a new source"
        )


@dataclass(frozen=True, eq=False)
class _Source:
    """A tensor a cross-attention cache was filled from: the tensor itself (weakly: the cache does
    not keep it alive), and its version counter (bumped by every in-place write), data pointer and
    shape, to tell it was modified (or given new data) since."""

    ref: weakref.ref
    state: tuple

    @staticmethod
    def _state(x: Tensor) -> tuple:
        try:
            version = x._version
        except RuntimeError:  # an inference-mode tensor keeps no version counter
            version = None
        try:
            ptr = x.data_ptr()
        except RuntimeError:  # no storage (a fake or functional tensor under tracing)
            ptr = None
        return version, ptr, tuple(x.shape)

    @classmethod
    def of(cls, x: Tensor) -> _Source:
        return cls(weakref.ref(x), cls._state(x))

    def mismatch(self, x: Tensor) -> str | None:
        """None if ``x`` is this source as it was; otherwise what differs."""
        if self.ref() is not x:
            return "is not the tensor"
        if self._state(x) != self.state:
            return "is the tensor, but modified in place since, of"
        return None


def _check_source_identity(cache: KVCache, key: Tensor | None, value: Tensor | None) -> None:
    """A filled cross-attention cache is reused: a ``key`` or ``value`` passed with it must be the
    very tensor (as the caller passed it) that it was filled from, unmodified."""
    for name, x, i in (("key", key, 0), ("value", value, 1)):
        if x is None:
            continue
        if cache._source is None:
            raise AttentionError(
                f"cache (KVCache(cross=True)) does not know the source of its k and v (they were given directly, "
                f"or the cache was unpickled), so it cannot tell whether {name} {shape_str(x.shape)} is that "
                f"source; pass {name}=None to attend the cached keys, or a new "
                f"KVCache(cross=True) to project this source"
            )
        what = cache._source[i].mismatch(x)
        if what is not None:
            raise AttentionError(
                f"{name} {shape_str(x.shape)} {what} the cache was filled from: KVCache(cross=True) projects its "
                f"first call's key and value and reuses them, so another source would be silently ignored; pass "
                f"{name}=None (or the same tensor) to reuse the cache, or a new KVCache(cross=True) for a new source"
            )


def _check_index(index, k: Tensor | None) -> Tensor:
    """``KVCache.reorder``'s ``index`` as a 1-D int64 or int32 tensor on the device of ``k``
    (B, Hkv, T, Dh) with values in 0..B-1 (B unknown while the cache is empty); raise otherwise."""
    b = None if k is None else k.shape[0]
    where = "" if k is None else f" on {k.device} with values in 0..{b - 1} (B = {b}, the cache's rows)"
    expected = f"a 1-D integer torch tensor (int64 or int32) or a list of ints{where}"
    if isinstance(index, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in index):
        try:
            index = torch.tensor(index, dtype=torch.long, device=None if k is None else k.device)  # (B',)
        except (RuntimeError, ValueError):  # an int past int64: reported as the list it is, below
            pass
    if not isinstance(index, Tensor):
        raise AttentionError(f"index must be {expected}, got {index!r} ({type(index).__name__})")
    if index.dim() != 1 or index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
        raise AttentionError(
            f"index has shape {shape_str(index.shape)} and dtype {index.dtype} but expected {expected}"
        )
    if k is None:
        return index
    if index.device != k.device:
        raise AttentionError(f"index is on {index.device} but expected {expected}")
    if index.dtype not in (torch.int64, torch.int32):
        index = index.long()
    outside = (index < 0) | (index >= b)  # (B',)
    if bool(outside.any()):
        bad = index[outside].unique().tolist()
        raise AttentionError(f"index has values {bad[:8]} outside 0..{b - 1} but expected {expected}")
    return index


def _after(mask: masks.Mask | None, past: int) -> masks.Mask | None:
    """The ``mask`` argument for queries at positions ``past`` .. ``past`` + Tq - 1 (after a
    self-attention cache's keys): rules over positions shifted by ``past`` (causal and window
    offsets; any other rule through :class:`_Later`); masks given as tensors sized for the call
    (``Dense``, ``KeyPadding``, a ``BlockSparse`` layout), the call's rows over every key, and rules
    of the key position alone (``Sinks``), as they are."""
    fixed = (masks.Dense, masks.KeyPadding, masks.BlockSparse, masks.Sinks)
    if mask is None or past == 0 or isinstance(mask, fixed):
        return mask
    if dataclasses.is_dataclass(mask) and any(f.name == "offset" for f in dataclasses.fields(mask)):
        # a rule whose ``offset`` is the position of query 0 (causal, windows, position biases)
        return dataclasses.replace(mask, offset=mask.offset + past)
    if isinstance(mask, (masks.And, masks.Or)):
        return type(mask)(*(_after(part, past) for part in mask.parts))
    return _Later(mask, past)


@dataclass(frozen=True, eq=False)
class _Later(masks.Mask):
    """``inner``, a rule over (query position, key position), for Tq queries at positions ``past``
    .. ``past`` + Tq - 1: the last Tq rows of the rule over ``past`` + Tq queries."""

    inner: masks.Mask
    past: int

    def _rows(self, m: Tensor | None) -> Tensor | None:
        broadcast = m is None or m.dim() < 2 or m.shape[-2] == 1  # the same for every query
        return m if broadcast else m[..., self.past :, :]

    def _grid(self, shape):
        return (*shape[:-2], self.past + shape[-2], shape[-1])

    def materialize(self, shape, device=None):
        return self._rows(self.inner.materialize(self._grid(shape), device))

    def bias(self, shape, device=None, dtype=torch.float32):
        return self._rows(self.inner.bias(self._grid(shape), device, dtype))

    def allows(self, i, j):
        return self.inner.allows(i + self.past, j)


def _has_bias(mask: masks.Mask) -> bool:
    """Whether a rule adds a float bias to the scores (a position bias over i - j)."""
    if isinstance(mask, _Later):
        return _has_bias(mask.inner)
    return type(mask).bias is not masks.Mask.bias


def _at_kept_keys(mask: masks.Mask | None, cache: KVCache | None, tq: int) -> masks.Mask | None:
    """The mask of a call of Tq queries with ``cache``, over the keys it attends: a rolling cache
    that dropped positions holds keys at ``cache.positions``, then the call's at ``cache.seen`` ..
    ``cache.seen`` + Tq - 1, so column j is no longer position j. Rules (shifted by ``_after``)
    are evaluated at those positions (:class:`_AtPositions`); tensor masks cover the call's
    columns as they are. A rule that adds a position bias raises with any rolling cache (from its
    first call, before it drops anything). Call it before ``cache.append``."""
    if mask is None or cache is None or cache.cross or cache.window is None:
        return mask
    positions = None
    if cache._dropped:
        past = cache.seen
        positions = torch.cat([cache.positions, torch.arange(past, past + tq, device=cache.k.device)])  # (Tk,)
    return _on_positions(mask, positions)


def _on_positions(mask: masks.Mask, positions: Tensor | None) -> masks.Mask:
    """``mask``'s rules at key ``positions`` (None: as they are, only checked)."""
    if isinstance(mask, (masks.Dense, masks.KeyPadding, masks.BlockSparse)):
        return mask
    if isinstance(mask, (masks.And, masks.Or)):
        return type(mask)(*(_on_positions(part, positions) for part in mask.parts))
    if _has_bias(mask):
        raise AttentionError(
            f"{mask!r} adds a position bias over the key columns (MultiHeadAttention's position='alibi' or "
            f"'t5'), but a rolling KVCache(sinks=, window=) drops keys, after which column j is no longer "
            f"position j and the bias would be wrong; use KVCache() (every position kept) with a position "
            f"bias, or position='rope', which a rolling cache keeps exact"
        )
    return mask if positions is None else _AtPositions(mask, positions)


@dataclass(frozen=True, eq=False)
class _AtPositions(masks.Mask):
    """``inner``, a rule over (query index, key position), for keys at the absolute positions
    ``positions`` (Tk,): what a rolling cache kept, then the call's own."""

    inner: masks.Mask
    positions: Tensor

    def __repr__(self):
        return f"{self.inner!r} at key positions {shape_str(self.positions.shape)}"

    def materialize(self, shape, device=None):
        if shape[-1] != len(self.positions):
            raise AttentionError(
                f"scores {shape_str(shape)} have Tk = {shape[-1]} keys but the rolling cache and the call "
                f"give {len(self.positions)} key positions"
            )
        rank = len(shape)
        i = torch.arange(shape[-2], device=device).reshape(*(1,) * (rank - 2), -1, 1)  # (1.., Tq, 1)
        j = self.positions.to(device).reshape(*(1,) * (rank - 1), -1)  # (1.., 1, Tk)
        return self.inner.allows(i, j)

    def allows(self, i, j):
        return self.inner.allows(i, self.positions.to(j.device)[j])
