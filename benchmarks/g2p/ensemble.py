"""An ensemble of G2P models chosen on the validation split, packed into one int8 file for shipping.

    OMP_NUM_THREADS=1 python benchmarks/g2p/ensemble.py runs/g2p-ship2/chosen.safetensors \\
        runs/g2p-seed1 runs/g2p-seed2 --out benchmarks/g2p/ensemble

Every model alone and every ensemble of two or more of them, with each way of combining the
members (mean of probabilities, mean of log-probabilities), is scored on the whole validation split
with the shipped decoding (beam 5, alpha 0.6; WER with stress kept, the metric the trainer selects
on). Among the candidates whose int8 file (:func:`attnkit.tasks.g2p.pack`) fits the size budget,
the lowest valid WER wins (ties: fewer members, then the first listed). It is packed to PACKED
(default runs/g2p-ensemble.safetensors, where compare.py looks for it), its packed file is scored on valid once more (int8 rounding included) and only
then on the test split, beside the best single model on valid; the tables go to OUT.json and OUT.md.
Ship it with ``cp PACKED src/attnkit/pretrained/g2p.safetensors``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import torch

from attnkit.models import Ensemble
from attnkit.models.ensemble import COMBINES
from attnkit.tasks.g2p import G2P, pack

KEYS = ("wer", "per", "wer_nostress", "per_nostress")
BUDGET = 20_000_000  # bytes the shipped model may take in the package


def scored(model: G2P, split: str, limit: int | None) -> dict:
    """The figures of ``model`` on ``split``, and under ``full`` everything ``evaluate`` gives."""
    m = model.evaluate(split, beam=5, alpha=0.6, limit=limit)
    return {**{k: m[k] for k in KEYS}, "seconds": round(m["words"] / m["words_per_s"], 1), "full": m}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, help="checkpoints or run folders (their best.safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md are written")
    parser.add_argument("--packed", type=Path, default=Path("runs/g2p-ensemble.safetensors"), help="the chosen, packed")
    parser.add_argument("--budget", type=int, default=BUDGET, help="bytes the packed file may take")
    parser.add_argument("--limit", type=int, help="score N evenly spaced words of each split (a smoke run)")
    args = parser.parse_args()
    sources = [s / "best.safetensors" if s.is_dir() else s for s in args.sources]
    models = [G2P.load(s) for s in sources]
    candidates = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(1, len(sources) + 1):
            for subset in itertools.combinations(range(len(sources)), n):
                size = Path(tmp, "size.safetensors")
                pack([sources[i] for i in subset], size, storage="int8")
                for combine in COMBINES if n > 1 else (None,):
                    model = (
                        models[subset[0]]
                        if n == 1
                        else G2P(Ensemble([models[i].model for i in subset], combine), models[0].task_doc, "ensemble")
                    )
                    row = {"members": [str(sources[i]) for i in subset], "combine": combine}
                    row |= {"bytes_int8": size.stat().st_size, **scored(model, "valid", args.limit)}
                    row.pop("full")
                    candidates.append(row)
                    print(f"valid {row['members']} {combine}: WER {row['wer']:.2f} / {row['wer_nostress']:.2f}, "
                          f"{row['bytes_int8']:,} bytes int8", flush=True)  # fmt: skip
    fits = [r for r in candidates if r["bytes_int8"] <= args.budget]
    chosen = min(fits, key=lambda r: (r["wer"], len(r["members"])))
    single = min((r for r in candidates if len(r["members"]) == 1), key=lambda r: r["wer"])
    packed = args.packed
    pack(chosen["members"], packed, combine=chosen["combine"] or "probability", storage="int8")
    shipped = G2P.load(packed)
    valid_packed = scored(shipped, "valid", args.limit)
    valid_packed.pop("full")
    print(f"packed {packed}: valid WER {valid_packed['wer']:.2f} / {valid_packed['wer_nostress']:.2f}", flush=True)
    best = G2P.load(single["members"][0])
    test = {"chosen": scored(shipped, "test", args.limit), "best single": scored(best, "test", args.limit)}
    doc = {
        "threads": torch.get_num_threads(),
        "limit": args.limit,
        "budget_bytes": args.budget,
        "valid": candidates,
        "chosen": {k: chosen[k] for k in ("members", "combine", "bytes_int8")},
        "packed": {"path": str(packed), "bytes": packed.stat().st_size, "valid": valid_packed},
        "test": test,
    }
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    rows = [
        "| split | members | combine | int8 bytes | WER | PER | WER no stress | PER no stress | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    short = [" + ".join(Path(m).parent.name + "/" + Path(m).name for m in r["members"]) for r in candidates]
    for name, r in zip(short, candidates):
        rows.append(
            f"| valid | {name} | {r['combine'] or '-'} | {r['bytes_int8']:,} | "
            + " | ".join(f"{r[k]:.2f}" for k in KEYS)
            + f" | {r['seconds']} |"
        )
    rows.append(
        f"| valid, packed int8 | chosen | {chosen['combine'] or '-'} | {packed.stat().st_size:,} | "
        + " | ".join(f"{valid_packed[k]:.2f}" for k in KEYS)
        + f" | {valid_packed['seconds']} |"
    )
    for name, r in test.items():
        rows.append(f"| test | {name} | | | " + " | ".join(f"{r[k]:.2f}" for k in KEYS) + f" | {r['seconds']} |")
    args.out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
