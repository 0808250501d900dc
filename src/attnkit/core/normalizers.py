"""Normalizers: step 2 of attention, scores -> weights.

Every normalizer is a small frozen dataclass holding its options, called with one signature::

    normalizer(scores: (..., Tq, Tk), allowed: bool broadcastable to scores | None) -> Normalized

``allowed`` is True where the query may attend the key (the package's one polarity). The result's
``weights`` are non-negative, exactly 0 where not allowed, sum to 1 over every row that has an
allowed key, and are all 0 on a row that has none (never NaN, forward or backward).
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

from ..errors import AttentionError, shape_str

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
]


class Normalized(NamedTuple):
    weights: Tensor  # (..., Tq, Tk)
    log_prob: Tensor | None = None  # (..., Tq), stochastic normalizers only


def _row_has_key(scores: Tensor, allowed: Tensor) -> Tensor:
    return allowed.expand_as(scores).any(-1, keepdim=True)  # (..., Tq, 1)


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
        support = (k * zs > cums).sum(dim=-1, keepdim=True)  # |S| >= 1: largest k with 1 + k z_k > Σ z_j
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
        support = (tau <= xs).sum(dim=-1, keepdim=True)
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


def _sparse(fn: type[torch.autograd.Function], margin: float, scores: Tensor, allowed: Tensor | None) -> Tensor:
    """Apply a sparse map on the allowed keys only.

    A key whose score is ``margin`` below the row's best allowed score is never in the support
    (sparsemax: margin 1, entmax-1.5: margin 2), so filling blocked keys that low gives them exactly
    0 without -inf arithmetic. Rows with no allowed key are computed on zeros, then zeroed.
    """
    if allowed is None:
        return fn.apply(scores)
    best = scores.masked_fill(~allowed, float("-inf")).amax(-1, keepdim=True)  # (..., Tq, 1)
    has_key = _row_has_key(scores, allowed)
    fill = torch.where(has_key, best - 2 * margin, torch.zeros_like(best)).detach()
    z = torch.where(allowed & has_key, scores, fill)
    return fn.apply(z).masked_fill(~(allowed & has_key), 0.0)


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


@dataclass(frozen=True)
class TopK:
    """Hard selection of the k best allowed keys, softmax over those k, 0 elsewhere.

    The selection has no gradient; the weights of the selected keys do (through their softmax).
    With fewer than k allowed keys, all allowed keys are selected.
    """

    k: int = 1
    differentiable = True

    def __post_init__(self):
        _positive_int("topk", self.k)

    def select(self, scores: Tensor, allowed: Tensor | None) -> Tensor:
        """Indices (..., Tq, k) of the selected keys, best first; blocked keys only where too few allowed."""
        _check_k(self.k, scores, "topk")
        filled = scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))
        return filled.detach().topk(self.k, dim=-1).indices

    def __call__(self, scores: Tensor, allowed: Tensor | None = None) -> Normalized:
        idx = self.select(scores, allowed)
        keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(-1, idx, True)
        if allowed is not None:
            keep &= allowed
        return Softmax()(scores, keep)


@dataclass(frozen=True)
class Hard:
    """Argmax: weight 1 on the best allowed key, 0 elsewhere (no gradient to the scores)."""

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
        probs, logp = _flat_probs(scores, allowed)
        tk = scores.shape[-1]
        flat = probs.detach().reshape(-1, tk)  # (N, Tk) with N = prod(..., Tq)
        empty = flat.sum(-1, keepdim=True) == 0  # rows with no allowed key: draw anything, then zero
        flat = torch.where(empty, torch.ones_like(flat), flat)
        idx = torch.multinomial(flat, self.k, replacement=True, generator=self.generator)  # (N, k)
        counts = torch.zeros_like(flat).scatter_add_(-1, idx, torch.ones_like(idx, dtype=flat.dtype))
        counts = counts.masked_fill(empty, 0.0) / self.k
        log_prob = logp.reshape(-1, tk).gather(-1, idx).sum(-1).masked_fill(empty.squeeze(-1), 0.0)
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
