"""``MultiHeadAttention``: H projected attentions in parallel, concatenated, projected back.

Shape legend: B batch, H heads, Hkv key/value heads, Tq query positions, Tk key positions, D model
dim, Dh = D / H. Batch-first by default, like ``nn.MultiheadAttention(batch_first=True)``;
``batch_first=False`` takes and returns (T, B, D) as torch's default does.

Incremental decoding: ``forward(..., cache=KVCache())`` keeps the keys and values of past calls
(see :class:`KVCache`), so a decoder step projects only its new positions.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..backends import BACKENDS, attention
from ..core import masks
from ..core import normalizers as _normalizers
from ..core import scores as _scores
from ..core.functional import AttentionResult
from ..core.local import as_window
from ..errors import (
    AttentionError,
    check_bool,
    check_float_input,
    check_int,
    check_probability,
    check_rank,
    shape_str,
)
from .attention import score_parameters
from .capture import is_random, record, recording

__all__ = ["KVCache", "MultiHeadAttention"]


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

    The module updates the cache in place (as Hugging Face's ``DynamicCache``), and the cache
    belongs to the module that filled it: another module (another layer) raises. Query i of a call
    is at position T + i: mask rules (``masks.causal()``, windows, their ``&``/``|``, any
    :class:`~attnkit.masks.Mask` but a tensor) are shifted by T like the module's own, so
    ``mask=masks.causal()`` steps equal ``causal=True``; tensor masks cover all the keys:
    ``key_padding_mask`` (B, T + Tk_new), ``attn_mask`` and ``mask`` (Tq, T + Tk_new). Beam search
    calls :meth:`reorder` when it reorders its hypotheses; ``copy.copy`` and ``copy.deepcopy`` fork
    a cache (appending to one branch leaves the other as it was).

    >>> mha = MultiHeadAttention(8, 2, causal=True).eval()
    >>> x, cache = torch.randn(1, 3, 8), KVCache()
    >>> steps = torch.cat([mha(x[:, t : t + 1], cache=cache).output for t in range(3)], 1)
    >>> cache.length, torch.allclose(steps, mha(x).output, atol=1e-6)
    (3, True)
    """

    cross: bool = False
    k: Tensor | None = field(default=None, repr=False)
    v: Tensor | None = field(default=None, repr=False)
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

    def __copy__(self) -> KVCache:
        """A fork sharing the T positions held (never written again) but not the room to grow: its
        first append reallocates, and the original writes only past T, where the fork does not look."""
        new = dataclasses.replace(self)
        new._owner, new._source = self._owner, self._source
        return new

    def __deepcopy__(self, memo) -> KVCache:
        """A fork with its own k and v (clones, so gradients still flow to the past steps)."""
        new = dataclasses.replace(
            self, k=None if self.k is None else self.k.clone(), v=None if self.v is None else self.v.clone()
        )
        new._owner, new._source = self._owner, self._source
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

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add keys and values (B, Hkv, Tnew, Dh) after the T held; return all T + Tnew of them.

        Written into the storage in place, except where autograd needs the earlier tensors
        intact (gradients enabled and k, v or the cache requiring them): then a new tensor."""
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


class MultiHeadAttention(nn.Module):
    """Multi-head attention with any score per head: self, cross or causal.

    Each head h scores its own projections q_h = x W_Q^h, k_h = x W_K^h with the chosen score (and
    its own score parameters, e.g. a W per head for ``general``), normalizes, and aggregates
    v_h = x W_V^h; the heads are concatenated and projected by W_O.

    Args:
        embed_dim: D. num_heads: H, which must divide D.
        score: a name in ``attnkit.SCORES`` (default ``scaled_dot``, the Transformer's), or one
            name per head, e.g. ``["scaled_dot", "additive"]`` for two heads that score differently.
        normalize: a name in ``attnkit.NORMALIZERS`` or a configured normalizer.
        dropout: dropout on the weights, in training mode. bias: biases in the projections.
        kdim, vdim: feature dims of key and value inputs (default D), for cross attention.
        causal: query i attends keys j <= i only (decoder self-attention).
        window: D or (left, right): a sliding window of local self-attention.
        score_hidden_dim: A of the additive score (default Dh).
        backend: "auto" (the fastest backend that takes each call) or a backend's name to force it;
            an attribute, so it can be changed on a built or loaded model.
        kv_heads: Hkv, key/value heads for grouped-query (1: multi-query) attention; it must divide
            H. ``k_proj``/``v_proj`` produce Hkv·Dh features and query head h reads key/value head
            h // (H / Hkv) (SDPA's ``enable_gqa``). Default H.
        batch_first: True (the default: attnkit is batch-first) takes and returns (B, T, D);
            False takes and returns (T, B, D), as ``nn.MultiheadAttention``'s default. Masks and
            the returned weights are batch-first either way, as in torch.
        add_bias_kv: a learned key ``bias_k`` and value ``bias_v`` (1, 1, Hkv·Dh) appended after the
            Tk projected keys, as torch's; every query may attend it (masks are extended with an
            allowed column, as torch pads them). add_zero_attn: a zero key and value appended last,
            likewise. Each adds a column to the returned weights (Tk + 1 or Tk + 2), as torch's.

    ``forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
    is_causal, *, mask, average_weights)``: the positions and meanings of
    ``nn.MultiheadAttention.forward``, plus the package's own ``mask``. Shapes: query (B, Tq, D),
    key (B, Tk, kdim), value (B, Tk, vdim) (``key`` and ``value`` default to ``query``).

    - ``key_padding_mask`` (B, Tk), as torch's: bool with True = padding, or float added to the
      scores (-inf = blocked).
    - ``attn_mask``, as torch's: bool with True = *blocked*, or float added to the scores;
      (Tq, Tk), or (B·H, Tq, Tk) with row b·H + h for example b, head h.
    - ``is_causal``, as torch's: a hint that ``attn_mask`` is the causal mask, so it needs
      ``attn_mask``; attnkit checks the hint (outside ``torch.compile``/``torch.export``) and raises
      if ``attn_mask`` is not causal, where torch would give path-dependent results.
    - ``mask``, the package's polarity: True = may attend, broadcastable to (B, H, Tq, Tk); a 3-D
      tensor or ``Dense`` mask (e.g. from ``masks.from_torch_attn_mask``) is read as (B, Tq, Tk).
      ``mask`` and ``attn_mask`` together are an error (opposite polarities: pass one).
    - ``need_weights`` (default False here, True in torch) and ``average_attn_weights`` (alias
      ``average_weights``, default True): weights (B, Tq, Tk) averaged over heads, or
      (B, H, Tq, Tk) per head, or None when not asked for.
    - ``cache``: a :class:`KVCache`, updated in place: self-attention appends the call's keys and
      values to it and attends all of them (Tk = cached + new), cross-attention projects its source
      once and reuses it. With ``causal=True`` (or ``mask=masks.causal()``) the step-by-step calls
      equal one causal call.

    Returns ``(output (B, Tq, D), weights)`` (output (Tq, B, D) with ``batch_first=False``). A
    query with no allowed key gets a zero attention output (so ``out_proj``'s bias), never NaN.

    >>> mha = MultiHeadAttention(32, 4, causal=True)
    >>> x = torch.randn(2, 6, 32)
    >>> out, w = mha(x, need_weights=True, average_weights=False)
    >>> out.shape, w.shape, bool(w[..., 0, 1:].eq(0).all())
    (torch.Size([2, 6, 32]), torch.Size([2, 4, 6, 6]), True)
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        score: str | Sequence[str] = "scaled_dot",
        normalize: str | object = "softmax",
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        causal: bool = False,
        window: int | tuple[int, int] | None = None,
        score_hidden_dim: int | None = None,
        backend: str = "auto",
        kv_heads: int | None = None,
        batch_first: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
    ):
        super().__init__()
        check_int("embed_dim", embed_dim)
        check_int("num_heads", num_heads)
        for name, dim in (("kdim", kdim), ("vdim", vdim), ("score_hidden_dim", score_hidden_dim)):
            if dim is not None:
                check_int(name, dim)
        if embed_dim % num_heads:
            raise AttentionError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        check_probability("dropout", dropout)
        for name, flag in (
            ("bias", bias),
            ("causal", causal),
            ("batch_first", batch_first),
            ("add_bias_kv", add_bias_kv),
            ("add_zero_attn", add_zero_attn),
        ):
            check_bool(name, flag)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kv_heads = num_heads if kv_heads is None else check_int("kv_heads", kv_heads)
        if num_heads % self.kv_heads:
            raise AttentionError(
                f"kv_heads={kv_heads} must divide num_heads={num_heads} (each key/value head serves a "
                f"group of num_heads / kv_heads query heads)"
            )
        self.batch_first, self.add_zero_attn = batch_first, add_zero_attn
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        per_head = [score] * num_heads if isinstance(score, (str, _scores.Score)) else list(score)
        if len(per_head) != num_heads:
            raise AttentionError(f"score has {len(per_head)} entries but expected one per head, num_heads={num_heads}")
        self.head_scores = [_scores.resolve(s) for s in per_head]
        # heads that share a score are computed together: name -> the indices of its heads
        self.groups: dict[str, list[int]] = {}
        for h, s in enumerate(self.head_scores):
            self.groups.setdefault(s.name, []).append(h)
        self.normalize = _normalizers.resolve(normalize)
        self.dropout, self.causal = dropout, causal
        self.window = as_window(window)
        self.region = masks.and_masks(masks.causal() if causal else None, self.window)
        if backend != "auto" and backend not in BACKENDS:
            raise AttentionError(f"backend={backend!r} is unknown; expected 'auto' or one of {sorted(BACKENDS)}")
        self.backend = backend  # "auto", or a name in attnkit.backends.BACKENDS to force one
        self._capture_inputs = True  # capture() records this module
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        kv_dim = self.kv_heads * self.head_dim  # Hkv·Dh
        self.k_proj = nn.Linear(self.kdim, kv_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, kv_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        if add_bias_kv:  # torch's: one learned extra key and value, xavier-normal initialised
            self.bias_k = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, 1, kv_dim)))
            self.bias_v = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, 1, kv_dim)))
        else:
            self.bias_k = self.bias_v = None
        dh, by_name = self.head_dim, {s.name: s for s in self.head_scores}
        self.score_params = nn.ModuleDict(
            {
                name: score_parameters(by_name[name], dh, dh, score_hidden_dim or dh, heads=len(heads))
                for name, heads in self.groups.items()
            }
        )  # name -> ParameterDict, each parameter (heads with that score, *spec)

    def extra_repr(self) -> str:
        region = f", mask={self.region}" if self.region is not None else ""
        names = [s.name for s in self.head_scores]
        score = names[0] if len(self.groups) == 1 else names
        extra = "" if self.kv_heads == self.num_heads else f", kv_heads={self.kv_heads}"
        extra += "" if self.batch_first else ", batch_first=False"
        extra += ", add_bias_kv=True" if self.bias_k is not None else ""
        extra += ", add_zero_attn=True" if self.add_zero_attn else ""
        return (
            f"{self.embed_dim}, num_heads={self.num_heads}, score={score!r}, normalize={self.normalize}{region}{extra}"
        )

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, **kwargs) -> MultiHeadAttention:
        """A copy of a ``torch.nn.MultiheadAttention``'s weights (same dtype and device).

        Keyword arguments (e.g. ``causal=True``) pass to the constructor; the score is
        ``scaled_dot`` unless given. ``batch_first``, ``add_bias_kv`` (with ``bias_k``, ``bias_v``)
        and ``add_zero_attn`` are carried over, so the copy takes the same inputs and gives the
        same outputs as ``module``.
        """
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

    def _heads_mask(
        self,
        mask,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
        b: int,
        tq: int,
        tk: int,
        *,
        past: int = 0,
        cached: KVCache | None = None,
    ) -> masks.Mask | None:
        """Every mask of a call as one, over scores (B, H, Tq, Tk) of the Tk keys (cached ones
        included); the call's query i is at position ``past`` + i (``past`` keys cached by
        self-attention before the call)."""
        if mask is not None and attn_mask is not None:
            raise AttentionError(
                "pass mask= (attnkit's polarity: True = may attend) or attn_mask= (nn.MultiheadAttention's: "
                "True = blocked, or additive float), not both: their True values mean opposite things; "
                "combine them into one mask first (masks.from_torch_attn_mask(attn_mask) & mask)"
            )
        torch_mask = None if attn_mask is None else self._from_attn_mask(attn_mask, b, tq, tk)
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
        region = self.region if cached is None else self._region_after(past, tq)
        mask = _after(_per_example(masks.as_mask(mask)), past)  # query i at position past + i, as region's
        return masks.and_masks(region, mask, torch_mask, _padding(key_padding_mask, b, tk))

    def _region_after(self, past: int, tq: int) -> masks.Mask | None:
        """The module's own causal / window mask for Tq queries after ``past`` cached positions."""
        window = None if self.window is None else masks.sliding_window(self.window.left, self.window.right, past)
        causal = masks.causal(past) if self.causal and tq > 1 else None  # one query may attend every key
        return masks.and_masks(causal, window)

    def _from_attn_mask(self, attn_mask: Tensor, b: int, tq: int, tk: int) -> masks.Mask:
        """``nn.MultiheadAttention``'s ``attn_mask`` (Tq, Tk) or (B·H, Tq, Tk), True = blocked."""
        if not isinstance(attn_mask, Tensor):
            raise AttentionError(f"attn_mask must be a bool or float tensor, got {type(attn_mask).__name__}")
        h = self.num_heads
        if attn_mask.dim() == 3 and tuple(attn_mask.shape) == (b * h, tq, tk):
            attn_mask = attn_mask.reshape(b, h, tq, tk)  # row b·H + h: example b, head h (torch's order)
        elif attn_mask.dim() != 2 or tuple(attn_mask.shape) != (tq, tk):
            raise AttentionError(
                f"attn_mask has shape {shape_str(attn_mask.shape)} but expected (Tq, Tk) = {shape_str((tq, tk))} "
                f"or (B·H, Tq, Tk) = {shape_str((b * h, tq, tk))}, as nn.MultiheadAttention's"
            )
        return masks.from_torch_attn_mask(attn_mask)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool | None = None,
        is_causal: bool = False,
        *,
        mask: masks.Mask | Tensor | None = None,
        average_weights: bool | None = None,
        cache: KVCache | None = None,
    ) -> AttentionResult:
        check_bool("need_weights", need_weights)
        check_bool("is_causal", is_causal)
        for name, flag in (("average_attn_weights", average_attn_weights), ("average_weights", average_weights)):
            if flag is not None:  # None: not given
                check_bool(name, flag)
        if average_attn_weights is not None and average_weights is not None and average_attn_weights != average_weights:
            raise AttentionError(
                f"average_attn_weights={average_attn_weights} and average_weights={average_weights} disagree; "
                f"they are one option (average_weights is the older name): pass one"
            )
        average = next((a for a in (average_attn_weights, average_weights) if a is not None), True)
        reuse = self._check_cache(cache, query)  # a filled cross-attention cache: no key/value projection
        key = query if key is None and not reuse else key
        value = key if value is None else value
        given = (key, value)  # as the caller passed them: a cross-attention cache remembers its source
        shared = (key is query, value is key)  # one input projected twice or thrice: one fused matmul
        for name, x, dim in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if x is None:  # key and value omitted: a filled cross-attention cache holds them
                continue
            layout = f"(B, T, {dim}) (batch first)" if self.batch_first else f"(T, B, {dim}) (batch_first=False)"
            check_rank(name, x, 3, layout)
            check_float_input(name, x, self.q_proj.weight.dtype, "the module's parameters")
            if x.dim() != 3 or x.shape[-1] != dim:
                raise AttentionError(f"{name} has shape {shape_str(x.shape)} but expected {layout}")
        if not self.batch_first:
            query, key, value = (x if x is None else x.transpose(0, 1) for x in (query, key, value))  # (B, T, .)
        if key is not None and (key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]):
            raise AttentionError(
                f"query {shape_str(query.shape)}, key {shape_str(key.shape)} and value {shape_str(value.shape)} "
                f"(batch first) must share B, and key and value must share Tk"
            )
        (b, tq, _), past = query.shape, 0 if cache is None or cache.cross else cache.length
        if reuse:
            _check_same_source(cache, key)
            _check_source_identity(cache, *given)
        elif cache is not None and not cache.cross and key.shape[1] != tq:
            raise AttentionError(
                f"a self-attention cache (KVCache()) appends the call's keys at the positions of its queries, so "
                f"key must have Tq = {tq} positions, got key {shape_str(key.shape)} (batch first); for keys of a "
                f"fixed source (cross-attention) use KVCache(cross=True)"
            )
        tk = cache.length if reuse else past + key.shape[1]  # every key of the call, cached ones included
        region = self._heads_mask(mask, attn_mask, key_padding_mask, is_causal, b, tq, tk, past=past, cached=cache)
        if reuse:
            (q,) = self._project(query, self.q_proj)  # (B, H, Tq, Dh)
            k, v = cache.k, cache.v  # (B, Hkv, Tk, Dh)
        else:
            if all(shared):  # self-attention: [q; k; v] = x [W_Q; W_K; W_V]ᵀ in one matmul
                q, k, v = self._project(query, self.q_proj, self.k_proj, self.v_proj)
            elif shared[1]:  # key is value (a cross-attention source): [k; v] in one matmul
                (q,), (k, v) = self._project(query, self.q_proj), self._project(key, self.k_proj, self.v_proj)
            else:
                (q,), (k,), (v,) = (
                    self._project(x, p) for x, p in ((query, self.q_proj), (key, self.k_proj), (value, self.v_proj))
                )
            if cache is not None:  # self-attention: after the cached positions; cross: the source
                k, v = cache.append(k, v)  # (B, Hkv, Tk, Dh)
                cache._source = tuple(map(_Source.of, given)) if cache.cross else None
        if cache is not None and cache._owner is None:
            cache._owner = weakref.ref(self)  # the module that filled it: no other may use it
        k, v = self._keys(k, v)  # (B, Hkv, Tk', Dh), Tk' = Tk + extra keys
        if k.shape[2] > tk and region is not None:
            region = _ExtraKeys(region, k.shape[2] - tk)
        watched = recording(self)
        random = is_random(self.normalize)
        dropout = self.dropout if self.training else 0.0
        result = self._attend(
            q, k, v, region, need_weights=need_weights or (watched and random), dropout=dropout, backend=self.backend
        )
        if watched:
            record(self, result.weights.detach() if random else self._recompute(q, k, v, region))
        out = self.out_proj(result.output.transpose(1, 2).flatten(2))  # (B, H, Tq, Dh) -> (B, Tq, D)
        if not self.batch_first:
            out = out.transpose(0, 1)  # (Tq, B, D)
        weights = result.weights if need_weights else None  # (B, H, Tq, Tk) | None
        if weights is not None and average:
            weights = weights.mean(dim=1)  # (B, Tq, Tk)
        return AttentionResult(out, weights, result.log_prob)

    def _project(self, x: Tensor, *projs: nn.Module) -> list[Tensor]:
        """``x`` (B, T, Din) through each of ``projs`` -> per projection (B, heads, T, Dh), views of
        one (B, T, Σ widths) output: several plain ``nn.Linear`` projections of the same input run as
        one matmul with their weights stacked (the parameters stay ``q_proj``, ``k_proj``, ``v_proj``,
        so state dicts and ``from_torch`` are unchanged). A projection that is not a plain
        ``nn.Linear`` without hooks (a parametrization, a quantized or wrapped module) is called as it is."""
        heads = [self.num_heads if p is self.q_proj else self.kv_heads for p in projs]
        if len(projs) > 1 and all(_plain_linear(p) for p in projs):
            bias = None if projs[0].bias is None else torch.cat([p.bias for p in projs])
            outs = F.linear(x, torch.cat([p.weight for p in projs]), bias).split([p.out_features for p in projs], -1)
        else:
            outs = [p(x) for p in projs]
        return [y.unflatten(-1, (h, self.head_dim)).transpose(1, 2) for y, h in zip(outs, heads)]  # (B, H, T, Dh)

    def _keys(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Projected keys and values (B, Hkv, Tk, Dh) with torch's extra keys appended: ``bias_k``/``bias_v``
        (add_bias_kv), then a zero key and value (add_zero_attn)."""
        b = k.shape[0]
        if self.bias_k is not None:
            for name, extra in (("k", self.bias_k), ("v", self.bias_v)):
                extra = rearrange(extra, "1 1 (H Dh) -> 1 H 1 Dh", H=self.kv_heads).expand(b, -1, -1, -1)
                if name == "k":
                    k = torch.cat([k, extra], dim=2)
                else:
                    v = torch.cat([v, extra], dim=2)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(b, k.shape[1], 1, k.shape[-1])], dim=2)
            v = torch.cat([v, v.new_zeros(b, v.shape[1], 1, v.shape[-1])], dim=2)
        return k, v

    def _check_cache(self, cache: KVCache | None, query: Tensor) -> bool:
        """Raise unless ``cache`` is None or a KVCache that fits this module and ``query``; return
        whether it is a filled cross-attention cache (whose keys and values are reused)."""
        if cache is None:
            return False
        if not isinstance(cache, KVCache):
            raise AttentionError(
                f"cache must be an attnkit.KVCache (KVCache() for self-attention, KVCache(cross=True) for "
                f"cross-attention), got {type(cache).__name__}"
            )
        if cache.k is None:
            return False
        if cache._owner is not None and cache._owner() is not self:
            raise AttentionError(
                "cache was filled by another MultiHeadAttention (a KVCache holds the keys and values of one "
                "module, so each layer needs its own); pass this module a new KVCache"
            )
        b = query.shape[0 if self.batch_first else 1] if isinstance(query, Tensor) and query.dim() == 3 else None
        expected = (b, self.kv_heads, "T", self.head_dim)
        for name, t in (("k", cache.k), ("v", cache.v)):
            ok = isinstance(t, Tensor) and t.dim() == 4 and t.shape[1] == self.kv_heads and t.shape[3] == self.head_dim
            if not ok or (b is not None and t.shape[0] != b) or t.shape[2] != cache.k.shape[2]:
                got = shape_str(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise AttentionError(
                    f"cache.{name} has shape {got} but expected (B, Hkv, T, Dh) = ({', '.join(map(str, expected))}) "
                    f"with T shared by k and v: B of the query, this module's kv_heads and head dim; a cache "
                    f"belongs to one module and one batch (reorder it with cache.reorder(index))"
                )
            check_float_input(f"cache.{name}", t, self.q_proj.weight.dtype, "the module's parameters")
            if t.device != self.q_proj.weight.device:
                raise AttentionError(
                    f"cache.{name} is on {t.device} but the module's parameters are on {self.q_proj.weight.device}"
                )
        return cache.cross

    def _recompute(self, q: Tensor, k: Tensor, v: Tensor, region):
        """A function that recomputes this call's weights (B, H, Tq, Tk) on the reference path,
        from detached inputs and a snapshot of the score parameters."""
        q, k, v = q.detach(), k.detach(), v.detach()
        params = {name: {p: t.detach().clone() for p, t in d.items()} for name, d in self.score_params.items()}
        return lambda: (
            self._attend(q, k, v, region, need_weights=True, dropout=0.0, params=params, backend="reference").weights
        )

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        region,
        *,
        need_weights: bool,
        dropout: float,
        params=None,
        backend="auto",
    ) -> AttentionResult:
        """Every score group's heads on (B, H, T, Dh) projections, merged back in head order.

        k and v have Hkv heads (grouped-query attention when Hkv < H)."""
        gqa = k.shape[1] != q.shape[1]
        if gqa and len(self.groups) > 1:  # score groups pick query heads: repeat key/value heads to match
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
            gqa = False
        parts = []
        for name, heads in self.groups.items():
            sel = slice(None) if len(self.groups) == 1 else heads  # (B, H_g, T, Dh) for this score
            parts.append(
                attention(
                    q[:, sel],
                    k[:, sel],
                    v[:, sel],
                    score=_scores.resolve(name),
                    normalize=self.normalize,
                    mask=region,
                    score_params=dict(self.score_params[name] if params is None else params[name]),
                    dropout=dropout,
                    need_weights=need_weights,
                    backend=backend,
                    enable_gqa=gqa,
                )
            )
        return parts[0] if len(parts) == 1 else self._merge(parts)

    def _merge(self, parts: list[AttentionResult]) -> AttentionResult:
        """Put the per-score groups' heads back in head order along dim 1."""
        order = torch.tensor([h for heads in self.groups.values() for h in heads])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))

        def cat(tensors):
            return None if tensors[0] is None else torch.cat(tensors, dim=1)[:, inverse.to(tensors[0].device)]

        return AttentionResult(
            cat([p.output for p in parts]), cat([p.weights for p in parts]), cat([p.log_prob for p in parts])
        )


def _plain_linear(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Linear`` whose forward is ``F.linear(x, weight, bias)`` and
    nothing else (no subclass, parametrization or hook), so its weight may be stacked with others'."""
    return type(module) is nn.Linear and not (module._forward_hooks or module._forward_pre_hooks)


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
    (``Dense``, ``KeyPadding``, a ``BlockSparse`` layout), the call's rows over every key, as they are."""
    if mask is None or past == 0 or isinstance(mask, (masks.Dense, masks.KeyPadding, masks.BlockSparse)):
        return mask
    if isinstance(mask, (masks.Causal, masks.SlidingWindow)):
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


def _is_causal(attn_mask: Tensor, past: int = 0) -> bool:
    """Whether torch's ``attn_mask`` (..., Tq, Tk) blocks exactly the keys j > i + ``past`` (bool
    True, or -inf with 0 elsewhere)."""
    tq, tk = attn_mask.shape[-2:]
    above = torch.ones(tq, tk, dtype=torch.bool, device=attn_mask.device).triu(1 + past)  # (Tq, Tk)
    if attn_mask.dtype == torch.bool:
        return bool((attn_mask == above).all())
    blocked = attn_mask == float("-inf")
    return bool((blocked == above).all() and (attn_mask.masked_fill(blocked, 0.0) == 0).all())


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
