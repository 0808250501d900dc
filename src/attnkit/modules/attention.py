"""``Attention``: one head, any score, any normalizer, any region; no Q/K/V projections.

Shape legend: B batch, Tq query positions, Tk key positions, Dq / Dk / Dv feature dims.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..backends import attention
from ..core import masks
from ..core import normalizers as _normalizers
from ..core import scores as _scores
from ..core.functional import AttentionResult
from ..core.local import as_window, predict_centre
from ..errors import AttentionError, check_bool, check_int, check_probability
from .capture import is_random, record, recording

__all__ = ["REGIONS", "Attention", "combine_masks", "score_parameters"]

REGIONS = ("global", "local-m", "local-p")


def combine_masks(mask, key_padding_mask: Tensor | None) -> masks.Mask | None:
    """The module-level masks as one: ``mask`` (True = may attend) and ``key_padding_mask`` (True = padding)."""
    padding = None if key_padding_mask is None else masks.from_key_padding(key_padding_mask)
    return masks.and_masks(mask, padding)


def score_parameters(
    score: _scores.Score, query_dim: int, key_dim: int, hidden_dim: int, heads=None
) -> nn.ParameterDict:
    """A score's parameters, freshly initialised, as learnable parameters (``nn.Parameter``)."""
    tensors = score.init_params(query_dim, key_dim, hidden_dim, heads=heads)
    return nn.ParameterDict({name: nn.Parameter(t) for name, t in tensors.items()})


def _squeeze(weights: Tensor, step: bool) -> Tensor:
    return weights.squeeze(-2) if step else weights  # a one-step query: (B, 1, Tk) -> (B, Tk)


class Attention(nn.Module):
    """Single-head attention of a query over keys and values: score -> normalize -> aggregate.

    Cross attention (a decoder state over encoder states: q != k = v) or plain self attention
    (``key`` and ``value`` default to ``query``). The score's parameters (e.g. ``W`` of
    ``general``, ``W_q``/``W_k``/``v`` of ``additive``) live in ``score_params``.

    Args:
        query_dim: Dq. key_dim: Dk (default Dq). Values may have any dim.
        score: a name in ``attnkit.SCORES``. normalize: a name in ``attnkit.NORMALIZERS`` or a
            configured normalizer. hidden_dim: A of the additive score and of local-p's predictor.
        region: "global" (all keys), "local-m" (keys within ``window`` of the query's own position)
            or "local-p" (keys within ``window`` D of a predicted centre, Gaussian-weighted).
        window: D or (left, right); needed by the local regions. For local-p, S (the number of
            real keys) is read from ``key_padding_mask``; without one, S = Tk.
        dropout: dropout on the weights, in training mode.

    ``forward(query (B, Tq, Dq) or (B, Dq), key (B, Tk, Dk), value (B, Tk, Dv), mask=...,
    key_padding_mask=..., need_weights=...)`` returns ``(output, weights | None)``; a 2-D query is
    one step and gives (B, Dv) and (B, Tk).

    >>> att = Attention(16, 8, score="general")
    >>> out, w = att(torch.randn(2, 16), torch.randn(2, 5, 8), need_weights=True)
    >>> out.shape, w.shape
    (torch.Size([2, 8]), torch.Size([2, 5]))
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int | None = None,
        *,
        score: str = "scaled_dot",
        normalize: str | object = "softmax",
        hidden_dim: int | None = None,
        region: str = "global",
        window: int | tuple[int, int] | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_int("query_dim", query_dim)
        key_dim = query_dim if key_dim is None else check_int("key_dim", key_dim)
        if hidden_dim is not None:
            check_int("hidden_dim", hidden_dim)
        self.score = _scores.resolve(score)
        self.normalize = _normalizers.resolve(normalize)
        if self.score.same_dim and query_dim != key_dim:
            raise AttentionError(
                f"score {self.score.name!r} needs query_dim == key_dim, got {query_dim} and {key_dim}; "
                f"use score='general', 'additive' or 'concat'"
            )
        if region not in REGIONS:
            raise AttentionError(f"region={region!r} is unknown; expected one of {REGIONS}")
        if region == "global" and window is not None:
            raise AttentionError("window is set but region='global'; use region='local-m' for a sliding window")
        if region != "global" and window is None:
            raise AttentionError(f"region={region!r} needs window=D (or (left, right) for local-m)")
        if region == "local-p":
            check_int("window (region='local-p': D, sigma = D/2)", window, 1)
        check_probability("dropout", dropout)
        self.query_dim, self.key_dim, self.region, self.dropout = query_dim, key_dim, region, dropout
        self._capture_inputs = True  # capture() records this module
        if region == "local-m":
            as_window(window)  # raises for a malformed or negative window
        self.window = window
        hidden = hidden_dim or key_dim
        self.score_params = score_parameters(self.score, query_dim, key_dim, hidden)
        self.centre_params = None
        if region == "local-p":
            bound = query_dim**-0.5
            self.centre_params = nn.ParameterDict(
                {
                    "W_p": nn.Parameter(torch.empty(query_dim, hidden).uniform_(-bound, bound)),
                    "v_p": nn.Parameter(torch.empty(hidden).uniform_(-(hidden**-0.5), hidden**-0.5)),
                }
            )

    def project_keys(self, key: Tensor) -> Tensor | None:
        """The score's key side for ``key`` (B, Tk, Dk), computed once per source (``W k`` of
        ``general``, ``W_k k`` of ``additive``): pass it as ``projected_key=`` to every call over
        the same keys, as a decoder does at each step. None for a score without one."""
        if self.score.project is None:
            return None
        return self.score.project_key(key, dict(self.score_params))

    def _recompute(self, query: Tensor, key: Tensor, value: Tensor, call: dict, params: dict, step: bool):
        """A function that recomputes this call's weights on the reference path, from detached
        inputs and a snapshot of the score parameters."""
        query, key, value = query.detach(), key.detach(), value.detach()
        params = {name: p.detach().clone() for name, p in params.items()}
        if call["centre"] is not None:
            call = {**call, "centre": call["centre"].detach()}

        def weights() -> Tensor:
            out = attention(query, key, value, **call, score_params=params, need_weights=True, backend="reference")
            return _squeeze(out.weights, step)

        return weights

    def extra_repr(self) -> str:
        region = "" if self.region == "global" else f", region={self.region!r}, window={self.window}"
        return f"{self.query_dim}, {self.key_dim}, score={self.score.name!r}, normalize={self.normalize}{region}"

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        mask: masks.Mask | Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        query_start: int = 0,
        normalize: str | object | None = None,
        projected_key: Tensor | None = None,
    ) -> AttentionResult:
        """``query_start``: absolute position of the first query, for local-m one step at a time.

        ``normalize``: a normalizer for this call only, in place of the module's; e.g. ``"hard"``
        (argmax) at inference for a model trained with sampled hard attention.

        ``projected_key``: :meth:`project_keys` of ``key``, computed once for many calls; the
        scores are then taken against it (same result, less work per call).
        """
        check_bool("need_weights", need_weights)
        key = query if key is None else key
        value = key if value is None else value
        score, params = self.score, dict(self.score_params)
        if projected_key is not None:
            if self.score.project is None:
                raise AttentionError(f"projected_key is given but score {self.score.name!r} has no key projection")
            score, params, key = score.projected, score.projected_params(params), projected_key
        step = query.dim() == 2
        if step:
            query = query.unsqueeze(1)  # (B, Dq) -> (B, 1, Dq): one decoder step
        region = combine_masks(mask, key_padding_mask)
        window, centre = None, None
        if self.region == "local-m":
            region = masks.and_masks(region, as_window(self.window, offset=query_start))
        elif self.region == "local-p":
            window = self.window
            lengths = torch.full((query.shape[0],), key.shape[-2], device=key.device)
            if key_padding_mask is not None:
                lengths = (~key_padding_mask).sum(-1)
            centre = predict_centre(query, self.centre_params, lengths)  # (B, Tq)
        call = {
            "score": score,
            "normalize": self.normalize if normalize is None else _normalizers.resolve(normalize),
            "mask": region,
            "window": window,
            "centre": centre,
        }
        watched = recording(self)
        random = is_random(call["normalize"])
        result = attention(
            query,
            key,
            value,
            **call,
            score_params=params,
            dropout=self.dropout if self.training else 0.0,
            need_weights=need_weights or (watched and random),
        )
        if watched:
            record(
                self,
                _squeeze(result.weights.detach(), step) if random else self._recompute(query, key, value, call, params, step),
            )
        if watched and random and not need_weights:
            result = AttentionResult(result.output, None, result.log_prob)  # asked for by the recorder only
        if not step:
            return result
        weights = None if result.weights is None else result.weights.squeeze(-2)
        log_prob = None if result.log_prob is None else result.log_prob.squeeze(-1)
        return AttentionResult(result.output.squeeze(-2), weights, log_prob)
