"""Train and test the classifiers side by side on the WordNet tasks, and write the results table.

    OMP_NUM_THREADS=1 python benchmarks/classify/compare.py [--epochs 6] [--out runs/classify] [--only NAME ...]

Every model of a task sees the same data, batches, seed, schedule and number of epochs, and is
tested on the task's test split. A run folder that already has a best checkpoint is evaluated, not
retrained (its row gives the epochs it was trained with). Results: ``benchmarks/classify/results.md``
and ``.json``. The README's table: ``--epochs 6`` for the gloss and document rows, ``--epochs 8 --only
pair`` for the pair rows, then one run without ``--only`` to test every model.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

VECTORS = ["--vectors", "minilm", "--freeze-vectors"]  # pretrained, fixed word vectors
RNN_ATTENTION = ["--model", "rnn", "--pooling", "attention"]
RUNS = {
    "gloss: rnn, last state": ["--task", "gloss", "--model", "rnn", "--pooling", "last"],
    "gloss: rnn, mean": ["--task", "gloss", "--model", "rnn", "--pooling", "mean"],
    "gloss: rnn, max": ["--task", "gloss", "--model", "rnn", "--pooling", "max"],
    "gloss: rnn, attention pooling": ["--task", "gloss", *RNN_ATTENTION],
    "gloss: cnn, max pooling": ["--task", "gloss", "--model", "cnn", "--pooling", "max"],
    "gloss: cnn, attention pooling": ["--task", "gloss", "--model", "cnn", "--pooling", "attention"],
    "gloss: transformer": ["--task", "gloss", "--model", "transformer"],
    "gloss: rnn, attention pooling, minilm vectors": ["--task", "gloss", *RNN_ATTENTION, *VECTORS],
    "document: rnn, last state (joined text)": ["--task", "document", "--model", "rnn", "--pooling", "last"],
    "document: rnn, attention pooling (joined text)": ["--task", "document", *RNN_ATTENTION],
    "document: cnn, max pooling (joined text)": ["--task", "document", "--model", "cnn", "--pooling", "max"],
    "document: cnn, attention pooling (joined text)": [
        "--task",
        "document",
        "--model",
        "cnn",
        "--pooling",
        "attention",
    ],
    "document: transformer (joined text)": ["--task", "document", "--model", "transformer"],
    "document: han": ["--task", "document", "--model", "han"],
    "document: rnn, attention pooling (joined text), minilm vectors": ["--task", "document", *RNN_ATTENTION, *VECTORS],
    "document: han, minilm vectors": ["--task", "document", "--model", "han", *VECTORS],
    "pair: bcnn (no attention)": ["--task", "pair", "--model", "bcnn"],
    "pair: abcnn1": ["--task", "pair", "--model", "abcnn1"],
    "pair: abcnn2": ["--task", "pair", "--model", "abcnn2"],
    "pair: abcnn3": ["--task", "pair", "--model", "abcnn3"],
    "pair: bcnn (no attention), minilm vectors": ["--task", "pair", "--model", "bcnn", *VECTORS],
    "pair: abcnn1, minilm vectors": ["--task", "pair", "--model", "abcnn1", *VECTORS],
    "pair: abcnn2, minilm vectors": ["--task", "pair", "--model", "abcnn2", *VECTORS],
    "pair: abcnn3, minilm vectors": ["--task", "pair", "--model", "abcnn3", *VECTORS],
}


def attnkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "attnkit", *args], check=True)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def frozen_size(run: Path) -> int:
    """Entries of the run's embedding table (frozen with ``--freeze-vectors``)."""
    from safetensors import safe_open

    with safe_open(str(run / "best.safetensors"), "pt") as f:
        return math.prod(f.get_slice("model.embed.weight").get_shape())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default="runs/classify")
    parser.add_argument("--only", action="append")
    args = parser.parse_args()
    here = Path(__file__).parent
    for name, flags in RUNS.items():
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        run = Path(args.out) / slug(name)
        if not (run / "best.safetensors").exists():
            attnkit("train", "classify", *flags, "--epochs", str(args.epochs), "--out", str(run), "--no-progress")
        attnkit("eval", str(run), "--json", str(run / "test.json"))
        figures = json.loads((run / "test.json").read_text())
        history = json.loads((run / "history.json").read_text())
        trained = json.loads((run / "config.json").read_text())  # the epochs it was given, whoever ran it
        path = here / "results.json"
        results = json.loads(path.read_text()) if path.exists() else {}  # re-read: runs may be parallel
        results[name] = {
            **figures,
            "command": "attnkit train classify " + " ".join(flags + ["--epochs", str(trained["train"]["epochs"])]),
            "trained_parameters": figures["parameters"]
            - (frozen_size(run) if trained["task"].get("freeze_vectors") else 0),
            "epochs": len(history),
            "train_seconds": history[-1]["elapsed_s"],
        }
        path.write_text(json.dumps(results, indent=2) + "\n")
        (here / "results.md").write_text(table(results))


def table(results: dict) -> str:
    rows = [
        "| task: model | parameters (trained) | test accuracy % | F1 % | MAP % | training |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in sorted(results, key=list(RUNS).index):
        r = results[name]
        f1 = f"{r['f1']:.2f}" if "f1" in r else ""
        map_ = f"{r['map']:.2f}" if "map" in r else ""
        rows.append(
            f"| {name} | {r['parameters']:,} ({r['trained_parameters']:,}) | {r['accuracy']:.2f} | {f1} | {map_} | "
            f"{r['epochs']} epochs, {r['train_seconds'] / 60:.1f} min |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
