"""Decoding settings of a G2P model chosen on the validation split: beam width and GNMT length
penalty alpha (``attnkit.models.decoding.length_penalty``).

    OMP_NUM_THREADS=1 python benchmarks/g2p/decode_grid.py [CHECKPOINT] --out benchmarks/g2p/decode_grid

Scores every (beam, alpha) on the whole validation split (WER, stress kept: the metric the trainer
selects on; ties go to the smaller beam, then the smaller alpha); only then the test split, for the
chosen setting and the default (beam 5, alpha 0.6); both tables go to OUT.json and OUT.md.
Default checkpoint: the shipped model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from attnkit.tasks.g2p import G2P

BEAMS = (1, 5, 10)
ALPHAS = (0.0, 0.6, 1.2)
DEFAULT = (5, 0.6)
KEYS = ("wer", "per", "wer_nostress", "per_nostress")


def scored(model: G2P, split: str, beam: int, alpha: float) -> dict:
    m = model.evaluate(split, beam=beam, alpha=alpha)
    return {"beam": beam, "alpha": alpha, **{k: m[k] for k in KEYS}, "seconds": round(m["words"] / m["words_per_s"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="a .safetensors checkpoint (default: the shipped model)")
    parser.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md are written")
    args = parser.parse_args()
    model = G2P.load(args.checkpoint)
    valid = []
    for beam in BEAMS:
        for alpha in ALPHAS if beam > 1 else (0.0,):  # greedy has no length penalty
            valid.append(scored(model, "valid", beam, alpha))
            print(
                f"valid beam {beam} alpha {alpha}: WER {valid[-1]['wer']:.2f} / {valid[-1]['wer_nostress']:.2f}",
                flush=True,
            )
    chosen = min(valid, key=lambda r: (r["wer"], r["beam"], r["alpha"]))
    test = [scored(model, "test", chosen["beam"], chosen["alpha"])]
    if (chosen["beam"], chosen["alpha"]) != DEFAULT:
        test.append(scored(model, "test", *DEFAULT))
    doc = {
        "checkpoint": args.checkpoint or "shipped",
        "threads": torch.get_num_threads(),
        "valid": valid,
        "chosen": {"beam": chosen["beam"], "alpha": chosen["alpha"]},
        "test": test,
    }
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    rows = [
        "| split | beam | alpha | WER | PER | WER no stress | PER no stress | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for split, table in (("valid", valid), ("test", test)):
        rows += [
            f"| {split} | {r['beam']} | {r['alpha']} | {r['wer']:.2f} | {r['per']:.2f} | {r['wer_nostress']:.2f} | "
            f"{r['per_nostress']:.2f} | {r['seconds']} |"
            for r in table
        ]
    title = f"## Decoding settings chosen on valid: beam {chosen['beam']}, alpha {chosen['alpha']}\n\n"
    args.out.with_suffix(".md").write_text(title + "\n".join(rows) + "\n")
    print(f"chosen on valid: beam {chosen['beam']}, alpha {chosen['alpha']}; test: {test}")


if __name__ == "__main__":
    main()
