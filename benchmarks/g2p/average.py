"""Checkpoint averaging of a G2P run, the number of epochs chosen on the validation split.

    python benchmarks/g2p/average.py runs/g2p-ship   # a run trained with --keep-epochs N

For n = 1 .. N, the weights kept after the run's last n epochs (``epoch-K.safetensors``) are
averaged and scored on the validation split (greedy WER, stress kept: the metric the trainer
selects on), beside the run's best single epoch (``best.safetensors``); the best of them is written
to ``RUN/chosen.safetensors`` (read by ``attnkit eval`` and ``attnkit pronounce --model``), the
whole table to ``RUN/average.json``. The test split is never read.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from attnkit.tasks.g2p import G2P
from attnkit.train import checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--valid-limit", type=int, help="score the first N validation words only")
    args = parser.parse_args()
    kept = sorted(args.run.glob("epoch-*.safetensors"))
    if not kept:
        raise SystemExit(f"{args.run}: no epoch-K.safetensors; train with --keep-epochs N")
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(1, len(kept) + 1):
            tensors, meta = checkpoint.average(kept[-n:])
            meta.pop("format")
            path = Path(tmp) / f"last-{n}.safetensors"
            checkpoint.save(path, tensors, meta)
            m = G2P.load(path).evaluate("valid", beam=1, limit=args.valid_limit)
            table.append(
                {"epochs": [p.name for p in kept[-n:]], "valid_wer": m["wer"], "valid_wer_nostress": m["wer_nostress"]}
            )
            print(f"last {n} epoch(s): valid WER {m['wer']:.2f} (no stress {m['wer_nostress']:.2f})", flush=True)
        m = G2P.load(args.run / "best.safetensors").evaluate("valid", beam=1, limit=args.valid_limit)
        table.append({"epochs": ["best.safetensors"], "valid_wer": m["wer"], "valid_wer_nostress": m["wer_nostress"]})
        print(f"best single epoch: valid WER {m['wer']:.2f} (no stress {m['wer_nostress']:.2f})", flush=True)
        chosen = min(range(len(table)), key=lambda i: table[i]["valid_wer"])
        source = args.run / "best.safetensors" if chosen == len(kept) else Path(tmp) / f"last-{chosen + 1}.safetensors"
        shutil.copyfile(source, args.run / "chosen.safetensors")
    doc = {"chosen": table[chosen]["epochs"], "table": table}
    (args.run / "average.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{args.run / 'chosen.safetensors'}: {', '.join(table[chosen]['epochs'])}")


if __name__ == "__main__":
    main()
