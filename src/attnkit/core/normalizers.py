"""Normalizers: step 2 of attention, scores -> weights.

Every normalizer is a small frozen dataclass holding its options, called with one signature::

    normalizer(scores: (..., Tq, Tk), allowed: bool broadcastable to scores | None) -> Normalized

``allowed`` is True where the query may attend the key (the package's one polarity). The result's
``weights`` are non-negative, exactly 0 where not allowed, sum to 1 over every row that has an
allowed key, at every magnitude the dtype can hold, and are all 0 on a row that has none (never
NaN, forward or backward). A NaN score at an allowed key makes that row NaN and no other, as
``torch.softmax`` does; a NaN score at a blocked key has no effect. Empty dims (Tq = 0 or Tk = 0)
give empty weights: a row with no key at all is a row with no allowed key.
``log_prob`` is set by the stochastic normalizers (``sample``): the log-probability of the drawn
keys, (..., Tq), for a REINFORCE loss (:func:`reinforce_loss`).

Each class says whether gradients reach the scores through its weights (``differentiable``):
``hard`` and ``sample`` do not (``sample``'s gradient travels through ``log_prob`` instead).

Registry: ``NORMALIZERS[name]`` is the class; ``NORMALIZERS["topk"](k=4)`` makes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import AttentionError, check_bool, shape_str

__all__ = [
    "NORMALIZERS",
    "Normalized",
    "Softmax",
    "Sparsemax",
    "Entmax15",
    "Hard",
    "TopK",
    "Sample",
    "Gumbel",
    "reinforce_loss",
    "resolve",
    "stable_topk",
]


class Normalized(NamedTuple):
    weights: Tensor  # (..., Tq, Tk)
    log_prob: Tensor | None = None  # (..., Tq), stochastic normalizers only


@dataclass(frozen=True)
class Softmax:
    """weights = softmax(scores) over the allowed keys."""

    differentiable = True

    def __call__(self, scores: Tensor, allowed: Tensor | None = None) -> Normalized:
        if allowed is None:
            return Normalized(torch.softmax(scores, dim=-1))
        # finfo.min rather than -inf: a row with no allowed key stays finite (uniform), then is zeroed
        filled = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return Normalized(torch.softmax(filled, dim=-1).masked_fill(~allowed, 0.0))


class _SparsemaxFn(torch.autograd.Function):
    """sparsemax(z) = argmin_p ‖p - z‖² over the simplex (Martins & Astudillo, 2016)."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        z = z - z.amax(dim=-1, keepdim=True)  # (..., Tk); shift-invariant, keeps cumsums small
        zs = z.sort(dim=-1, descending=True).values
        k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)  # (Tk,)
        cums = zs.cumsum(dim=-1) - 1
        # |S|: the largest k with 1 + k z_k > Σ_{j<=k} z_j, at least 1 (a NaN row has none: it stays NaN)
        support = (k * zs > cums).sum(dim=-1, keepdim=True).clamp(min=1)
        tau = cums.gather(-1, support - 1) / support.to(z.dtype)  # (..., 1)
        p = (z - tau).clamp(min=0)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        supp = (p > 0).to(grad.dtype)
        mean = (grad * supp).sum(-1, keepdim=True) / supp.sum(-1, keepdim=True)
        return supp * (grad - mean)  # Jacobian: diag(s) - s sᵀ / |S|


class _Entmax15Fn(torch.autograd.Function):
    """1.5-entmax: p_i = [z_i / 2 - τ]₊², τ such that Σ p = 1 (Peters et al., 2019), exact sort."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        x = z / 2
        x = x - x.amax(dim=-1, keepdim=True)
        xs = x.sort(dim=-1, descending=True).values  # (..., Tk)
        rho = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
        mean = xs.cumsum(-1) / rho
        mean_sq = (xs**2).cumsum(-1) / rho
        delta = (1 - rho * (mean_sq - mean**2)) / rho
        tau = mean - delta.clamp(min=0).sqrt()  # candidate threshold for each support size
        support = (tau <= xs).sum(dim=-1, keepdim=True).clamp(min=1)  # a NaN row has none: it stays NaN
        tau_star = tau.gather(-1, support - 1)
        p = (x - tau_star).clamp(min=0) ** 2
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        g = p.sqrt()  # dp_i/dz_i on the support, up to the τ correction below
        dz = grad * g
        return dz - g * dz.sum(-1, keepdim=True) / g.sum(-1, keepdim=True)


def _empty(scores: Tensor) -> bool:
    """No query or no key: nothing to normalize (a row with no key has no allowed key: weight 0)."""
    return scores.numel() == 0


def _sparse(fn: type[torch.autograd.Function], margin: float, scores: Tensor, allowed: Tensor | None) -> Tensor:
    """Apply a sparse map on the allowed keys only.

    The scores are shifted so that the row's best allowed score is 0; a key ``margin`` below it is
    never in the support (sparsemax: margin 1, entmax-1.5: margin 2), so blocked keys are filled
    with -2·margin and get exactly 0 without -inf arithmetic. Filling before the shift (best -
    2·margin) would round back to the best score at large magnitudes (600 in bfloat16), putting
    blocked keys in the support. Rows with no allowed key are computed on zeros, then zeroed.
    """
    if _empty(scores):
        return scores * 0  # (..., Tq, Tk) with a zero dim; keeps the graph
    if allowed is None:
        return fn.apply(scores)
    ok = allowed.expand_as(scores)
    best = scores.masked_fill(~ok, float("-inf")).amax(-1, keepdim=True)  # (..., Tq, 1)
    has_key = ok.any(-1, keepdim=True)  # (..., Tq, 1)
    shift = torch.where(has_key, best, torch.zeros_like(best)).detach()
    z = torch.where(ok & has_key, scores - shift, torch.full_like(scores, -2 * margin))
    return fn.apply(z).masked_fill(~(ok & has_key), 0.0)


@dataclass(frozen=True)
class Sparsemax:
    """Euclidean projection of the scores onto the simplex: exact zeros for low scores."""

    differentiable = True

    def __call__(self, scores: Tensor, allowed: Tensor | None = None) -> Normalized:
        return Normalized(_sparse(_SparsemaxFn, 1.0, scores, allowed))


@dataclass(frozen=True)
class Entmax15:
    """α-entmax with α = 1.5: between softmax (α = 1) and sparsemax (α = 2); sparse, smooth."""

    differentiable = True

    def __call__(self, scores: Tensor, allowed: Tensor | None = None) -> Normalized:
        return Normalized(_sparse(_Entmax15Fn, 2.0, scores, allowed))


def _check_k(k: int, scores: Tensor, who: str) -> None:
    if k > scores.shape[-1]:
        raise AttentionError(
            f"{who}: k={k} is larger than the number of keys Tk={scores.shape[-1]} "
            f"(scores of shape {shape_str(scores.shape)}); expected 1 <= k <= Tk"
        )


def _positive_int(who: str, k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise AttentionError(f"{who}: k must be an int >= 1, got {k!r}")


def stable_topk(scores: Tensor, k: int) -> Tensor:
    """Indices (..., k) of the k largest scores (..., Tk), best first; the lowest index wins a tie.

    ``torch.topk`` breaks ties in no stated order (and differently on a band of the keys). The
    chosen set depends on that order only where the (k+1)-th score equals the k-th, so topk is
    asked for k + 1, and only those rows are redone (:func:`_lowest_ties`): O(Tk) for each
    ambiguous row, nothing for the others. Under ``torch.compile`` every row is redone (no
    data-dependent branch). The k picks are ordered by score, equal scores by index.
    """
    tk = scores.shape[-1]
    top = scores.topk(min(k + 1, tk), dim=-1)  # (..., k or k + 1), values descending
    values, idx = top.values[..., :k], top.indices[..., :k]
    if k < tk:
        ambiguous = top.values[..., k] == top.values[..., k - 1]  # (...): a tie across the k-th place
        if torch.compiler.is_compiling():
            idx = _lowest_ties(scores, values, idx)
        elif bool(ambiguous.any()):
            rows = ambiguous.nonzero(as_tuple=True)
            idx = idx.index_put(rows, _lowest_ties(scores[rows], values[rows], idx[rows]))
    idx = idx.sort(dim=-1).values  # (..., k): by index, then stably by score
    order = scores.gather(-1, idx).sort(dim=-1, descending=True, stable=True).indices
    return idx.gather(-1, order)


def _lowest_ties(scores: Tensor, values: Tensor, idx: Tensor) -> Tensor:
    """topk's picks ``idx`` (..., k) with its picks among keys tied at the k-th score replaced by
    the lowest-index tied keys: the r-th tied slot takes the r-th tied key, found by a binary
    search in the running count of tied keys (the keys above the k-th score are the same for any
    tie rule; NaN never ties)."""
    k = idx.shape[-1]
    kth = values[..., -1:]  # (..., 1)
    tied_slot = values == kth  # (..., k)
    tied_count = (scores == kth).cumsum(-1)  # (..., Tk): tied keys up to j
    rank = tied_slot.cumsum(-1)  # (..., k): 1, 2, ... over the tied slots
    first = torch.searchsorted(tied_count.reshape(-1, scores.shape[-1]), rank.reshape(-1, k))  # (N, k)
    return torch.where(tied_slot, first.reshape(idx.shape), idx)


@dataclass(frozen=True)
class TopK:
    """Hard selection of the k best allowed keys, softmax over those k, 0 elsewhere.

    The selection has no gradient; the weights of the selected keys do (through their softmax).
    With fewer than k allowed keys, all allowed keys are selected. Ties: among keys with equal
    scores, the lowest key index wins (:func:`stable_topk`), on every backend.
    """

    k: int = 1
    differentiable = True

    def __post_init__(self):
        _positive_int("topk", self.k)

    def select(self, scores: Tensor, allowed: Tensor | None) -> Tensor:
        """Indices (..., Tq, k) of the selected keys, best first; blocked keys only where too few allowed."""
        _check_k(self.k, scores, "topk")
        filled = scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))
        return stable_topk(filled.detach(), self.k)

    def __call__(self, scores: Tensor, allowed: Tensor | None = None) -> Normalized:
        if _empty(scores):
            return Normalized(scores * 0)
        idx = self.select(scores, allowed)
        keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(-1, idx, True)
        if allowed is not None:
            keep &= allowed
        weights = Softmax()(scores, keep).weights
        # a NaN score at an allowed key makes its whole row NaN, as softmax does (not just that key)
        nan = torch.isnan(scores.detach()) if allowed is None else torch.isnan(scores.detach()) & allowed
        return Normalized(weights.masked_fill(nan.any(-1, keepdim=True), float("nan")))


@dataclass(frozen=True)
class Hard:
    """Argmax: weight 1 on the best allowed key, 0 elsewhere (no gradient to the scores).

    Ties: among keys with equal best scores, the lowest key index wins (as :class:`TopK`).
    """

    differentiable = False

    def __call__(self, scores: Tensor, allowed: Tensor | None = None) -> Normalized:
        weights = TopK(1)(scores.detach(), allowed).weights  # softmax over one key: exactly 1.0
        return Normalized(weights)


def _flat_probs(scores: Tensor, allowed: Tensor | None) -> tuple[Tensor, Tensor]:
    """softmax probabilities and log-probabilities over the allowed keys."""
    probs = Softmax()(scores, allowed).weights
    filled = scores if allowed is None else scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return probs, torch.log_softmax(filled, dim=-1)


@dataclass(frozen=True)
class Sample:
    """Draw k keys (with replacement, so k may exceed Tk) from softmax(scores); weights = counts / k.

    E[weights] = softmax(scores), so the output is an unbiased Monte-Carlo estimate of soft
    attention. The draw has no gradient: ``log_prob`` (..., Tq), the summed log-probability of the
    draws, carries it, for :func:`reinforce_loss` (Xu et al. 2015's hard attention).
    """

    k: int = 1
    generator: torch.Generator | None = None
    differentiable = False

    def __post_init__(self):
        _positive_int("sample", self.k)

    def __call__(self, scores: Tensor, allowed: Tensor | None = None) -> Normalized:
        if _empty(scores):
            return Normalized(scores * 0, scores.new_zeros(scores.shape[:-1]))
        probs, logp = _flat_probs(scores, allowed)
        tk = scores.shape[-1]
        # drawn in float32 at least: float16 probabilities lose small keys and overflow to inf
        flat = probs.detach().reshape(-1, tk).to(torch.promote_types(probs.dtype, torch.float32))  # (N, Tk)
        empty = flat.sum(-1, keepdim=True) == 0  # rows with no allowed key: draw anything, then zero
        bad = ~torch.isfinite(flat).all(-1, keepdim=True)  # NaN scores (or +inf) make NaN rows, as softmax does
        flat = torch.where(empty | bad, torch.ones_like(flat), flat)
        idx = torch.multinomial(flat, self.k, replacement=True, generator=self.generator)  # (N, k)
        counts = torch.zeros_like(flat).scatter_add_(-1, idx, torch.ones_like(idx, dtype=flat.dtype))
        counts = (counts / self.k).masked_fill(empty, 0.0).masked_fill(bad, float("nan")).to(probs.dtype)
        log_prob = logp.reshape(-1, tk).gather(-1, idx).sum(-1)  # (N,)
        log_prob = log_prob.masked_fill(empty.squeeze(-1), 0.0).masked_fill(bad.squeeze(-1), float("nan"))
        return Normalized(counts.reshape(scores.shape), log_prob.reshape(scores.shape[:-1]))


@dataclass(frozen=True)
class Gumbel:
    """Gumbel-softmax: y = softmax((scores + g) / temperature), g ~ Gumbel(0, 1).

    With ``hard=True`` (straight-through), the forward value is the one-hot argmax of y and the
    backward pass uses y's gradient: ``one_hot - y.detach() + y``.
    """

    temperature: float = 1.0
    hard: bool = True
    generator: torch.Generator | None = None
    differentiable = True

    def __post_init__(self):
        if not self.temperature > 0:
            raise AttentionError(f"gumbel: temperature must be > 0, got {self.temperature!r}")
        check_bool("gumbel: hard", self.hard)

    def __call__(self, scores: Tensor, allowed: Tensor | None = None) -> Normalized:
        u = torch.rand(scores.shape, generator=self.generator, dtype=scores.dtype, device=scores.device)
        tiny = torch.finfo(scores.dtype).tiny
        g = -torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))  # (..., Tq, Tk), Gumbel(0, 1)
        y = Softmax()((scores + g) / self.temperature, allowed).weights
        if not self.hard:
            return Normalized(y)
        one_hot = Hard()(y, allowed).weights
        return Normalized(one_hot - y.detach() + y)


NORMALIZERS: dict[str, type] = {
    "softmax": Softmax,
    "sparsemax": Sparsemax,
    "entmax15": Entmax15,
    "hard": Hard,
    "topk": TopK,
    "sample": Sample,
    "gumbel": Gumbel,
}


def resolve(normalize) -> object:
    """The one place a normalizer's name is looked up: a name gives the default-configured one."""
    if isinstance(normalize, str):
        if normalize not in NORMALIZERS:
            raise AttentionError(f"normalize={normalize!r} is unknown; expected one of {sorted(NORMALIZERS)}")
        return NORMALIZERS[normalize]()
    if not callable(normalize):
        raise AttentionError(
            f"normalize must be a name in {sorted(NORMALIZERS)} or a normalizer, got {type(normalize).__name__}"
        )
    return normalize


def reinforce_loss(log_prob: Tensor, reward: Tensor, baseline: Tensor | float | None = None) -> Tensor:
    """Surrogate loss whose gradient is the REINFORCE estimate of -∇ E[reward].

    loss = -mean((reward - b) · log_prob), with (reward - b) treated as a constant. A baseline b
    (a float, or a tensor broadcastable to ``reward``) lowers the estimator's variance without
    biasing it. When ``baseline`` is a tensor that requires grad (a learned baseline), the loss also
    includes mean((reward - b)²) so that b learns to predict the reward.
    """
    reward = reward.detach()
    b = 0.0 if baseline is None else baseline
    advantage = reward - (b.detach() if isinstance(b, Tensor) else b)
    loss = -(advantage * log_prob).mean()
    if isinstance(b, Tensor) and b.requires_grad:
        loss = loss + ((reward - b) ** 2).mean()
    return loss
