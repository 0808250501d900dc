"""An ensemble of G2P models chosen on the validation split, packed into one int8 file for shipping.

    OMP_NUM_THREADS=1 python benchmarks/g2p/ensemble.py runs/g2p-ship2/chosen.safetensors \\
        runs/g2p-seed1 runs/g2p-kd-ft1 runs/g2p-kd-ft0 runs/g2p-kd3 --jobs 2 --out benchmarks/g2p/ensemble

Every model alone and every ensemble of two or more of them whose int8 file
(:func:`attnkit.tasks.g2p.pack`) fits the size budget, with each way of combining the members
(mean of probabilities, mean of log-probabilities; ``--combine`` keeps one), is scored on the whole
validation split with the shipped decoding (beam 5, alpha 0.6; WER with stress kept, the metric the
trainer selects on), ``--jobs`` candidates at a time (one torch thread each). The lowest valid WER
wins (ties: fewer members, then the first listed); ensembles over the budget are listed unscored. It is packed to PACKED
(default runs/g2p-ensemble.safetensors, where compare.py looks for it), its packed file is scored on valid once more (int8 rounding included) and only
then on the test split, beside the best single model on valid; the tables go to OUT.json and OUT.md.
Ship it with ``cp PACKED src/attnkit/pretrained/g2p.safetensors``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
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


def _score(sources: list[Path], subset: tuple[int, ...], combine: str | None, limit: int | None) -> dict:
    """The valid figures of the models ``subset`` of ``sources`` combined by ``combine``."""
    torch.set_num_threads(1)
    models = [G2P.load(sources[i]) for i in subset]
    model = (
        models[0]
        if combine is None
        else G2P(Ensemble([m.model for m in models], combine), models[0].task_doc, "ensemble")
    )
    row = scored(model, "valid", limit)
    row.pop("full")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, help="checkpoints or run folders (their best.safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md are written")
    parser.add_argument("--packed", type=Path, default=Path("runs/g2p-ensemble.safetensors"), help="the chosen, packed")
    parser.add_argument("--budget", type=int, default=BUDGET, help="bytes the packed file may take")
    parser.add_argument("--limit", type=int, help="score N evenly spaced words of each split (a smoke run)")
    parser.add_argument("--combine", choices=COMBINES, action="append", help="only this way of combining (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="candidates scored at once, one thread each")
    args = parser.parse_args()
    sources = [s / "best.safetensors" if s.is_dir() else s for s in args.sources]
    candidates, work = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(1, len(sources) + 1):
            for subset in itertools.combinations(range(len(sources)), n):
                size = Path(tmp, "size.safetensors")
                pack([sources[i] for i in subset], size, storage="int8")
                for combine in (args.combine or COMBINES) if n > 1 else (None,):
                    row = {"members": [str(sources[i]) for i in subset], "combine": combine}
                    candidates.append(row | {"bytes_int8": size.stat().st_size})
                    if candidates[-1]["bytes_int8"] <= args.budget:
                        work.append((candidates[-1], subset, combine))
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(row, pool.submit(_score, sources, subset, combine, args.limit)) for row, subset, combine in work]
        for row, future in futures:
            row |= future.result()
            print(f"valid {row['members']} {row['combine']}: WER {row['wer']:.2f} / {row['wer_nostress']:.2f}, "
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
        figures = [f"{r[k]:.2f}" for k in KEYS] + [str(r["seconds"])] if "wer" in r else ["over budget"] + [""] * 4
        rows.append(f"| valid | {name} | {r['combine'] or '-'} | {r['bytes_int8']:,} | " + " | ".join(figures) + " |")
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
