"""One process-wide pool of worker threads that walk a fast path's blocks, each on one core.

A fast path that cuts a call into independent blocks (the additive tiles: rows × queries) hands them to
:func:`walk` with the function that computes one block. Blocks must write disjoint slices of their
outputs, or accumulate into per-worker buffers (indexed by the ``worker`` argument) summed afterwards.
The pool's threads are created on first use and reused by every later call, of any backend.

Used by ``additive_fused`` (:mod:`attnkit.backends.additive`) forward and backward.

>>> out = [0] * 6
>>> def square(i, worker):
...     out[i] = i * i
>>> walk(square, [(i,) for i in range(6)], workers=2)
>>> out
[0, 1, 4, 9, 16, 25]
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["walk"]

_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def walk(block: Callable[..., None], blocks: Sequence[tuple], workers: int = 0) -> None:
    """Run ``block(*item, worker)`` for every item of ``blocks``, on ``workers`` threads of one intra-op thread
    each (0: torch's intra-op thread count; never more than there are blocks). ``worker`` is the index,
    0 .. workers - 1, of the thread running the block: worker 0 is the calling thread.

    A block's ops are small (an additive tile's: a few MB); split over torch's OpenMP team, each ends in a
    barrier where the team's threads spin, then sleep, until the slowest arrives. When another process
    holds a core, that thread waits a scheduler slice (milliseconds) at every op: thousands of ops per call
    made the additive tiles 25x to 100x slower than on a quiet machine. Here each worker takes whole blocks
    from a shared queue, running their ops on its own thread alone, and the workers meet once, at the end:
    a busy core only slows the worker on it, and the others take more blocks. The calling thread is one of
    the workers.
    """
    global _pool, _pool_size
    workers = max(1, min(workers or torch.get_num_threads(), len(blocks)))
    threads = torch.get_num_threads()
    if workers == 1 and threads == 1:
        for item in blocks:
            block(*item, 0)
        return
    queue = iter(blocks)
    lock = threading.Lock()
    failed: list[BaseException] = []

    def drain(worker: int) -> None:
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)  # this thread's OpenMP team (and torch's default for new threads)
        while not failed:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            try:
                block(*item, worker)
            except BaseException as err:  # noqa: BLE001  re-raised in the calling thread
                failed.append(err)

    try:
        if workers > 1:
            if _pool_size < workers - 1:
                _pool, _pool_size = ThreadPoolExecutor(workers - 1, "attnkit-workers"), workers - 1
            helpers = [_pool.submit(drain, w) for w in range(1, workers)]
        drain(0)
        if workers > 1:
            for h in helpers:
                h.result()
    finally:
        torch.set_num_threads(threads)  # the calling thread's team back, and torch's default for new threads
    if failed:
        raise failed[0]
