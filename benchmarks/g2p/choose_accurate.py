"""Choose how the accurate G2P model (the shipped ensemble) decodes by default, on the validation
split only, and write it into the shipped file:

    OMP_NUM_THREADS=1 python benchmarks/g2p/choose_accurate.py [--write]

The ensemble decodes the whole validation split with beam 5 in float32 (its default before) and with
int8 products (FastRNN) at beams 1, 2, 3 and 5. The setting with the lowest WER (stress kept, then
without) is chosen; a tie goes to the smaller beam. ``--write`` stores it as the checkpoint's
``decoding`` document ({"beam", "int8"}: read by ``G2P.load``); the tensors are unchanged. Writes
accurate.json and accurate.md beside this file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from attnkit.bench.g2p_tools import decoding_name, valid_scores
from attnkit.bench.measure import cpu_model
from attnkit.tasks.g2p import G2P
from attnkit.train import checkpoint

HERE = Path(__file__).parent
SETTINGS = ((5, False), (5, True), (3, True), (2, True), (1, True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="store the choice in the shipped file")
    args = parser.parse_args()
    rows = []
    for beam, int8 in SETTINGS:
        rows.append(valid_scores(G2P.load("accurate", int8=int8), beam))
        print(json.dumps(rows[-1]), flush=True)
    best = min(rows, key=lambda r: (r["wer"], r["wer_nostress"], r["beam"]))
    chosen = {"beam": best["beam"], "int8": best["int8"]}
    doc = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "rows": rows, "chosen": chosen}
    (HERE / "accurate.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "# How the accurate G2P model decodes, chosen on the validation split (6,303 words)",
        "",
        f"Written by `benchmarks/g2p/choose_accurate.py`, one thread, {doc['cpu']}. words/s: this run's decoding only",
        "(the machine may have been shared: read `inference.md` for speed).",
        "",
        "| decoding | WER % | PER % | WER % no stress | PER % no stress | words/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        how = decoding_name(r["beam"], r["int8"])
        lines.append(
            f"| {how} | {r['wer']:.2f} | {r['per']:.2f} | {r['wer_nostress']:.2f} | {r['per_nostress']:.2f} | "
            f"{r['words_per_s']:,.0f} |"
        )
    lines += [
        "",
        f"**Chosen:** beam {chosen['beam']}, {'int8' if chosen['int8'] else 'float32'}: the lowest valid WER.",
    ]
    (HERE / "accurate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.write:
        path = G2P.shipped_path("accurate")
        checkpoint.load(path)  # checked before it is written again
        checkpoint.resave(path, meta={"decoding": chosen})  # the stored int4 tensors as they are
        print(f"{path}: decoding {chosen}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
