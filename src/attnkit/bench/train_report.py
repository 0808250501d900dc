"""The training benchmark's report (:func:`attnkit.bench.train.run`, ``merge``) as Markdown tables
and files: ``STEM.md`` and ``STEM.json``."""

from __future__ import annotations

import json
from pathlib import Path

from .measure import fmt_mib

__all__ = ["markdown", "write"]


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown(report: dict) -> str:
    """The report as tables: one per mode, then the profiles."""
    m, s = report["machine"], report["settings"]
    lines = [
        (
            f"## attnkit training and decoding benchmark: torch {m['torch']}, {m['threads']} threads, "
            f"{m['cpu']} ({m['cores']} cores), float32"
        ),
        "",
        (
            f"Batches of {s['batch_size']} CMUdict training words (the trainer's batches, seed {s['seed']}); "
            f"1 cold step + {s['warmup']} warm-up + {s['steps']} timed steps; {s['decode_words']} validation "
            f"words decoded greedy and with beam {s['beam']}, exactly {s.get('decode_steps')} steps each "
            "(EOS ruled out before: untrained models' output lengths do not set the speed; two passes: cold, "
            "steady). Ratios: the other's "
            "time / attnkit's for the same steps or the same pass (> 1: attnkit faster). Peak memory: quiet, "
            "one step (train) or one batch of beam search, in a fresh process."
        ),
        "",
    ]
    by = {(r["kind"], r["mode"], r["versus"]): r for r in report["ratios"]}
    modes = list(dict.fromkeys(r["mode"] for r in report["rows"]))
    peaks = {(r["kind"], r["contender"]): r for r in report["rows"] if r["peak_train"] is not None}
    for mode in modes:
        lines += [
            f"### {mode}",
            "",
            (
                "| kind | contender | params | train tokens/s | step ms | cold first step ms (x steady) | to steady s (steps) "
                "| attnkit faster, train | greedy words/s (cold pass) | beam words/s (cold pass) "
                "| attnkit faster, greedy / beam | peak MB train / beam | load | note |"
            ),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in report["rows"]:
            if r["mode"] != mode:
                continue
            t, g, b = r["train"], r["greedy"], r["beam"]
            ratio = by.get((r["kind"], mode, r["contender"]), {})
            p = peaks.get((r["kind"], r["contender"]), {})
            cells = [r["kind"], r["contender"], f"{r['params']:,}" if r["params"] else "-"]
            if t:
                cells += [f"{t['tokens_per_s']:.0f}", f"{t['steady_step_s'] * 1e3:.0f}",
                          f"{t['cold_s'] * 1e3:.0f} ({t['cold_x']:.1f}x)",
                          f"{t['to_steady_s']:.2f} ({t['steps_to_steady']})", _x(ratio.get("train"))]  # fmt: skip
            else:
                cells += ["-"] * 5
            for d in (g, b):
                cells.append(f"{d['words_per_s']:.0f} ({d['cold_words_per_s']:.0f})" if d else "-")
            cells.append(f"{_x(ratio.get('greedy'))} / {_x(ratio.get('beam'))}" if ratio else "-")
            cells.append(f"{fmt_mib(p.get('peak_train'))} / {fmt_mib(p.get('peak_beam'))}")
            cells += [r["load"], r["note"]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if report["profiles"]:
        lines += ["### Where a steady training step's time goes (torch.profiler, self CPU time, quiet)", ""]
        for name, ops in report["profiles"].items():
            top = ", ".join(f"{o['op']} {o['self_ms_per_step']:.0f} ms ({o['share']:.0%}, {o['calls_per_step']:.0f} calls)"
                            for o in ops)  # fmt: skip
            lines.append(f"- **{name}**: {top}")
        lines.append("")
    return "\n".join(lines)


def write(report: dict, out: Path, stem: str = "train") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report))
