"""``MultiHeadAttention``: H projected attentions in parallel, concatenated, projected back.

Shape legend: B batch, H heads, Hkv key/value heads, Tq query positions, Tk key positions, D model
dim, Dh = D / H. Batch-first by default, like ``nn.MultiheadAttention(batch_first=True)``;
``batch_first=False`` takes and returns (T, B, D) as torch's default does.

Incremental decoding: ``forward(..., cache=KVCache())`` keeps the keys and values of past calls
(see :class:`KVCache`, in ``cache.py``), so a decoder step projects only its new positions.
``nn.MultiheadAttention``'s weights, masks and extra keys are converted in ``torch_compat.py``.
``KVCache`` and the helpers that lived here before the split still import from this file.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import BACKENDS, attention
from ..core import masks
from ..core import normalizers as _normalizers
from ..core import positions as _positions
from ..core import scores as _scores
from ..core.functional import AttentionResult
from ..core.local import as_window
from ..errors import AttentionError, check_bool, check_float_input, check_int, check_probability, check_rank, shape_str
from . import torch_compat
from .attention import score_parameters
from .cache import (  # _check_index, _Later: importable from this file before cache.py was split off
    KVCache,
    _after,
    _at_kept_keys,
    _check_fits,
    _check_index,  # noqa: F401
    _check_same_source,
    _check_source_identity,
    _Later,  # noqa: F401
    _Source,
)
from .capture import is_random, record, recording
from .torch_compat import (  # _is_causal: importable from this file before torch_compat.py was split off
    _extra_keys,
    _ExtraKeys,
    _is_causal,  # noqa: F401
    _padding,
    _per_example,
    _torch_mask,
)

__all__ = ["KVCache", "MultiHeadAttention"]


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
        position: None, or a position method of :mod:`attnkit.positions` for self-attention,
            query i of a call at position ``past`` + i (``past``: the positions a ``KVCache`` has seen),
            key j at j. ``"rope"``: q and k rotated per head (the first ``rope_dim`` features,
            default Dh, base ``rope_base``), keys before they enter the cache. ``"alibi"``:
            ``ALiBi(H)`` added to the scores (with ``causal``: causal ALiBi; ``alibi_directional``:
            its directional form, for an encoder read without positions). ``"t5"``: a learned
            ``T5RelativeBias`` (submodule ``relative_bias``; ``t5_buckets``, ``t5_max_distance``;
            bidirectional unless ``causal``). A cross-attention cache raises; extra keys
            (``add_bias_kv``, ``add_zero_attn``) get no position.
        softcap: a finite number > 0: every head's score becomes cap · tanh(score / cap) (Gemma 2),
            before position biases and masks are added. Default None.

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
        position: str | None = None,
        softcap: float | None = None,
        rope_base: float = 10000.0,
        rope_dim: int | None = None,
        t5_buckets: int = 32,
        t5_max_distance: int = 128,
        alibi_directional: bool = False,
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
        self._build_positions(position, softcap, rope_base, rope_dim, t5_buckets, t5_max_distance, alibi_directional)

    # the position options' values when absent (a module pickled before they existed has none)
    position: str | None = None
    softcap: float | None = None
    rotary: _positions.Rotary | None = None
    alibi_directional: bool = False

    def _build_positions(
        self, position, softcap, rope_base, rope_dim, t5_buckets, t5_max_distance, alibi_directional=False
    ) -> None:
        """Check the position options together and build what they need (one place, at construction)."""
        if position is not None and position not in _positions.POSITIONS:
            raise AttentionError(
                f"position={position!r} is unknown; expected None or one of {sorted(_positions.POSITIONS)}"
            )
        given = {
            "rope": {"rope_base": rope_base != 10000.0, "rope_dim": rope_dim is not None},
            "t5": {"t5_buckets": t5_buckets != 32, "t5_max_distance": t5_max_distance != 128},
            "alibi": {"alibi_directional": alibi_directional is not False},
        }
        for method, options in given.items():
            stray = [name for name, set_ in options.items() if set_]
            if stray and position != method:
                raise AttentionError(
                    f"{', '.join(stray)} configure position={method!r}, but position={position!r}; pass "
                    f"position={method!r} or drop them"
                )
        self.position = position
        self.alibi_directional = check_bool("alibi_directional", alibi_directional)
        self.softcap = None if softcap is None else _positions._positive("softcap", softcap, "scores cap · tanh(s/cap)")
        dh = self.head_dim
        if position == "rope":
            base = _positions._positive("rope_base", rope_base, "the angles' base, e.g. 10000.0")
            if rope_dim is None and dh % 2:
                raise AttentionError(
                    f"position='rope' turns feature pairs, but the head dim Dh = embed_dim / num_heads = {dh} is "
                    f"odd; pass an even rope_dim < {dh} (partial rotary)"
                )
            dim = dh if rope_dim is None else check_int("rope_dim", rope_dim, 2, dh)
            if dim % 2:
                raise AttentionError(f"rope_dim must be even (features turn in pairs), got {rope_dim}")
            self.rotary = _positions.Rotary(dim, base)
        elif position == "t5":
            try:
                self.relative_bias = _positions.T5RelativeBias(
                    self.num_heads, t5_buckets, t5_max_distance, bidirectional=not self.causal
                )
            except AttentionError as e:
                raise AttentionError(f"t5_buckets={t5_buckets!r}, t5_max_distance={t5_max_distance!r}: {e}") from None

    def extra_repr(self) -> str:
        region = f", mask={self.region}" if self.region is not None else ""
        names = [s.name for s in self.head_scores]
        score = names[0] if len(self.groups) == 1 else names
        extra = "" if self.kv_heads == self.num_heads else f", kv_heads={self.kv_heads}"
        extra += "" if self.batch_first else ", batch_first=False"
        extra += ", add_bias_kv=True" if self.bias_k is not None else ""
        extra += ", add_zero_attn=True" if self.add_zero_attn else ""
        extra += "" if self.position is None else f", position={self.position!r}"
        extra += ", alibi_directional=True" if self.alibi_directional else ""
        if self.rotary is not None:
            extra += "" if self.rotary.dim == self.head_dim else f", rope_dim={self.rotary.dim}"
            extra += "" if self.rotary.base == 10000.0 else f", rope_base={self.rotary.base}"
        extra += "" if self.softcap is None else f", softcap={self.softcap}"
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
        return torch_compat.from_torch(cls, module, **kwargs)

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
        torch_mask = _torch_mask(attn_mask, is_causal, b, self.num_heads, tq, tk, past)
        region = self.region if cached is None else self._region_after(past, tq)
        mask = _after(_per_example(masks.as_mask(mask)), past)  # query i at position past + i, as region's
        return masks.and_masks(region, mask, torch_mask, _padding(key_padding_mask, b, tk))

    def _region_after(self, past: int, tq: int) -> masks.Mask | None:
        """The module's own causal / window mask for Tq queries after ``past`` cached positions."""
        window = None if self.window is None else masks.sliding_window(self.window.left, self.window.right, past)
        causal = masks.causal(past) if self.causal and tq > 1 else None  # one query may attend every key
        return masks.and_masks(causal, window)

    def _position_bias(self, past: int) -> masks.Mask | None:
        """ALiBi's or T5's bias over scores (B, H, Tq, Tk), query i at position ``past`` + i."""
        if self.position == "alibi":
            return _positions.ALiBi(self.num_heads, past, directional=self.alibi_directional)
        if self.position == "t5":
            return self.relative_bias.mask(past)
        return None

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
        if self.position is not None and cache is not None and cache.cross:
            raise AttentionError(
                f"position={self.position!r} gives query and key positions in one sequence (self-attention), but "
                f"cache is a cross-attention cache (KVCache(cross=True)) over another source; use a module without "
                f"position= for cross-attention"
            )
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
        (b, tq, _), past = query.shape, 0 if cache is None or cache.cross else cache.seen  # query 0's position
        if reuse:
            _check_same_source(cache, key)
            _check_source_identity(cache, *given)
        elif cache is not None and not cache.cross and key.shape[1] != tq:
            raise AttentionError(
                f"a self-attention cache (KVCache()) appends the call's keys at the positions of its queries, so "
                f"key must have Tq = {tq} positions, got key {shape_str(key.shape)} (batch first); for keys of a "
                f"fixed source (cross-attention) use KVCache(cross=True)"
            )
        held = 0 if cache is None else cache.length  # < past where a rolling cache dropped positions
        tk = held if reuse else held + key.shape[1]  # every key of the call, cached ones included
        region = self._heads_mask(mask, attn_mask, key_padding_mask, is_causal, b, tq, tk, past=past, cached=cache)
        region = masks.and_masks(region, self._position_bias(past))  # ALiBi, T5: added after the (capped) score
        region = _at_kept_keys(region, cache, tq)  # a rolling cache's keys: rules at their positions
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
            if self.rotary is not None:  # RoPE: the new queries and keys at positions past, past + 1, ..
                q, k = self.rotary.rotate(q, past), self.rotary.rotate(k, past)  # (B, H | Hkv, T, Dh)
            if cache is not None:  # self-attention: after the cached positions; cross: the source
                k, v = cache.append(k, v)  # (B, Hkv, Tk, Dh)
                cache._source = tuple(map(_Source.of, given)) if cache.cross else None
        if cache is not None and cache._owner is None:
            cache._owner = weakref.ref(self)  # the module that filled it: no other may use it
        k, v = _extra_keys(k, v, self.bias_k, self.bias_v, self.add_zero_attn)  # (B, Hkv, Tk', Dh), Tk' = Tk + extra
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
        _check_fits(cache, b, self.kv_heads, self.head_dim, self.q_proj.weight)
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
            score = _scores.resolve(name)
            score = score if self.softcap is None else _positions.soft_cap(score, self.softcap)
            parts.append(
                attention(
                    q[:, sel],
                    k[:, sel],
                    v[:, sel],
                    score=score,
                    normalize=self.normalize,
                    mask=region if len(self.groups) == 1 else _positions.select_heads(region, heads),
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
