"""A competing CPU-bound load, for benchmarks that must hold up when the cores are shared.

``with competing():`` starts other processes that keep the cores busy with threaded matmuls (what
another training job on the same machine does) and stops them when the block ends. Benchmarks
report their figures quiet and under this load, side by side, so that a fast path that collapses
when its threads must wait for a busy core shows it.

>>> with competing(processes=1, threads=1) as load:
...     load.alive()
True
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Load", "competing"]

# each process: matmuls of 512 x 512 on `threads` threads until killed
_BUSY = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
print("ready", flush=True)
while True:
    a = torch.tanh(a @ a)
"""


@dataclass
class Load:
    """The competing processes: ``processes`` of ``threads`` threads each."""

    procs: list[subprocess.Popen]
    threads: int

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def describe(self) -> str:
        return f"{len(self.procs)} competing process(es) x {self.threads} thread(s) of matmul"


@contextmanager
def competing(processes: int = 1, threads: int | None = None) -> Iterator[Load]:
    """Run ``processes`` CPU-bound processes (``threads`` threads each; default: every core)
    while the block runs; they are killed when it ends, also on error."""
    threads = threads or os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUSY, str(threads)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for p in procs:
            p.stdout.readline()  # "ready": torch is imported and the loop is about to start
        time.sleep(0.2)
        yield Load(procs, threads)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
