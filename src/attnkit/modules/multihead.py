"""``MultiHeadAttention``: H projected attentions in parallel, concatenated, projected back.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, D model dim, Dh = D / H.
Batch-first, like ``nn.MultiheadAttention(batch_first=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from ..backends import BACKENDS, attention
from ..core import masks
from ..core import normalizers as _normalizers
from ..core import scores as _scores
from ..core.functional import AttentionResult
from ..core.local import as_window
from ..errors import AttentionError, shape_str
from .attention import combine_masks, score_parameters
from .capture import is_random, record, recording

__all__ = ["MultiHeadAttention"]


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

    ``forward(query (B, Tq, D), key (B, Tk, kdim), value (B, Tk, vdim), *, key_padding_mask,
    mask, need_weights, average_weights)``. ``key_padding_mask`` (B, Tk) has PyTorch's meaning:
    True marks padding. ``mask`` has the package's: True = may attend, broadcastable to
    (B, H, Tq, Tk); a 3-D tensor is read as (B, Tq, Tk). Returns ``(output (B, Tq, D), weights)``
    with weights (B, Tq, Tk) averaged over heads, or (B, H, Tq, Tk) with ``average_weights=False``,
    or None when not asked for.

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
    ):
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads:
            raise AttentionError(f"num_heads={num_heads} must be >= 1 and divide embed_dim={embed_dim}")
        if not 0.0 <= dropout < 1.0:
            raise AttentionError(f"dropout must be in [0, 1), got {dropout!r}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
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
        self.region = masks.and_masks(masks.causal() if causal else None, as_window(window))
        if backend != "auto" and backend not in BACKENDS:
            raise AttentionError(f"backend={backend!r} is unknown; expected 'auto' or one of {sorted(BACKENDS)}")
        self.backend = backend  # "auto", or a name in attnkit.backends.BACKENDS to force one
        self._capture_inputs = True  # capture() records this module
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
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
        return f"{self.embed_dim}, num_heads={self.num_heads}, score={score!r}, normalize={self.normalize}{region}"

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, **kwargs) -> MultiHeadAttention:
        """A copy of a ``torch.nn.MultiheadAttention``'s weights (same dtype and device).

        Keyword arguments (e.g. ``causal=True``) pass to the constructor; the score is
        ``scaled_dot`` unless given. Our module is batch-first whatever ``module.batch_first`` is.
        """
        if module.bias_k is not None or module.add_zero_attn:
            raise AttentionError("from_torch: add_bias_kv and add_zero_attn are not supported")
        has_bias = module.in_proj_bias is not None
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
        return new

    def _heads_mask(self, mask, key_padding_mask: Tensor | None) -> masks.Mask | None:
        if isinstance(mask, Tensor) and mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (B, Tq, Tk) -> (B, 1, Tq, Tk): the same for every head
        return masks.and_masks(self.region, combine_masks(mask, key_padding_mask))

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        mask: masks.Mask | Tensor | None = None,
        need_weights: bool = False,
        average_weights: bool = True,
    ) -> AttentionResult:
        key = query if key is None else key
        value = key if value is None else value
        for name, x, dim in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if x.dim() != 3 or x.shape[-1] != dim:
                raise AttentionError(f"{name} has shape {shape_str(x.shape)} but expected (B, T, {dim}) (batch first)")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise AttentionError(
                f"query {shape_str(query.shape)}, key {shape_str(key.shape)} and value {shape_str(value.shape)} "
                f"must share B, and key and value must share Tk"
            )
        h = self.num_heads
        q = rearrange(self.q_proj(query), "B Tq (H Dh) -> B H Tq Dh", H=h)
        k = rearrange(self.k_proj(key), "B Tk (H Dh) -> B H Tk Dh", H=h)
        v = rearrange(self.v_proj(value), "B Tk (H Dh) -> B H Tk Dh", H=h)
        region = self._heads_mask(mask, key_padding_mask)
        watched = recording(self)
        random = is_random(self.normalize)
        dropout = self.dropout if self.training else 0.0
        result = self._attend(
            q, k, v, region, need_weights=need_weights or (watched and random), dropout=dropout, backend=self.backend
        )
        if watched:
            record(self, result.weights.detach() if random else self._recompute(q, k, v, region))
        out = self.out_proj(rearrange(result.output, "B H Tq Dh -> B Tq (H Dh)"))  # (B, Tq, D)
        weights = result.weights if need_weights else None  # (B, H, Tq, Tk) | None
        if weights is not None and average_weights:
            weights = weights.mean(dim=1)  # (B, Tq, Tk)
        return AttentionResult(out, weights, result.log_prob)

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
        """Every score group's heads on (B, H, T, Dh) projections, merged back in head order."""
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
