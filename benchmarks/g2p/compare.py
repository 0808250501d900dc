"""Train and test the G2P models side by side in one harness, and write the results table.

    OMP_NUM_THREADS=1 python benchmarks/g2p/compare.py [--epochs 3] [--out runs/compare] [--only NAME ...]

Every model of MODELS sees the same data, batches, seed, schedule and number of epochs; the
shipped model (the default configuration, 12 epochs) is trained by the same command in its own
folder. Each is then evaluated on the whole test split with beam 5. A run folder that already has
a best checkpoint is evaluated, not retrained. Results: ``benchmarks/g2p/results.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

MODELS = {
    "rnn, no attention": ["--attention", "none"],
    "rnn, Bahdanau": ["--attention", "bahdanau"],
    "rnn, Luong general": ["--attention", "luong-general"],
    "rnn, Luong local-p": ["--attention", "local-p"],
    "transformer": ["--model", "transformer", "--ff-dim", "512", "--lr", "1e-3"],
}
# the shipped model: the default configuration trained longer, in its own folder
SHIPPED = {"rnn, Luong general, 12 epochs (shipped)": (["--epochs", "12"], "runs/g2p-main")}


def attnkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "attnkit", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--only", action="append")
    args = parser.parse_args()
    here = Path(__file__).parent
    results_path = here / "results.json"
    runs = {
        name: (flags + ["--epochs", str(args.epochs)], Path(args.out) / slug(name)) for name, flags in MODELS.items()
    }
    runs.update({name: (flags, Path(run)) for name, (flags, run) in SHIPPED.items()})
    for name, (flags, run) in runs.items():
        if args.only and name not in args.only:
            continue
        if not (run / "best.safetensors").exists():
            attnkit("train", "g2p", *flags, "--out", str(run), "--no-progress")
        attnkit("eval", str(run), "--beam", "5", "--json", str(run / "test.json"))
        figures = json.loads((run / "test.json").read_text())
        history = json.loads((run / "history.json").read_text())
        results = json.loads(results_path.read_text()) if results_path.exists() else {}  # re-read: runs may be parallel
        results[name] = {
            **figures,
            "command": "attnkit train g2p " + " ".join(flags),
            "epochs": len(history),
            "train_seconds": history[-1]["elapsed_s"],
            "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        }
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        (here / "results.md").write_text(table(results))


def slug(name: str) -> str:
    return name.replace(", ", "-").replace(" ", "-").lower()


def table(results: dict) -> str:
    rows = [
        "| model | parameters | WER % | PER % | WER % (no stress) | PER % (no stress) | training | words/s greedy / beam 5 |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    order = [*MODELS, *SHIPPED]
    for name, r in sorted(results.items(), key=lambda item: order.index(item[0])):
        rows.append(
            f"| {name} | {r['parameters']:,} | {r['wer']:.2f} | {r['per']:.2f} | {r['wer_nostress']:.2f} | "
            f"{r['per_nostress']:.2f} | {r['epochs']} epochs, {r['train_seconds'] / 60:.1f} min, {r['hardware']} | "
            f"{r.get('words_per_s_greedy', float('nan')):.0f} / {r['words_per_s']:.0f} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
