"""``capture(model)``: record the attention weights of every attnkit module inside any model.

    with attnkit.capture(model) as rec:
        model(x)
    rec["encoder.0.attn"]  # the weights of that module's last call

The model runs exactly as it would without the recorder, fast paths included: a module records
its attention's inputs (queries, keys, masks, score parameters) and the weights are recomputed on
the reference path only when they are read. Modules whose weights are random draws (``sample``,
``gumbel``) cannot be recomputed; they hand over the weights of the real call instead.

A recorder sees only the calls made by the thread that opened it: a model run by another thread
at the same time (a server, a data-loader worker) records nothing into it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..core.normalizers import Gumbel, Sample
from ..errors import AttentionError

__all__ = ["Recorder", "capture"]


class _Active(threading.local):
    """Per thread: the recorders inside a ``with capture(...)`` block of that thread, innermost last."""

    def __init__(self):
        self.recorders: list[Recorder] = []


_ACTIVE = _Active()


def is_random(normalize) -> bool:
    """Weights of these normalizers are draws: recomputing them would draw again."""
    return isinstance(normalize, (Sample, Gumbel))


def recording(module: nn.Module) -> bool:
    """Whether a live recorder watches ``module``; modules call this before paying for a record."""
    return any(module in r._names for r in _ACTIVE.recorders)


def record(module: nn.Module, weights: Tensor | Callable[[], Tensor]) -> None:
    """Hand one call's weights, or a function that recomputes them, to every recorder watching."""
    for r in _ACTIVE.recorders:
        name = r._names.get(module)
        if name is not None:
            r._calls.setdefault(name, []).append(weights)


class Recorder:
    """The weights recorded per module name, in call order. ``rec[name]`` is the last call's
    weights: (B, H, Tq, Tk) for ``MultiHeadAttention`` (every head, never averaged), (B, Tq, Tk)
    for ``Attention`` ((B, Tk) for a one-step query). ``rec.calls(name)`` lists every call."""

    def __init__(self, model: nn.Module):
        self._names = {m: name for name, m in model.named_modules() if hasattr(m, "_capture_inputs")}
        self._calls: dict[str, list] = {}
        if not self._names:
            raise AttentionError(f"{type(model).__name__} contains no attnkit attention module to capture")

    @property
    def modules(self) -> list[str]:
        """Names of the attnkit attention modules inside the model, in model order."""
        return list(self._names.values())

    def names(self) -> list[str]:
        """Names of the modules that ran while recording, in model order."""
        return [n for n in self._names.values() if n in self._calls]

    def calls(self, name: str) -> list[Tensor]:
        if name not in self._calls:
            ran = self.names()
            raise AttentionError(
                f"no weights recorded for {name!r}; recorded: {ran if ran else 'none (did the model run?)'}"
            )
        calls = self._calls[name]
        for i, c in enumerate(calls):
            if callable(c):
                with torch.no_grad():
                    calls[i] = c()  # recomputed once, on first read
        return calls

    def __getitem__(self, name: str) -> Tensor:
        return self.calls(name)[-1]

    def __contains__(self, name: str) -> bool:
        return name in self._calls

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, Tensor]]:
        return [(n, self[n]) for n in self.names()]

    def clear(self) -> None:
        self._calls.clear()


@contextmanager
def capture(model: nn.Module) -> Iterator[Recorder]:
    """Record, by module name, the weights of every attnkit attention module inside ``model``
    while the block runs; the model's outputs are unchanged."""
    rec = Recorder(model)
    _ACTIVE.recorders.append(rec)
    try:
        yield rec
    finally:
        _ACTIVE.recorders.remove(rec)
