"""Train and test the G2P models side by side in one harness, and write the results table.

    OMP_NUM_THREADS=1 python benchmarks/g2p/compare.py [--epochs 3] [--out runs/compare] [--only NAME ...]

Every model of MODELS sees the same data, batches, seed, schedule and number of epochs; the
shipped recipe is trained in its own folder (SHIPPED: its flags, folder and the checkpoint chosen
on validation). Each is then evaluated on the whole test split with beam 5 (``attnkit eval
--json``): WER / PER, WER by word length and the sharpness of the decoded attention. A run folder
that already has a best checkpoint is evaluated, not retrained. The previously shipped model
(PREVIOUS) is evaluated from its file, with the training record it had; the shipped ensemble
(ENSEMBLE, packed by ensemble.py) from its file, with the training records of its members' runs
and of the runs they started from (``--init``) and learnt from (``--teacher``) summed; the ensembles
shipped before it (ENSEMBLES_BEFORE) keep their rows.
Results: ``benchmarks/g2p/results.md`` (with the peers of ``peers.json`` beside every table) and
``results.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from attnkit.bench.g2p_runs import MODELS, SHIPPED, slug

PREVIOUS = "rnn, Luong general, 12 epochs (shipped before)"  # evaluated from a copy of its file, if given
# an ensemble of runs of the recipe, chosen and packed by ensemble.py: evaluated from its file, if there
ENSEMBLE = (
    "ensemble of 3 runs of that recipe, 2 of them fine-tuned on the 3-run ensemble (distilled), int4 (shipped)",
    Path("runs/g2p-ensemble.safetensors"),
)
ENSEMBLES_BEFORE = (  # the ensembles shipped before it, oldest first: their records stay in results.json
    "ensemble of 2 runs of that recipe, int8 (shipped before)",
    "ensemble of 2 runs of that recipe fine-tuned on the 3-run ensemble (distilled), int8 (shipped before)",
)


def attnkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "attnkit", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--only", action="append")
    parser.add_argument("--previous", type=Path, help=f"a copy of the file of {PREVIOUS!r}, to evaluate it again")
    parser.add_argument("--report", action="store_true", help="only write results.md from results.json")
    args = parser.parse_args()
    here = Path(__file__).parent
    results_path = here / "results.json"
    runs = {
        name: (flags + ["--epochs", str(args.epochs)], Path(args.out) / slug(name), "best.safetensors")
        for name, flags in MODELS.items()
    }
    runs.update({name: (flags, Path(run), file) for name, (flags, run, file) in SHIPPED.items()})
    if args.previous:
        runs[PREVIOUS] = (None, args.previous.parent, args.previous.name)
    name, packed = ENSEMBLE
    if packed.exists():
        runs[name] = (None, packed.parent, packed.name)
    for name, (flags, run, file) in runs.items():
        if args.report or (args.only and name not in args.only):
            continue
        if flags is not None and not (run / "best.safetensors").exists():
            attnkit("train", "g2p", *flags, "--out", str(run), "--no-progress")
        out = run / f"test-{Path(file).stem}.json"
        attnkit("eval", str(run / file), "--beam", "5", "--json", str(out))
        figures = json.loads(out.read_text())
        results = json.loads(results_path.read_text()) if results_path.exists() else {}  # re-read: runs may be parallel
        if name == ENSEMBLE[0]:
            record = ensemble_record(run / file)
        elif flags is None:  # the previous shipped model: its training record stays
            record = {k: results[name][k] for k in ("command", "epochs", "train_seconds", "hardware")}
        else:
            history = json.loads((run / "history.json").read_text())
            record = {
                "command": "attnkit train g2p " + " ".join(flags),
                "epochs": len(history),
                "train_seconds": history[-1]["elapsed_s"],
                "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
            }
        results[name] = {**figures, **record, "checkpoint": file}
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    results = json.loads(results_path.read_text())
    (here / "results.md").write_text(table(results) + "\n" + by_length(results, peers(here)))


def ensemble_record(packed: Path) -> dict:
    """The training record of a packed ensemble: its members' runs (their history.json), summed."""
    from attnkit.train import checkpoint

    members = checkpoint.read_meta(packed)["members"]
    sources = [Path(m["source"]) for m in members]
    runs = _runs(members)
    histories = [json.loads((run / "history.json").read_text()) for run in runs]
    return {
        "command": "python benchmarks/g2p/ensemble.py " + " ".join(str(s) for s in sources),
        "epochs": " + ".join(str(len(h)) for h in histories),
        "train_seconds": sum(h[-1]["elapsed_s"] for h in histories),
        "hardware": f"{platform.machine()} CPU, 1 thread per run",
    }


def _runs(members: list[dict]) -> list[Path]:
    """The run folders that trained a packed ensemble's ``members``: theirs, and those of the
    checkpoints they started from (``init``) and learnt from (``teacher``, its members if packed)."""
    from attnkit.train import checkpoint

    found: list[Path] = []
    for m in members:
        paths = [Path(m["source"])] + [Path(m[k]["path"]) for k in ("init", "teacher") if m.get(k)]
        for path in paths:
            inner = checkpoint.read_meta(path).get("members")
            for run in [path.parent] if inner is None or path == Path(m["source"]) else _runs(inner):
                if run not in found:
                    found.append(run)
    return found


def peers(here: Path) -> list[dict]:
    """The peers' test results (peers.py), if they were run."""
    path = here / "peers.json"
    return json.loads(path.read_text())["peers"] if path.exists() else []


def _ordered(results: dict) -> list[tuple[str, dict]]:
    order = [*MODELS, PREVIOUS, *SHIPPED, *ENSEMBLES_BEFORE, ENSEMBLE[0]]
    return sorted(((n, r) for n, r in results.items() if n in order), key=lambda item: order.index(item[0]))


def by_length(results: dict, peers: list[dict]) -> str:
    """WER (stress kept / removed) per word-length bucket, and the sharpness of the decoded
    attention, for every model and peer."""
    first = next(r for r in results.values() if "by_length" in r)
    buckets = list(first["by_length"])
    rows = [
        "| model | " + " | ".join(f"{b} letters" for b in buckets) + " | one-hot steps | mean entropy (nats) |",
        "|---|" + "---:|" * (len(buckets) + 2),
    ]
    for name, r in _ordered(results):
        if "by_length" not in r:  # evaluated before by_length existed: not re-run
            continue
        cells = " | ".join(f"{r['by_length'][b]['wer']:.2f} / {r['by_length'][b]['wer_nostress']:.2f}" for b in buckets)
        a = r.get("attention")
        sharp = "- | -" if a is None else f"{100 * a['saturated']:.1f}% | {a['entropy']:.3f}"
        rows.append(f"| {name} | {cells} | {sharp} |")
    for p in peers:
        b = p["test"]["by_length"]
        cells = " | ".join(f"{b[k]['wer']:.2f} / {b[k]['wer_nostress']:.2f}" for k in buckets)
        setting = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in p["chosen"].items())
        rows.append(f"| {p['peer']} ({setting}) | {cells} | - | - |")
    words = " | ".join(str(first["by_length"][b]["words"]) for b in buckets)
    rows.append(f"| test words in the bucket | {words} | | |")
    return (
        "WER % by word length, stress kept / removed (test, beam 5); attention over every decoded step\n\n"
        + "\n".join(rows)
        + "\n"
    )


def table(results: dict) -> str:
    rows = [
        "| model | parameters | WER % | PER % | WER % (no stress) | PER % (no stress) | training |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in _ordered(results):
        rows.append(
            f"| {name} | {r['parameters']:,} | {r['wer']:.2f} | {r['per']:.2f} | {r['wer_nostress']:.2f} | "
            f"{r['per_nostress']:.2f} | {r['epochs']} epochs, {r['train_seconds'] / 60:.1f} min, {r['hardware']} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
