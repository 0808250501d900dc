"""Backends: registered implementations of one attention call, and the dispatch between them.

Every backend has one signature, ``run(call: Call) -> AttentionResult``, and says whether it can
take a call with ``supports(call) -> None`` (yes) or a one-line reason (no), and, for automatic
dispatch only, whether it pays off with ``worthwhile(call)`` (same convention). The eager
:func:`~attnkit.core.functional.reference` is one of them, takes every call, and is the
specification the others are tested against.

Dispatch (``backend="auto"``) tries the registered backends in order of preference and runs the
first that supports the call; ``backend="NAME"`` forces one, and raises if it cannot take the call.
:func:`explain` says which backend a call would use and why each other was passed over; the
logger ``attnkit.backends`` says the same at DEBUG level on every call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.functional import AttentionResult, Call, prepare, reference
from ..core.nonfinite import guarded
from ..errors import AttentionError

__all__ = ["Backend", "BACKENDS", "register", "prefer", "choose", "explain", "attention", "Choice"]

log = logging.getLogger("attnkit.backends")


def _always(call: Call) -> None:
    return None


@dataclass(frozen=True)
class Backend:
    name: str
    run: Callable[[Call], AttentionResult]
    supports: Callable[[Call], str | None]  # None: can run the call; else why not
    summary: str  # one line: what this backend is for
    worthwhile: Callable[[Call], str | None] = _always  # auto dispatch only: None, or why not here
    gqa: bool = False  # takes grouped key/value heads (Call.kv_groups > 1) as they are

    def reason(self, call: Call, forced: bool = False) -> str | None:
        """Why this backend would not run ``call`` (None: it would)."""
        call = call if self.gqa else call.expand_kv(shape_only=True)
        return self.supports(call) or (None if forced else self.worthwhile(call))

    def __call__(self, call: Call) -> AttentionResult:
        """Run ``call``; a backend without grouped-query support gets key/value repeated to H heads."""
        return self.run(call if self.gqa else call.expand_kv())

    def __repr__(self) -> str:
        return f"Backend({self.name!r}: {self.summary})"


BACKENDS: dict[str, Backend] = {}  # in order of preference; "reference" is always last


def register(
    name: str,
    run: Callable[[Call], AttentionResult],
    supports: Callable[[Call], str | None],
    summary: str,
    worthwhile: Callable[[Call], str | None] = _always,
    *,
    gqa: bool = False,
) -> None:
    """Add a backend, tried after those already registered (the reference stays last); see :func:`prefer`.

    ``gqa=True``: the backend takes grouped-query calls (key/value with H / ``call.kv_groups`` heads)
    as they are; the others see key and value repeated to the query's heads.
    """
    ref = BACKENDS.pop("reference", None)
    run = run if run is reference else guarded(run)  # the reference's non-finite rule; it applies it itself
    BACKENDS[name] = Backend(name, run, supports, summary, worthwhile, gqa)
    if ref is not None:
        BACKENDS["reference"] = ref


def prefer(*names: str) -> None:
    """Reorder :data:`BACKENDS`: these names first, in this order; the others after; the reference last."""
    order = [n for n in names if n in BACKENDS] + [n for n in BACKENDS if n not in names]
    order.remove("reference")
    reordered = {n: BACKENDS[n] for n in [*order, "reference"]}
    BACKENDS.clear()
    BACKENDS.update(reordered)


register("reference", reference, _always, "eager score -> normalize -> aggregate; the specification")


@dataclass(frozen=True)
class Choice:
    """Which backend a call goes to, and why each preferred one was passed over."""

    backend: str
    passed_over: dict[str, str]  # backend name -> reason

    def __str__(self) -> str:
        lines = [f"backend: {self.backend}"]
        lines += [f"  not {name}: {reason}" for name, reason in self.passed_over.items()]
        return "\n".join(lines)


def choose(call: Call, backend: str = "auto") -> Choice:
    """The backend that runs ``call``: the first that supports it, or the forced one."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise AttentionError(f"backend={backend!r} is unknown; expected 'auto' or one of {list(BACKENDS)}")
        reason = BACKENDS[backend].reason(call, forced=True)
        if reason is not None:
            raise AttentionError(f"backend={backend!r} cannot run this call: {reason}")
        return Choice(backend, {})
    passed = {}
    for name, candidate in BACKENDS.items():
        reason = candidate.reason(call)
        if reason is None:
            return Choice(name, passed)
        passed[name] = reason
    raise AssertionError("the reference backend supports every call")  # unreachable


def explain(query, key, value, *, backend: str = "auto", **kwargs) -> Choice:
    """Which backend ``attnkit.attention(query, key, value, **kwargs)`` would use, and why.

    >>> import torch
    >>> q = torch.randn(1, 4, 8)
    >>> print(explain(q, q, q, need_weights=True).backend)
    reference
    """
    return choose(prepare(query, key, value, **kwargs), backend)


def attention(query, key, value, *, backend: str = "auto", **kwargs) -> AttentionResult:
    """Attention(Q, K, V) = Σ_j normalize(score(q_i, k_j)) · v_j, on the fastest backend that can.

    Args:
        query: (..., Tq, Dq). key: (..., Tk, Dk). value: (..., Tk, Dv).
        score: a name in ``attnkit.SCORES`` or a :class:`~attnkit.core.scores.Score`.
        normalize: a name in ``attnkit.NORMALIZERS`` (default options) or a configured normalizer,
            e.g. ``NORMALIZERS["topk"](k=4)``.
        mask: True = may attend. A :class:`~attnkit.masks.Mask`, a bool tensor, or a float tensor
            added to the scores (-inf = blocked), broadcastable to (..., Tq, Tk).
        window: local region. ``D`` or ``(left, right)``: query i attends keys i-left..i+right
            (sliding window; Luong's local-m). With ``centre``, a symmetric ``D`` around it.
        centre: (..., Tq) centres p_t, a floating or integer tensor, for Luong's local-p: keys with
            ``|s - p_t| <= D``, weights multiplied by exp(-(s - p_t)² / (2 (D/2)²)), not renormalized.
        score_params: the score's parameters (tensors), e.g. ``{"W": W}`` for ``general``; a name
            the score does not declare raises.
        dropout: probability of zeroing a weight before aggregation (pass 0 at eval time).
        need_weights: return the weights (after masking, before dropout); else ``None``. This
            and ``enable_gqa`` are bools (a truthy ``"no"`` raises).
        scale: multiplies the scores, as SDPA's ``scale``: for ``scaled_dot`` it replaces 1/√Dk
            (so ``scaled_dot`` and ``dot`` with the same ``scale`` agree); for every other score it
            multiplies the score (a inverse temperature: for ``cosine`` it divides τ, for
            ``general``/``concat``/``additive`` it scales W/w/v). A finite number > 0, and not so
            large that the scaled query or parameter overflows (that raises: its scores would be
            inf and the weights NaN); default None (each score as its formula reads).
        enable_gqa: grouped-query / multi-query attention, as SDPA's: query (..., H, Tq, D),
            key and value (..., Hkv, Tk, D) with Hkv dividing H; query head h uses key/value head
            h // (H / Hkv). Runs on SDPA's ``enable_gqa`` when the call goes there; other backends
            see key and value repeated to H heads.
        rotary: an :class:`attnkit.positions.Rotary` (RoPE): query i is rotated at position i, key j
            at j, before the score (top-left, as the masks); for other positions (decoding after a
            cache) rotate yourself with ``rope.rotate(x, offset)``. Default None.
        softcap: a finite number > 0: the score becomes cap · tanh(score / cap) (Gemma 2), with
            ``scale`` applied inside the tanh; biases (float masks, ALiBi, T5) are added after the
            cap. Fused backends decline a capped score. Default None. See :mod:`attnkit.positions`.
        backend: "auto" (the first registered backend that supports the call) or a name in
            ``attnkit.backends.BACKENDS`` to force one; :func:`explain` says which and why.

    Returns:
        :class:`~attnkit.core.functional.AttentionResult` ``(output (..., Tq, Dv), weights (..., Tq,
        Tk) | None)``; ``.log_prob`` (..., Tq) for ``normalize="sample"``.

    A query row with no allowed key gets zero weights and a zero output, never NaN.

    >>> import torch
    >>> q, k, v = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 4)
    >>> out, w = attention(q, k, v, need_weights=True)
    >>> out.shape, w.shape
    (torch.Size([2, 3, 4]), torch.Size([2, 3, 5]))
    >>> bool(torch.allclose(w.sum(-1), torch.ones(2, 3)))
    True
    """
    call = prepare(query, key, value, **kwargs)
    choice = choose(call, backend)
    if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):  # a logger call breaks a graph
        log.debug("%s", choice)
    return BACKENDS[choice.backend](call)
