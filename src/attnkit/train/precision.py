"""Mixed precision for training and inference: ``fp32`` (none), ``bf16`` (CPU or CUDA) and ``fp16``
(CUDA only, with a gradient scaler).

Parameters, optimizer state and checkpoints stay float32; only the forward computation runs under
``torch.autocast`` in the lower dtype (its matmuls, convolutions, RNNs and attention, see
:func:`attnkit.core.functional.prepare`), and the backward pass follows it. bfloat16 has float32's
range, so it needs no loss scaling; float16 does, and gets a ``torch.amp.GradScaler``.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import AttentionError

__all__ = ["PRECISIONS", "autocast", "check", "scaler"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # name -> autocast dtype


def check(precision: str, device: torch.device | str = "cpu") -> None:
    """Raise unless ``precision`` is a known name that runs on ``device``."""
    if precision not in PRECISIONS:
        raise AttentionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise AttentionError("precision fp16 needs a CUDA device (its gradients need loss scaling); on a CPU use bf16")


def autocast(precision: str, device: torch.device | str = "cpu"):
    """The context that runs a forward pass in ``precision`` on ``device`` (nothing for fp32)."""
    check(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=PRECISIONS[precision])


def scaler(precision: str, device: torch.device | str = "cpu") -> torch.amp.GradScaler:
    """A gradient scaler, enabled for fp16 only (disabled, it passes the loss and the step through)."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
