"""Choose the fast G2P model and how it decodes, on the validation split only:

    OMP_NUM_THREADS=1 python benchmarks/g2p/choose_fast.py runs/g2p-fast runs/g2p-fast2 [--tolerance 0.2]

Each candidate (a run folder's best checkpoint, chosen on valid by its training) is decoded on the
whole validation split greedily, in float32 and with int8 products (FastRNN), and with beam 5 in
float32. The model with the lowest greedy float32 WER is chosen; int8 is its default where it costs
at most --tolerance WER points (stress kept) against float32 on valid, and greedy is its search
(the speed goal). Writes fast.json and fast.md beside this file; then ship the choice with
``ship.py --name fast --beam 1 [--int8]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from attnkit.bench.g2p_tools import decoding_name, valid_scores
from attnkit.bench.measure import cpu_model
from attnkit.tasks.g2p import G2P

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders or checkpoints")
    parser.add_argument("--tolerance", type=float, default=0.2, help="WER points int8 may cost on valid")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        for beam, int8 in ((1, False), (1, True), (5, False)):
            g2p = G2P.load(run, int8=int8)
            rows.append({"run": run, "path": g2p.path, "parameters": g2p.parameters(), **valid_scores(g2p, beam)})
            print(json.dumps(rows[-1]), flush=True)
    greedy = [r for r in rows if r["beam"] == 1 and not r["int8"]]
    best = min(greedy, key=lambda r: r["wer"])
    int8 = next(r for r in rows if r["run"] == best["run"] and r["beam"] == 1 and r["int8"])
    chosen = {"run": best["run"], "beam": 1, "int8": int8["wer"] <= best["wer"] + args.tolerance}
    doc = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "tolerance": args.tolerance,
        "rows": rows,
        "chosen": chosen,
    }
    (HERE / "fast.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "# The fast G2P model, chosen on the validation split (6,303 words)",
        "",
        f"Written by `benchmarks/g2p/choose_fast.py`, one thread, {doc['cpu']}. words/s: this run's decoding",
        "only (the machine may have been shared: read `inference.md` for speed).",
        "",
        "| run | decoding | parameters | WER % | PER % | WER % no stress | PER % no stress | words/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        how = decoding_name(r["beam"], r["int8"])
        lines.append(
            f"| `{r['run']}` | {how} | {r['parameters']:,} | {r['wer']:.2f} | {r['per']:.2f} | {r['wer_nostress']:.2f} | "
            f"{r['per_nostress']:.2f} | {r['words_per_s']:,.0f} |"
        )
    kept = "int8" if chosen["int8"] else "float32"
    lines += [
        "",
        (
            f"**Chosen:** `{chosen['run']}`, greedy, {kept} (int8 kept where it costs at most {args.tolerance} WER "
            f"points on valid: {int8['wer']:.2f}% against {best['wer']:.2f}%)."
        ),
    ]
    (HERE / "fast.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
