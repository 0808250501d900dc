"""The one error type of attnkit, and the checks that raise it.

Every message names the argument, the shape (or value) it got, and what was expected, so that a
user can fix the call without reading the source.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "AttentionError",
    "CheckpointError",
    "check_rank",
    "check_int",
    "check_bool",
    "check_probability",
    "check_float_input",
    "check_real_device",
    "shape_str",
]

MAX_INT = 2**62  # the largest size or position an argument may hold: index arithmetic stays in int64


class AttentionError(ValueError):
    """Bad input to an attnkit function or module (a ``ValueError``)."""


class CheckpointError(AttentionError):
    """A checkpoint that is missing, corrupt, foreign or whose metadata does not describe a model."""


def shape_str(shape: Sequence[int] | torch.Size) -> str:
    """``(2, 5, 8)`` (or ``(8,)``) for a shape: the form every message uses."""
    return str(tuple(int(s) for s in shape))


def check_rank(name: str, x: Tensor, min_rank: int, expected: str) -> None:
    """Raise unless ``x`` has at least ``min_rank`` dims; ``expected`` is the shape in the legend."""
    if not isinstance(x, Tensor):
        raise AttentionError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() < min_rank:
        raise AttentionError(f"{name} has shape {shape_str(x.shape)} but expected {expected}")


def check_int(name: str, value, minimum: int = 1, maximum: int = MAX_INT) -> int:
    """Raise unless ``value`` is an int (not a bool) in ``minimum`` .. ``maximum``; return it."""
    if isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum:
        return value
    lo = "-2**62" if minimum == -MAX_INT else str(minimum)
    hi = "2**62" if maximum == MAX_INT else str(maximum)
    got = (
        f"{value!r}"
        if isinstance(value, int) and not isinstance(value, bool)
        else f"{value!r} ({type(value).__name__})"
    )
    raise AttentionError(f"{name} must be an int in {lo}..{hi}, got {got}")


def check_bool(name: str, value) -> bool:
    """Raise unless ``value`` is a bool (not a truthy string, int or tensor: ``"no"`` is truthy); return it."""
    if not isinstance(value, bool):
        raise AttentionError(f"{name} must be a bool (True or False), got {value!r} ({type(value).__name__})")
    return value


def check_probability(name: str, value) -> float:
    """Raise unless ``value`` is a real number in [0, 1) (a dropout probability); return it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise AttentionError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_float_input(name: str, x: Tensor, dtype: torch.dtype | None = None, against: str = "") -> None:
    """Raise unless ``x`` is a real floating tensor (of ``dtype``, the dtype of ``against``, if given)."""
    if not x.is_floating_point():
        raise AttentionError(
            f"{name} has dtype {x.dtype} but expected a real floating dtype (float16, bfloat16, float32, "
            f"float64); convert it with .float()"
        )
    if dtype is not None and x.dtype != dtype and not _autocast_pair(x, dtype):
        raise AttentionError(
            f"{name} has dtype {x.dtype} but expected {dtype}, the dtype of {against}: convert one of them "
            f"with .to(dtype) (a module with module.to(dtype))"
        )


def check_real_device(name: str, x) -> None:
    """Raise if ``x`` is a tensor on the ``meta`` device: it has shapes but no values, and attention
    reads values (non-finite rows, masks, empty rows) besides computing them."""
    if isinstance(x, Tensor) and x.device.type == "meta":
        raise AttentionError(
            f"{name} is on the meta device, which holds no data (shape {shape_str(x.shape)}, dtype {x.dtype}); "
            f"attention reads values, so move the tensors to a real device (cpu, cuda) first"
        )


def _autocast_pair(x: Tensor, dtype: torch.dtype) -> bool:
    """Whether ``x`` and ``dtype`` are float32 and the autocast dtype of an enabled ``torch.autocast``
    on ``x``'s device: a module's float32 parameters meet its lower-precision activations there, and
    attention itself runs in the autocast dtype (:func:`attnkit.core.functional.prepare`)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return False
    return {x.dtype, dtype} == {torch.float32, torch.get_autocast_dtype(device)}
