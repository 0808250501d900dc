"""Time and peak memory of one contender's step.

Steady state (:func:`find_steady`, the one definition every benchmark of attnkit uses): a run of
repeated steps has reached its steady state when a step costs what the run's last steps cost. The
steady figure is the median of those last steps (by default the later half of the run); the first
steady step is the first whose cost is within a factor (by default 1.1: within 10%) of that median,
or, for a stricter caller, the first from which every later step is within it. Callers differ only
in what they pass: :func:`steady` (here) the step times, the later half, within 10%, and counts the
steps up to and including the first steady one; :func:`attnkit.bench.train.steady_state` the times
per padded position (its batches differ in length), its last ``steps``, within 1.25x, and counts the
steps before it; ``benchmarks/g2p/step_speed.py`` the times, the later half, within 10% from that
step on, and counts the steps before it.

Time (:func:`timing`): a freshly built contender's first step (the cold first call: whatever it
compiles, allocates or loads on first use, in a process that has run other contenders before), then
repeated steps, as many as fit in the time budget (at least 3). The steady state is the median of the
later half of the steps; the time to reach it is the number of steps up to the first one within 10%
of that median, first call included, and the time they took together.

Peak memory: in a fresh process per contender, after a warm-up step, the kernel's high-water
mark of resident memory is reset (``/proc/self/clear_refs`` <- 5) and read back after one step
(``VmHWM``), minus the resident memory before it: what the step itself added at its peak. The
process runs with a fixed glibc mmap threshold, so every large block is returned to the system
when freed (by default glibc raises the threshold after large frees and keeps such blocks
resident, which would hide the step's allocations inside the warm-up's).
Run as ``python -m attnkit.bench.measure CASE SIZES_JSON CONTENDER BACKWARD``, it prints that
number of bytes as JSON.

Every report says what it ran on with :func:`machine` and writes bytes with :func:`fmt_mib`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .cases import CASES, Step

STEADY_WITHIN = 0.10  # a step within 10% of the steady median has reached the steady state


@dataclass
class Timing:
    """One contender's steps, cold to steady: seconds."""

    first_s: float  # the cold first call
    steady_s: float  # median of the later half of the steps
    steps_to_steady: int | None  # steps up to the first within STEADY_WITHIN of steady_s (first call = 1)
    to_steady_s: float | None  # their total time
    steps: int  # steps run, first call included


def find_steady(
    costs: Sequence[float], last: int | None = None, within: float = 1 + STEADY_WITHIN, settled: bool = False
) -> tuple[float, int]:
    """The steady state of a run of steps, from each step's cost (seconds, or seconds per position):
    ``(median, first)``. ``median`` is the median cost of the ``last`` steps (default: the later
    half, ``costs[len(costs) // 2:]``); ``first`` is the index of the first steady step, which is
    also the number of steps before it: the first whose cost is at most ``within`` x ``median``
    (``settled=True``: the first from which every later cost is), ``len(costs)`` if there is none.

    >>> find_steady([2.0, 0.5, 0.3, 0.105, 0.1, 0.1, 0.1, 0.11])  # median 0.1; 0.105 is within 10%
    (0.1, 3)
    >>> find_steady([2.0, 0.1, 0.1, 0.1, 0.2, 0.1], settled=True)  # 0.2 is not: steady from index 5
    (0.1, 5)
    """
    last = len(costs) - len(costs) // 2 if last is None else last
    median = statistics.median(costs[len(costs) - last :])
    if settled:
        first = next((i for i in range(len(costs)) if max(costs[i:]) <= within * median), len(costs))
    else:
        first = next((i for i, c in enumerate(costs) if c <= within * median), len(costs))
    return median, first


def steady(times: list[float]) -> Timing:
    """The cold first call, the steady state and the time to reach it, from a run's step times
    (:func:`find_steady` over the later half, within ``STEADY_WITHIN``; the first steady step counts)."""
    median, first = find_steady(times)
    reached = first if first < len(times) else None
    return Timing(
        first_s=times[0],
        steady_s=median,
        steps_to_steady=None if reached is None else reached + 1,
        to_steady_s=None if reached is None else sum(times[: reached + 1]),
        steps=len(times),
    )


def timing(factory: Callable[[], Step], backward: bool, budget_s: float, max_steps: int = 50) -> Timing:
    """Build a fresh contender and time its first step and the ones after it (see the module docstring)."""
    step = factory()
    times: list[float] = []
    while len(times) < 4 or (sum(times[1:]) < budget_s and len(times) < max_steps):
        start = time.perf_counter()
        step(backward)
        times.append(time.perf_counter() - start)
    return steady(times)


def time_step(step: Step, backward: bool, budget_s: float) -> float:
    """Median seconds of one step, after a warm-up step."""
    return timing(lambda: step, backward, budget_s).steady_s


def cpu_model() -> str | None:
    """The CPU's model name as ``/proc/cpuinfo`` gives it; None where it gives none (not Linux, some ARM)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def machine(model_name: bool = True) -> dict:
    """What a benchmark ran on: the ``torch`` version, its intra-op ``threads``, the ``cpu`` (its model
    name where known and ``model_name``, else the platform's processor or architecture) and ``cores``."""
    cpu = (cpu_model() if model_name else None) or platform.processor() or platform.machine()
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu, "cores": os.cpu_count()}


def fmt_mib(size: int | None, digits: int = 0) -> str:
    """Bytes as MiB (2**20 bytes) with ``digits`` decimals; "-" for None (not measured).

    >>> fmt_mib(3 * 2**20), fmt_mib(None), fmt_mib(2**19, 2)
    ('3', '-', '0.50')
    """
    return "-" if size is None else f"{size / 2**20:.{digits}f}"


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
