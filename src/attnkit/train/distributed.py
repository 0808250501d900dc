"""Training on several processes with ``torch.distributed``: ``torchrun --nproc-per-node N -m
attnkit train ...`` starts N copies of the command, and each one calls :func:`init`.

The run's batches are *global*: ``batch_size`` (or ``batch_tokens``) counts the examples of one
optimizer step over all processes, and every process builds the same seeded list of them. Process
``rank`` of ``world`` takes rows ``rank, rank + world, ...`` of each batch (:func:`shard`) and
weights its loss by its share of the batch's loss denominator (its target tokens, or examples), so
that ``DistributedDataParallel``'s mean of the gradients is the gradient of the whole batch's mean
loss: the same step as one process on the whole batch, to float rounding.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import AttentionError

__all__ = ["active", "finish", "init", "is_main", "rank", "run", "shard", "world_size"]


def active() -> bool:
    """Whether this process belongs to a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes checkpoints, history and progress."""
    return rank() == 0


def init(device: str = "cpu") -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): gloo on the CPU, NCCL on CUDA.
    Without torchrun (no ``WORLD_SIZE`` above 1) nothing happens. Returns the device this process
    trains on: ``cpu``, or ``cuda:LOCAL_RANK``."""
    if device not in ("cpu", "cuda"):
        raise AttentionError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise AttentionError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    here = torch.device("cuda", local) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(here)
    if world > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise AttentionError("this torch build has no torch.distributed; train with one process")
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return here


def finish() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run(fn, device: str = "cpu"):
    """``fn(device)`` inside :func:`init` / :func:`finish`: one process of a torchrun job, or the
    only one; the process group is torn down also when ``fn`` raises."""
    dev = init(device)
    try:
        return fn(dev)
    finally:
        finish()


def _rows(batch, index):
    if isinstance(batch, Tensor):
        return batch[index]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_rows(x, index) for x in batch)
    return batch


def _count(batch) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0]
    return next(n for n in map(_count, batch) if n is not None) if isinstance(batch, (tuple, list)) else None


def shard(batch, weigh, rank: int, world: int):
    """This process's part of the global ``batch`` (a tensor or nested tuples of tensors, rows
    first) and the share of the batch's loss denominator it carries (``weigh(batch) -> int``).
    A process left without rows (a batch smaller than the world) computes on the first row with
    share 0, so that it still joins the gradient exchange."""
    if world == 1:
        return batch, 1.0
    rows = _count(batch)
    index = torch.arange(rank, rows, world)
    part = _rows(batch, index)
    if len(index) == 0:
        return _rows(batch, torch.arange(0, 1)), 0.0
    total = weigh(batch)
    return part, (weigh(part) / total if total else 0.0)
