"""``attnkit bench``: each kind of attention side by side with its baselines, in one run.

Results are ratios measured in the same process (time) or the same run (memory), with the sizes
printed beside them: ``x faster`` = the other's median time / attnkit's, ``x less memory`` = the
other's peak / attnkit's. Absolute times on shared machines are noise; the ratios are the result.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .cases import CASES, QUICK_RUNS, RUNS
from .measure import peak_bytes, time_step

__all__ = ["run", "Row"]


@dataclass
class Row:
    case: str
    sizes: dict
    contender: str
    forward_s: float | None
    train_s: float | None  # forward + backward
    forward_peak: int | None  # bytes
    train_peak: int | None
    note: str = ""


def _ratio(other: float | None, ours: float | None) -> str:
    if not other or not ours:
        return "-"
    return f"{other / ours:.2f}x"


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.1f}"


def _mb(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def markdown(rows: Sequence[Row], header: str) -> str:
    """One table per case run; ratios are against that run's attnkit row."""
    lines = [header, ""]
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(f"{r.case} {json.dumps(r.sizes)}", []).append(r)
    for title, group in groups.items():
        ours = next((r for r in group if r.contender == "attnkit"), None)
        lines += [
            f"### {group[0].case}: " + ", ".join(f"{k}={v}" for k, v in group[0].sizes.items()),
            "",
            "| contender | forward ms | fwd+bwd ms | attnkit faster, fwd | attnkit faster, fwd+bwd "
            "| fwd peak MB | fwd+bwd peak MB | attnkit less memory, fwd+bwd | note |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in group:
            lines.append(
                f"| {r.contender} | {_ms(r.forward_s)} | {_ms(r.train_s)} "
                f"| {_ratio(r.forward_s, ours and ours.forward_s)} | {_ratio(r.train_s, ours and ours.train_s)} "
                f"| {_mb(r.forward_peak)} | {_mb(r.train_peak)} | {_ratio(r.train_peak, ours and ours.train_peak)} "
                f"| {r.note} |"
            )
        lines.append("")
    return "\n".join(lines)


def run(
    only: Sequence[str] | None = None,
    quick: bool = False,
    out: Path | None = None,
    memory: bool = True,
    budget_s: float | None = None,
    log=print,
) -> list[Row]:
    """Run the cases (all, or ``only``), write ``bench.md`` and ``bench.json`` into ``out``; ``"train"``
    in ``only`` also runs :mod:`attnkit.bench.train` into ``train.md`` and ``train.json``."""
    budget_s = budget_s if budget_s is not None else (0.5 if quick else 3.0)
    runs = QUICK_RUNS if quick else RUNS
    rows: list[Row] = []
    for name in only or list(CASES):
        if name == "train":  # the training and decoding benchmark: its own report, train.md / train.json
            from . import train

            report = train.run(settings=train.QUICK if quick else train.Settings(), memory=memory, log=log)
            if out is not None:
                train.write(report, out)
            continue
        for sizes in runs[name]:
            case = CASES[name](**sizes)
            for peer, how in case.missing.items():
                rows.append(Row(name, case.sizes, peer, None, None, None, None, f"not installed: {how}"))
            log(f"{name} {case.sizes}: {', '.join(case.contenders)}")
            for contender, factory in case.contenders.items():
                row = Row(name, case.sizes, contender, None, None, None, None)
                try:
                    step = factory()
                    row.forward_s = time_step(step, False, budget_s)
                    row.train_s = time_step(step, True, budget_s)
                    del step
                except Exception as err:  # a peer that fails on these sizes is reported, not fatal
                    row.note = f"failed: {type(err).__name__}: {str(err)[:120]}"
                if memory and not row.note:
                    row.forward_peak = peak_bytes(name, sizes, contender, False)
                    row.train_peak = peak_bytes(name, sizes, contender, True)
                log(f"  {contender}: fwd {_ms(row.forward_s)} ms, fwd+bwd {_ms(row.train_s)} ms, "
                    f"peak {_mb(row.forward_peak)} / {_mb(row.train_peak)} MB {row.note}")
                rows.append(row)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        header = (
            f"attnkit {_version()} bench{' --quick' if quick else ''}: torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, float32, CPU"
        )
        (out / "bench.md").write_text(markdown(rows, f"## {header}"))
        (out / "bench.json").write_text(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=1))
    return rows


def _version() -> str:
    from .. import __version__

    return __version__
