"""``attnkit bench``: each kind of attention side by side with its baselines, in one run.

Results are ratios measured in the same process (time) or the same run (memory), with the sizes
printed beside them: ``x faster`` = the other's median time / attnkit's, ``x less memory`` = the
other's peak / attnkit's. Absolute times on shared machines are noise; the ratios are the result.

Each contender is timed from its cold first call to its steady state (:func:`measure.timing`), on a
quiet machine and again with a competing CPU-bound load on the same cores
(:func:`contention.competing`, ``CONTENTION``), so that a fast path that needs a warm-up or collapses
when a core is taken shows it beside its steady, quiet figure.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cases import CASES, QUICK_RUNS, RUNS
from .contention import competing
from .measure import Timing, fmt_mib, machine, peak_bytes, timing

__all__ = ["CONTENTION", "MODES", "Row", "Timing", "run"]

MODES = ("quiet", "contended")
CONTENTION = {"processes": 2, "threads": None}  # two processes of matmul on every core: load ~ 3 x cores
PASSES = {"fwd": False, "fwd+bwd": True}


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
    timings: dict[str, Timing] = field(default_factory=dict)  # "quiet fwd", "contended fwd+bwd", ...


def _ratio(other: float | None, ours: float | None) -> str:
    if not other or not ours:
        return "-"
    return f"{other / ours:.2f}x"


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.1f}"


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
                f"| {fmt_mib(r.forward_peak)} | {fmt_mib(r.train_peak)} "
                f"| {_ratio(r.train_peak, ours and ours.train_peak)} "
                f"| {r.note} |"
            )
        lines.append("")
        lines += _cold_table(group, ours)
    return "\n".join(lines)


def _cold_table(group: Sequence[Row], ours: Row | None) -> list[str]:
    """Cold first call, time to steady state and steady state, quiet and contended, with ratios."""
    timed = [r for r in group if r.timings]
    if not timed:
        return []
    lines = [
        "| contender | mode | pass | cold first ms | steps to steady | time to steady ms | steady ms "
        "| attnkit faster: first / to steady / steady | contended ÷ quiet, steady |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in timed:
        for key, t in r.timings.items():
            mode, pass_ = key.split(" ", 1)
            mine = ours.timings.get(key) if ours else None
            quiet = r.timings.get(f"quiet {pass_}")
            ratios = " / ".join(
                _ratio(getattr(t, f), mine and getattr(mine, f)) for f in ("first_s", "to_steady_s", "steady_s")
            )
            steps = "-" if t.steps_to_steady is None else f"{t.steps_to_steady} of {t.steps}"
            lines.append(
                f"| {r.contender} | {mode} | {pass_} | {_ms(t.first_s)} | {steps} | {_ms(t.to_steady_s)} "
                f"| {_ms(t.steady_s)} | {ratios} | {_ratio(t.steady_s, quiet and quiet.steady_s) if mode != 'quiet' else '-'} |"
            )
    lines.append("")
    return lines


def run(
    only: Sequence[str] | None = None,
    quick: bool = False,
    out: Path | None = None,
    memory: bool = True,
    budget_s: float | None = None,
    log=print,
    modes: Sequence[str] = MODES,
) -> list[Row]:
    """Run the cases (all, or ``only``), each in ``modes`` ("quiet", "contended"), write ``bench.md`` and ``bench.json`` into ``out``; ``"train"``
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
            case_rows = {c: Row(name, case.sizes, c, None, None, None, None) for c in case.contenders}
            for mode in modes:
                with competing(**CONTENTION) if mode == "contended" else contextlib.nullcontext():
                    for contender, factory in case.contenders.items():
                        row = case_rows[contender]
                        try:
                            for pass_, backward in PASSES.items():
                                if not row.note:
                                    row.timings[f"{mode} {pass_}"] = t = timing(factory, backward, budget_s)
                                    log(
                                        f"  {contender}, {mode} {pass_}: first {_ms(t.first_s)} ms, steady "
                                        f"{_ms(t.steady_s)} ms from step {t.steps_to_steady} of {t.steps}"
                                    )
                        except Exception as err:  # a peer that fails on these sizes is reported, not fatal
                            row.note = f"failed: {type(err).__name__}: {str(err)[:120]}"
            for contender, row in case_rows.items():
                fwd, train = (
                    next((row.timings[k] for k in (f"quiet {p}", f"contended {p}") if k in row.timings), None)
                    for p in PASSES
                )
                row.forward_s = fwd and fwd.steady_s  # the steady state, quiet where measured
                row.train_s = train and train.steady_s
                if memory and not row.note:
                    row.forward_peak = peak_bytes(name, sizes, contender, False)
                    row.train_peak = peak_bytes(name, sizes, contender, True)
                log(
                    f"  {contender}: fwd {_ms(row.forward_s)} ms, fwd+bwd {_ms(row.train_s)} ms, "
                    f"peak {fmt_mib(row.forward_peak)} / {fmt_mib(row.train_peak)} MB {row.note}"
                )
                rows.append(row)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        contention = competing_description() if "contended" in modes else "no contended runs"
        m = machine(model_name=False)
        header = (
            f"attnkit {_version()} bench{' --quick' if quick else ''}: torch {m['torch']}, "
            f"{m['threads']} threads, {m['cpu']} ({m['cores']} cores), float32, CPU; contended: {contention}"
        )
        (out / "bench.md").write_text(markdown(rows, f"## {header}"))
        (out / "bench.json").write_text(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=1))
    return rows


def competing_description() -> str:
    processes, threads = CONTENTION["processes"], CONTENTION["threads"] or os.cpu_count()
    return f"{processes} competing processes x {threads} threads of matmul"


def _version() -> str:
    from .. import __version__

    return __version__
