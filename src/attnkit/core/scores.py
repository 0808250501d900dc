"""Score functions: step 1 of attention, the similarity of each query with each key.

Shape legend (the whole package uses it): B batch, H heads, Tq query positions, Tk key positions,
D model dim, Dh head dim, Dq / Dk query / key feature dims, A hidden dim of the additive score.

Every score is a plain function with one signature::

    fn(query: (..., Tq, Dq), key: (..., Tk, Dk), params: Mapping[str, Tensor]) -> (..., Tq, Tk)

Parameters are passed explicitly, never read off a module. A score's ``params`` names every
parameter it takes (a name it does not declare is an error, not ignored). A parameter's trailing
dims are fixed by its :class:`ParamSpec`; any leading dims broadcast against the query's leading
dims, so a stack of per-head parameters of shape ``(H, *spec.shape)`` gives every head its own score.

Registry: ``SCORES[name]`` is a :class:`Score`, callable as ``SCORES["general"](q, k, {"W": W})``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import AttentionError, check_rank, shape_str

__all__ = ["SCORES", "Score", "ParamSpec", "A", "not_positive"]

ScoreFn = Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]


A = -1  # in a ParamSpec shape: the additive score's free hidden dim, bound by the parameters given


@dataclass(frozen=True)
class ParamSpec:
    """The trailing shape of one score parameter and how a module initialises it."""

    shape: tuple[int, ...]  # may contain A, the hidden dim chosen by the caller
    init: str = "uniform"  # "uniform": U(-1/sqrt(fan_in), 1/sqrt(fan_in)); "ones": all 1
    optional: bool = False  # optional in the functional call; modules always create it
    positive: bool = False  # a divisor of the scores (a temperature): every value finite and > 0


def not_positive(t: Tensor) -> float | None:
    """The first value of ``t`` that is not finite and at least the dtype's smallest normal number
    (0, a negative, NaN, ±inf, or one so small that dividing by it overflows), or None."""
    t = t.detach()
    bad = ~(torch.isfinite(t) & (t >= torch.finfo(t.dtype).tiny))
    return float(t[bad][0]) if bool(bad.any()) else None


@dataclass(frozen=True)
class Score:
    """A registered score function, with what it needs to validate and initialise its parameters."""

    name: str
    fn: ScoreFn
    params: Callable[[int, int], dict[str, ParamSpec]]  # (Dq, Dk) -> specs of the parameters
    same_dim: bool  # True when the formula needs Dq == Dk
    # the key side computed once per source: (key, params) -> key', and the score over key'
    project: Callable[[Tensor, Mapping[str, Tensor]], Tensor] | None = None
    projected: Score | None = None

    @property
    def formula(self) -> str:
        """The formula, as the first line of the function's docstring."""
        lines = (self.fn.__doc__ or "").strip().splitlines()
        return lines[0] if lines else ""

    def init_params(
        self,
        query_dim: int,
        key_dim: int,
        hidden_dim: int | None = None,
        heads: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, Tensor]:
        """Fresh parameters (A = ``hidden_dim``, default ``key_dim``); ``heads`` adds a leading dim."""
        out = {}
        for name, spec in self.params(query_dim, key_dim).items():
            trailing = tuple(hidden_dim or key_dim if s == A else s for s in spec.shape)
            shape = ((heads,) if heads else ()) + trailing
            if spec.init == "ones":
                out[name] = torch.ones(shape, dtype=dtype)
            else:
                bound = 1.0 / math.sqrt(trailing[0])
                out[name] = torch.empty(shape, dtype=dtype).uniform_(-bound, bound)
        return out

    def project_key(self, key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """The key side of the score, computed once per source: ``key'`` with
        ``self.projected(q, key', self.projected_params(params)) == self(q, key, params)`` for
        every query. A decoder that attends over the same keys at every step projects them once."""
        check_rank("key", key, 2, "(..., Tk, Dk)")
        if self.project is None:
            raise AttentionError(f"score {self.name!r} has no key-side projection; pass the keys as they are")
        return self.project(key, params)

    def projected_params(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The parameters that :attr:`projected` reads: those not already applied to the keys."""
        return {name: params[name] for name in self.projected.params(0, 0) if name in params}

    def __call__(self, query: Tensor, key: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        params = params or {}
        self.validate(query, key, params)
        return self.fn(query, key, params)

    def validate(self, query: Tensor, key: Tensor, params: Mapping[str, Tensor]) -> None:
        """Raise :class:`AttentionError` for shapes or parameters this score cannot take: a name
        that :attr:`params` does not declare, a missing, misshapen or non-tensor parameter, or a
        value out of its spec's range (checked outside ``torch.compile`` only: it reads values)."""
        check_rank("query", query, 2, "(..., Tq, Dq)")
        check_rank("key", key, 2, "(..., Tk, Dk)")
        dq, dk = query.shape[-1], key.shape[-1]
        specs = self.params(dq, dk)
        unknown = [name for name in params if name not in specs]
        if unknown:
            names = ", ".join(repr(n) for n in unknown)
            expected = f"its parameters are {sorted(specs)}" if specs else "it takes none"
            raise AttentionError(
                f"score {self.name!r} has no parameter{'s' if len(unknown) > 1 else ''} {names} "
                f"(score_params has keys {sorted(params)}); {expected}"
            )
        if self.same_dim and dq != dk:
            raise AttentionError(
                f"score {self.name!r} needs query and key of the same last dim, got query "
                f"{shape_str(query.shape)} and key {shape_str(key.shape)}; use score='general', "
                f"'additive' or 'concat' for different dims"
            )
        try:
            lead = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])  # (...,) of the scores
        except RuntimeError:
            raise AttentionError(
                f"leading (batch) dims do not broadcast: query {shape_str(query.shape)}, key {shape_str(key.shape)}"
            ) from None
        hidden = None  # A, bound by the first parameter that has it
        for name, spec in specs.items():
            if name not in params:
                if spec.optional:
                    continue
                raise AttentionError(
                    f"score {self.name!r} needs parameter {name!r} but params has keys {sorted(params)}"
                )
            got, n = params[name], len(spec.shape)
            if not isinstance(got, Tensor):
                dims = ["...", *(("A" if hidden is None else hidden) if s == A else s for s in spec.shape)]
                expected = ", ".join(map(str, dims))
                raise AttentionError(
                    f"score {self.name!r}: params[{name!r}] must be a torch.Tensor of shape ({expected}), "
                    f"got {type(got).__name__}"
                )
            trailing = tuple(got.shape[got.dim() - n :]) if got.dim() >= n else None
            if trailing is not None and hidden is None and A in spec.shape:
                hidden = trailing[spec.shape.index(A)]
            want = tuple(hidden if s == A else s for s in spec.shape)
            if trailing != want:
                expected = ", ".join(["..."] + [str(s) for s in want])
                raise AttentionError(
                    f"score {self.name!r}: params[{name!r}] has shape {shape_str(got.shape)} but "
                    f"expected ({expected}) for query {shape_str(query.shape)} and key {shape_str(key.shape)}"
                )
            got_lead = got.shape[: got.dim() - n]
            try:
                fits = torch.broadcast_shapes(got_lead, lead) == lead
            except RuntimeError:
                fits = False
            if not fits:
                raise AttentionError(
                    f"score {self.name!r}: params[{name!r}] has shape {shape_str(got.shape)} whose leading dims "
                    f"{shape_str(got_lead)} do not broadcast to the query's and key's leading dims {shape_str(lead)}; "
                    f"per-head parameters (H, ...) need query (B, H, Tq, Dq) and key (B, H, Tk, Dk)"
                )
            checked = spec.positive and got.is_floating_point() and not torch.compiler.is_compiling()
            low = not_positive(got) if checked else None  # another dtype: attention's dtype check says so
            if low is not None:
                tiny = torch.finfo(got.dtype).tiny
                raise AttentionError(
                    f"score {self.name!r}: params[{name!r}] must be finite and > 0 (at least {tiny:.3g}, the "
                    f"smallest normal {got.dtype}: the scores are divided by it), got {low!r}"
                )


SCORES: dict[str, Score] = {}


def _register(
    name: str,
    *,
    same_dim: bool,
    params: Callable[[int, int], dict[str, ParamSpec]],
    project: Callable[[Tensor, Mapping[str, Tensor]], Tensor] | None = None,
    projected: Score | None = None,
):
    def add(fn: ScoreFn) -> ScoreFn:
        SCORES[name] = Score(name, fn, params, same_dim, project, projected)
        return fn

    return add


def _no_params(dq: int, dk: int) -> dict[str, ParamSpec]:
    return {}


@_register("dot", same_dim=True, params=_no_params)
def dot(query: Tensor, key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """score(q, k) = qᵀk

    The plain dot product (Luong "dot"); needs Dq == Dk.
    """
    return query @ key.transpose(-2, -1)  # (..., Tq, D) x (..., D, Tk) -> (..., Tq, Tk)


@_register("scaled_dot", same_dim=True, params=_no_params)
def scaled_dot(query: Tensor, key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """score(q, k) = qᵀk / √Dk

    The Transformer's score. Dividing by √Dk keeps the scores' variance near 1 when q and k have
    unit-variance entries, so the softmax does not saturate as the dim grows.
    """
    return query @ key.transpose(-2, -1) / math.sqrt(key.shape[-1])  # (..., Tq, Tk)


def _general_params(dq: int, dk: int) -> dict[str, ParamSpec]:
    return {"W": ParamSpec((dq, dk))}


def _cosine_params(dq: int, dk: int) -> dict[str, ParamSpec]:
    return {"temperature": ParamSpec((), init="ones", optional=True, positive=True)}


def _concat_params(dq: int, dk: int) -> dict[str, ParamSpec]:
    return {"w": ParamSpec((dq + dk,))}


def _additive_params(dq: int, dk: int) -> dict[str, ParamSpec]:
    return {"W_q": ParamSpec((dq, A)), "W_k": ParamSpec((dk, A)), "v": ParamSpec((A,))}


def _project_general(key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """qᵀ W k = qᵀ (W k): a dot product with W k, projected once per source."""
    return key @ params["W"].transpose(-2, -1)  # (..., Tk, Dk) x (..., Dk, Dq) -> (..., Tk, Dq)


def _project_scaled_general(key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    return _project_general(key, params) / math.sqrt(key.shape[-1])  # (..., Tk, Dq)


# named functions: a Score (and every module holding one) must pickle
@_register("general", same_dim=False, params=_general_params, project=_project_general, projected=SCORES["dot"])
def general(query: Tensor, key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """score(q, k) = qᵀ W k

    Bilinear (Luong "general"); ``params["W"]`` has shape (..., Dq, Dk), so Dq and Dk may differ.
    """
    qw = query @ params["W"]  # (..., Tq, Dq) x (..., Dq, Dk) -> (..., Tq, Dk)
    return qw @ key.transpose(-2, -1)  # (..., Tq, Dk) x (..., Dk, Tk) -> (..., Tq, Tk)


@_register(
    "scaled_general", same_dim=False, params=_general_params, project=_project_scaled_general, projected=SCORES["dot"]
)
def scaled_general(query: Tensor, key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """score(q, k) = qᵀ W k / √Dk

    ``general`` scaled as the Transformer scales its dot product: with unit-variance states and
    W's initialisation the unscaled score's variance grows with the dims, and a softmax over large
    scores is a hard argmax whose gradient vanishes.
    """
    return general(query, key, params) / math.sqrt(key.shape[-1])  # (..., Tq, Tk)


@_register("cosine", same_dim=True, params=_cosine_params)
def cosine(query: Tensor, key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """score(q, k) = qᵀk / (‖q‖ ‖k‖ τ)

    Cosine similarity, divided by an optional temperature ``params["temperature"]`` (shape (...),
    default 1; modules make it learnable), finite and > 0 (0 would make the scores inf). A zero
    vector scores 0 against everything.
    """
    q = F.normalize(query, dim=-1)  # (..., Tq, D), unit rows (zero rows stay zero)
    k = F.normalize(key, dim=-1)  # (..., Tk, D)
    scores = q @ k.transpose(-2, -1)  # (..., Tq, Tk)
    if "temperature" in params:
        scores = scores / params["temperature"][..., None, None]
    return scores


@_register("concat", same_dim=False, params=_concat_params)
def concat(query: Tensor, key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """score(q, k) = wᵀ[q; k]

    A linear map of the concatenation, with no nonlinearity (the notes' "concat" variant);
    ``params["w"]`` has shape (..., Dq + Dk). Note what the maths says: wᵀ[q; k] = w_qᵀq + w_kᵀk,
    and the softmax over keys cancels the w_qᵀq term, so with softmax the weights do not depend on
    the query at all. It is implemented faithfully, as the formula reads; use ``additive`` for a
    query-dependent score of this family.
    """
    dq = query.shape[-1]
    w = params["w"]
    w_q, w_k = w[..., :dq, None], w[..., dq:, None]  # (..., Dq, 1), (..., Dk, 1)
    sq = query @ w_q  # (..., Tq, Dq) x (..., Dq, 1) -> (..., Tq, 1)
    sk = (key @ w_k).transpose(-2, -1)  # (..., Tk, Dk) x (..., Dk, 1) -> (..., 1, Tk)
    return sq + sk  # (..., Tq, Tk)


def _additive_projected_params(dq: int, dk: int) -> dict[str, ParamSpec]:
    return {"W_q": ParamSpec((dq, dk)), "v": ParamSpec((dk,))}


def additive_projected(query: Tensor, key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """score(q, k') = vᵀ tanh(W_q q + k'), k' = W_k k already projected (additive, key side done)."""
    wq = query @ params["W_q"]  # (..., Tq, Dq) x (..., Dq, A) -> (..., Tq, A)
    hidden = torch.tanh(wq.unsqueeze(-2) + key.unsqueeze(-3))  # (..., Tq, Tk, A)
    return (hidden @ params["v"][..., None, :, None]).squeeze(-1)  # (..., Tq, Tk)


# not in SCORES: what Score.project_key gives for "additive", never asked for by name
ADDITIVE_PROJECTED = Score("additive_projected", additive_projected, _additive_projected_params, same_dim=False)


def _project_additive(key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """W_k k, once per source; the score over it keeps W_q and v."""
    return key @ params["W_k"]  # (..., Tk, Dk) x (..., Dk, A) -> (..., Tk, A)


@_register("additive", same_dim=False, params=_additive_params, project=_project_additive, projected=ADDITIVE_PROJECTED)
def additive(query: Tensor, key: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """score(q, k) = vᵀ tanh(W_q q + W_k k)

    Additive / MLP attention (Bahdanau). ``params``: ``W_q`` (..., Dq, A), ``W_k`` (..., Dk, A),
    ``v`` (..., A). This reference materializes a (..., Tq, Tk, A) tensor; it is the specification
    that faster paths are tested against.
    """
    wq = query @ params["W_q"]  # (..., Tq, Dq) x (..., Dq, A) -> (..., Tq, A)
    wk = key @ params["W_k"]  # (..., Tk, Dk) x (..., Dk, A) -> (..., Tk, A)
    hidden = torch.tanh(wq.unsqueeze(-2) + wk.unsqueeze(-3))  # (..., Tq, Tk, A)
    v = params["v"][..., None, :, None]  # (..., 1, A, 1): one v per leading index
    return (hidden @ v).squeeze(-1)  # (..., Tq, Tk, A) x (..., 1, A, 1) -> (..., Tq, Tk)


def resolve(score: str | Score) -> Score:
    """The one place a score's name is looked up."""
    if isinstance(score, Score):
        return score
    if isinstance(score, str) and score in SCORES:
        return SCORES[score]
    raise AttentionError(f"score={score!r} is unknown; expected one of {sorted(SCORES)} or a Score")
