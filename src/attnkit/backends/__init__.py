"""Fast paths: registered alternatives to the reference, and the dispatch between them.

``attnkit.attention`` runs the first backend in :data:`BACKENDS` that supports the call;
:func:`explain` says which one and why. Each backend lives in its own module here and registers
itself on import; the eager reference in :mod:`attnkit.core.functional` is the specification.
"""

from .registry import BACKENDS, Backend, Choice, attention, choose, explain, prefer, register

# each registers itself on import
from . import additive, banded, blocksparse, flex, sdpa, topk, triton_additive  # noqa: E402, F401  (isort: skip)

# the order automatic dispatch tries them in: the most specialised first, the reference last
prefer("additive_triton", "banded", "additive_fused", "topk_gather", "flex", "blocksparse", "sdpa")

__all__ = ["BACKENDS", "Backend", "Choice", "attention", "choose", "explain", "prefer", "register"]
