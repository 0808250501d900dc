"""``LinearAttention``: multi-head self-attention with a kernel feature map, O(T) in the length,
and ``LinearState``, its O(1)-per-step recurrent state for causal decoding.

Shape legend: B batch, H heads, T positions, D model dim, Dh = D / H head dim, m features of the
feature map φ. Batch-first: (B, T, D) in and out.

The maths is :func:`attnkit.core.linear.linear_attention`'s: out_i = φ(q_i)ᵀ S / φ(q_i)ᵀ z with
S = Σ_j φ(k_j) v_jᵀ (m, Dh) and z = Σ_j φ(k_j) (m,) over the keys query i reads. Causal decoding
keeps S and z (a :class:`LinearState`) instead of a growing key/value cache: each step costs
O(m·Dh) whatever the length so far, and step-by-step calls equal one causal call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core import linear as _linear
from ..core.functional import AttentionResult
from ..errors import AttentionError, check_bool, check_float_input, check_int, check_rank, shape_str

__all__ = ["LinearAttention", "LinearState"]


class LinearState:
    """The recurrent state of a causal :class:`LinearAttention`, updated in place by
    ``module(x, state)``: ``s`` (B, H, m, Dh) = Σ φ(k_j) v_jᵀ and ``z`` (B, H, m) = Σ φ(k_j) over
    the positions seen, ``shift`` (B, H, 1, 1) the log of the factor the keys' features are divided
    by (a stabilised feature map, :class:`~attnkit.core.linear.Performer`: the running max, S and z
    rescaled when it grows; else None), ``length`` the positions seen. Empty (None) until the first call.
    """

    def __init__(self):
        self.s: Tensor | None = None  # (B, H, m, Dh)
        self.z: Tensor | None = None  # (B, H, m)
        self.shift: Tensor | None = None  # (B, H, 1, 1)
        self.length = 0

    def __repr__(self):
        held = "empty" if self.s is None else f"s={shape_str(self.s.shape)}, length={self.length}"
        return f"LinearState({held})"


class LinearAttention(nn.Module):
    """Multi-head linear self-attention (Katharopoulos et al., 2020; Performer, Choromanski et al., 2021).

    Heads as in :class:`~attnkit.MultiHeadAttention`: q, k, v = x W_Q, x W_K, x W_V split into H
    heads of Dh, each head attends with :func:`~attnkit.core.linear.linear_attention`, the heads are
    concatenated and projected by W_O (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``).

    Args:
        embed_dim: D. num_heads: H, which must divide D.
        feature_map: ``"elu"`` (elu + 1), ``"relu"``, ``"performer"`` (FAVOR+ random features, the
            module's own ``Performer(Dh, nb_features, seed=0)``, its projection a buffer that saves
            and moves with the module), or a :class:`~attnkit.core.linear.FeatureMap` for inputs of Dh.
        causal: position i attends positions j <= i; then ``forward(x, state)`` decodes step by step.
        nb_features: m of ``"performer"`` (default 256); an error with another feature map.
        bias: biases in the projections.

    ``forward(x, state=None, *, key_padding=None, need_weights=False, average_weights=True)``:
    x (B, T, D) -> ``AttentionResult(output (B, T, D), weights)``.

    - ``key_padding`` (B, T) bool, True = a real position (or ``masks.KeyPadding``): padded
      positions are never attended.
    - ``need_weights``: the weights (B, T, T) averaged over heads, or (B, H, T, T) per head with
      ``average_weights=False``, materialised (O(T²): for short inputs); else None.
    - ``state``: a :class:`LinearState` (causal modules only), updated in place: the call's
      positions follow the ones the state has seen, and read their sums, so calls of any lengths
      (one position per step while decoding) equal one causal call over the whole sequence, at
      O(m·Dh) memory whatever the length. ``key_padding`` then covers the call's positions (B, T).
      It does not return weights (the past keys are not kept).

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> la = LinearAttention(16, 4, causal=True).double()
    >>> x = torch.randn(2, 5, 16, dtype=torch.float64)
    >>> state = LinearState()
    >>> steps = torch.cat([la(x[:, t : t + 1], state).output for t in range(5)], 1)
    >>> torch.allclose(steps, la(x).output), state.length
    (True, 5)
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        feature_map: str | _linear.FeatureMap = "elu",
        causal: bool = False,
        nb_features: int | None = None,
        bias: bool = True,
    ):
        super().__init__()
        check_int("embed_dim", embed_dim)
        check_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise AttentionError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        check_bool("causal", causal)
        check_bool("bias", bias)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.causal = causal
        if feature_map == "performer":
            m = 256 if nb_features is None else check_int("nb_features", nb_features)
            self.feature_map = _linear.Performer(self.head_dim, m, seed=0)
        else:
            if nb_features is not None:
                raise AttentionError(
                    f"nb_features={nb_features!r} applies to feature_map='performer' only (elu and relu have m = Dh "
                    f"features; a FeatureMap object sets its own), got feature_map={feature_map!r}"
                )
            self.feature_map = _linear.resolve(feature_map, self.head_dim)
        dim = getattr(self.feature_map, "dim", self.head_dim)
        if dim != self.head_dim:
            raise AttentionError(
                f"feature_map {self.feature_map} takes inputs of {dim} features, but expected the head dim "
                f"Dh = embed_dim / num_heads = {self.head_dim}"
            )
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def extra_repr(self) -> str:
        return f"{self.embed_dim}, num_heads={self.num_heads}, causal={self.causal}"

    def _heads(self, x: Tensor, proj: nn.Linear) -> Tensor:
        return proj(x).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)

    def forward(
        self,
        x: Tensor,
        state: LinearState | None = None,
        *,
        key_padding=None,
        need_weights: bool = False,
        average_weights: bool = True,
    ) -> AttentionResult:
        check_bool("need_weights", need_weights)
        check_bool("average_weights", average_weights)
        layout = f"(B, T, {self.embed_dim}) (batch first)"
        check_rank("x", x, 3, layout)
        check_float_input("x", x, self.q_proj.weight.dtype, "the module's parameters")
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise AttentionError(f"x has shape {shape_str(x.shape)} but expected {layout}")
        q, k, v = (self._heads(x, p) for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, H, T, Dh) each
        weights = None
        if state is None:
            result = _linear.linear_attention(
                q,
                k,
                v,
                feature_map=self.feature_map,
                causal=self.causal,
                key_padding=key_padding,
                need_weights=need_weights,
            )
            out, weights = result
            if weights is not None and average_weights:
                weights = weights.mean(dim=1)  # (B, T, T)
        else:
            self._check_state(state, need_weights, x)
            out = self._step(q, k, v, state, key_padding)
        return AttentionResult(self.out_proj(out.transpose(1, 2).flatten(2)), weights)  # (B, H, T, Dh) -> (B, T, D)

    def _check_state(self, state, need_weights: bool, x: Tensor) -> None:
        if not isinstance(state, LinearState):
            raise AttentionError(f"state must be an attnkit.modules.LinearState, got {type(state).__name__}")
        if not self.causal:
            raise AttentionError(
                "state= decodes step by step, which needs a causal module (position i attends j <= i): build "
                "LinearAttention(..., causal=True)"
            )
        if need_weights:
            raise AttentionError(
                "need_weights=True cannot be given with state=: the state keeps sums, not the past keys the "
                "weights are over; call the module on the whole sequence for the weights"
            )
        b = x.shape[0]
        if state.s is not None and (state.s.shape[:2] != (b, self.num_heads) or state.s.device != x.device):
            raise AttentionError(
                f"state holds sums s {shape_str(state.s.shape)} on {state.s.device}, but x {shape_str(x.shape)} on "
                f"{x.device} expects (B={b}, H={self.num_heads}, m, Dh) there: a LinearState serves one module "
                f"and one batch; start a new LinearState()"
            )

    def _step(self, q: Tensor, k: Tensor, v: Tensor, state: LinearState, key_padding) -> Tensor:
        """The call's positions after the state's, the state updated in place: (B, H, T, Dh)."""
        b, h, t, _ = q.shape
        valid = _linear._key_valid(key_padding, (b, h), t)  # (B, 1, T) or None
        dtype = q.dtype
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        q, k, v = (y.to(work) for y in (q, k, v))
        if valid is not None:
            k, v = torch.where(valid.unsqueeze(-1), k, 0.0), torch.where(valid.unsqueeze(-1), v, 0.0)
        phi = self.feature_map
        sums = None if state.s is None else (state.s, state.z)
        shift = phi.key_shift(k, valid)  # (B, H, 1, 1) or None
        if shift is not None and state.shift is not None:  # a running max: old sums rescaled to the new one
            shift = torch.maximum(state.shift, shift)
            factor = torch.exp(state.shift - shift)  # (B, H, 1, 1), <= 1
            sums = (state.s * factor, state.z * factor[..., 0])
        phi_q = phi(q, is_query=True)  # (B, H, T, m)
        phi_k = phi(k, is_query=False, valid=valid, shift=shift)  # (B, H, T, m)
        if valid is not None:
            phi_k = torch.where(valid.unsqueeze(-1), phi_k, 0.0)
        out, state.s, state.z = _linear.causal_linear(phi_q, phi_k, v, sums)
        state.shift, state.length = shift, state.length + t
        return out.to(dtype)
