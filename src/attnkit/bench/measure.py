"""Time and peak memory of one contender's step.

Time: a warm-up step (which also pays for any compilation), then the median of repeated steps,
as many as fit in the time budget (at least 3, or 1 when one step is slower than the budget).

Peak memory: in a fresh process per contender, after a warm-up step, the kernel's high-water
mark of resident memory is reset (``/proc/self/clear_refs`` <- 5) and read back after one step
(``VmHWM``), minus the resident memory before it: what the step itself added at its peak. The
process runs with a fixed glibc mmap threshold, so every large block is returned to the system
when freed (by default glibc raises the threshold after large frees and keeps such blocks
resident, which would hide the step's allocations inside the warm-up's).
Run as ``python -m attnkit.bench.measure CASE SIZES_JSON CONTENDER BACKWARD``, it prints that
number of bytes as JSON.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .cases import CASES, Step


def time_step(step: Step, backward: bool, budget_s: float) -> float:
    """Median seconds of one step."""
    start = time.perf_counter()
    step(backward)  # warm-up
    first = time.perf_counter() - start
    repeats = 1 if first > budget_s else max(3, min(50, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(backward)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_bytes_here(step: Step, backward: bool) -> int:
    """Peak resident memory one step adds, measured in this process (Linux only)."""
    step(backward)  # warm-up: compilation, allocator pools, lazy imports
    gc.collect()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step(backward)
    return max(0, _status_kb("VmHWM") - before) * 1024


def peak_bytes(case: str, sizes: dict, contender: str, backward: bool, timeout_s: float = 1200) -> int | None:
    """Peak memory of one step, in a fresh process; None where it could not be measured."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    cmd = [sys.executable, "-m", "attnkit.bench.measure", case, json.dumps(sizes), contender, str(int(backward))]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    return int(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str]) -> None:
    case_name, sizes, contender, backward = argv
    case = CASES[case_name](**json.loads(sizes))
    step = case.contenders[contender]()
    print(json.dumps(peak_bytes_here(step, bool(int(backward)))))


if __name__ == "__main__":
    main(sys.argv[1:])
