"""Mixed precision on the CPU: training step time of the default G2P models in fp32 and bf16.

One process per model; the fp32 and bf16 trainers (same seed, same batches of epoch 0) take their
steps in alternating blocks, so that both see the same load. Prints the cold first step, then the
median and mean ms/step (and the mean of the second half: bf16 pays a one-off cost for each new
batch shape, see the README) and target tokens/s of the timed steps, with the thread count and load.

    python benchmarks/g2p/precision.py rnn            # the default: luong-general, batch 256
    python benchmarks/g2p/precision.py transformer --steps 200 --block 25
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from attnkit.tasks.g2p import G2PTask
from attnkit.train import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=["rnn", "transformer"])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per precision")
    parser.add_argument("--block", type=int, default=25, help="steps in a row before switching precision")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json")
    args = parser.parse_args()
    load = os.getloadavg()
    task = G2PTask(args.model, {}, valid_limit=1)
    trainers, times, tokens = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in ("fp32", "bf16"):
            trainers[p] = Trainer(
                task, TrainConfig(batch_size=args.batch_size, precision=p), f"{tmp}/{p}", progress=False
            )
            times[p], tokens[p] = [], 0
        batches = trainers["fp32"]._epoch_batches(0)
        total = len(batches) * 20
        cold = {}
        for p, t in trainers.items():
            t.model.train()
            started = time.perf_counter()
            t._step(batches[0], total)
            cold[p] = time.perf_counter() - started
        i = 1
        while min(len(v) for v in times.values()) < args.steps:
            for p, t in trainers.items():
                for j in range(args.block):
                    batch = batches[(i + j) % len(batches)]
                    started = time.perf_counter()
                    _, count = t._step(batch, total)
                    times[p].append(time.perf_counter() - started)
                    tokens[p] += count
            i += args.block
    params = sum(x.numel() for x in trainers["fp32"].model.parameters())
    out = {
        "model": args.model,
        "parameters": params,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    for p in trainers:
        out[p] = {
            "cold_ms": round(1000 * cold[p], 1),
            "median_ms": round(1000 * statistics.median(times[p]), 1),
            "mean_ms": round(1000 * statistics.mean(times[p]), 1),
            "mean_second_half_ms": round(1000 * statistics.mean(times[p][len(times[p]) // 2 :]), 1),
            "slowest_ms": [round(1000 * t) for t in sorted(times[p])[-5:]],
            "tokens_per_s": round(tokens[p] / sum(times[p])),
            "steps": len(times[p]),
        }
    out["speedup_median"] = round(out["fp32"]["median_ms"] / out["bf16"]["median_ms"], 2)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
