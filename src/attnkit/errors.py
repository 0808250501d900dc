"""The one error type of attnkit, and the checks that raise it.

Every message names the argument, the shape (or value) it got, and what was expected, so that a
user can fix the call without reading the source.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["AttentionError", "check_rank", "shape_str"]


class AttentionError(ValueError):
    """Bad input to an attnkit function or module (a ``ValueError``)."""


def shape_str(shape: Sequence[int] | torch.Size) -> str:
    """``(2, 5, 8)`` (or ``(8,)``) for a shape: the form every message uses."""
    return str(tuple(int(s) for s in shape))


def check_rank(name: str, x: Tensor, min_rank: int, expected: str) -> None:
    """Raise unless ``x`` has at least ``min_rank`` dims; ``expected`` is the shape in the legend."""
    if not isinstance(x, Tensor):
        raise AttentionError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() < min_rank:
        raise AttentionError(f"{name} has shape {shape_str(x.shape)} but expected {expected}")

