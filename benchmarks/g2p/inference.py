"""Inference speed of the shipped G2P model beside the peers', measured in one run on the whole test
split (12,606 words), one thread each, one after the other on an otherwise idle machine:

- attnkit, the shipped model (``G2P.load()``): greedy and beam 5, float32 and bfloat16 autocast,
  batches of 256 words sorted by length (``G2P.pronounce``). The cold number is a fresh process's
  first pass: it includes importing attnkit and torch and loading the model, as a peer's command
  does; the steady number is the best of the later passes in that process.
- Phonetisaurus (``phonetisaurus-g2pfst``, 1-best, its default beam) and Sequitur (``g2p.py
  --apply``), each with the model peers.py chose on validation: one command over the test words,
  model loading included (their only way to run).

    OMP_NUM_THREADS=1 python benchmarks/g2p/inference.py [--work runs/peers] [--passes 3]

Writes inference.json and inference.md beside this file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from attnkit.bench.g2p_tools import host, phonetisaurus_env, sequitur_g2p, timed, write_data

HERE = Path(__file__).parent

CHILD = """
import json, sys, time
started = time.perf_counter()
import torch
torch.set_num_threads(1)
from attnkit.data import cmudict
from attnkit.tasks.g2p import G2P
words = [e.word for e in cmudict.load("test")]
g2p = G2P.load()
beam, precision, passes = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
times = []
for i in range(passes):
    t = time.perf_counter()
    g2p.pronounce(words, beam=beam, precision=precision)
    times.append(time.perf_counter() - t)
    if i == 0:
        cold = time.perf_counter() - started  # imports, loading and the first pass
print(json.dumps({"words": len(words), "cold_s": cold, "first_pass_s": times[0], "passes_s": times}))
"""


def attnkit_speed(beam: int, precision: str, passes: int) -> dict:
    """One fresh process: its cold first pass (with imports and loading) and its later passes."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(beam), precision, str(passes)], check=True, capture_output=True, text=True
    )
    r = json.loads(out.stdout.splitlines()[-1])
    steady = min(r["passes_s"][1:]) if passes > 1 else r["passes_s"][0]
    return {
        "beam": beam,
        "precision": precision,
        "cold_words_per_s": round(r["words"] / r["cold_s"], 1),
        "first_pass_words_per_s": round(r["words"] / r["first_pass_s"], 1),
        "steady_words_per_s": round(r["words"] / steady, 1),
        "passes_s": [round(t, 2) for t in r["passes_s"]],
    }


def peer_speed(name: str, work: Path, words: int) -> dict:
    """The chosen model of ``name`` (from peers.json) decoding the test words once."""
    peers = {p["peer"]: p for p in json.loads((HERE / "peers.json").read_text())["peers"]}
    chosen = peers[name]["chosen"]
    if name == "phonetisaurus":
        folder = work / "phonetisaurus" / f"order-{chosen['ngram_order']}"
        command = ["phonetisaurus-g2pfst", "--model=model/g2p.fst", "--wordlist=../../data/test.words", "--nbest=1"]
        env = phonetisaurus_env()
    else:
        folder = work / "sequitur" / f"model-{chosen['model']}"
        command = [*sequitur_g2p(), "--model", "model", "--apply", "../../data/test.words"]
        env = None
    run = timed(command, cwd=folder, log=folder / "speed.log", stdout=folder / "speed.out", env=env)
    return {"setting": chosen, **run, "words_per_s": round(words / run["wall_s"], 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="runs/peers", help="peers.py's --work, with the chosen peer models")
    parser.add_argument("--passes", type=int, default=3, help="passes over the test words per attnkit process")
    args = parser.parse_args(argv)
    work = Path(args.work)
    words = len(write_data(work / "data")["test"])
    rows = [attnkit_speed(beam, precision, args.passes) for beam in (1, 5) for precision in ("fp32", "bf16")]
    peers = {name: peer_speed(name, work, words) for name in ("phonetisaurus", "sequitur")}
    doc = {"machine": host(), "threads": 1, "words": words, "attnkit": rows, "peers": peers}
    (HERE / "inference.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        f"# G2P inference speed, test split ({words:,} words), one thread, {doc['machine']['cpu']}",
        "",
        "Measured in one run by `benchmarks/g2p/inference.py`, one process at a time on an idle machine.",
        "",
        "| system | search | words/s cold (process start to first pass done) | words/s first pass | words/s steady |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        search = f"{'greedy' if r['beam'] == 1 else 'beam ' + str(r['beam'])}, {r['precision']}"
        lines.append(
            f"| attnkit shipped model | {search} | {r['cold_words_per_s']:.0f} | {r['first_pass_words_per_s']:.0f} | "
            f"{r['steady_words_per_s']:.0f} |"
        )
    for name, p in peers.items():
        setting = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in p["setting"].items())
        lines.append(f"| {name} ({setting}) | 1-best | {p['words_per_s']:.0f} | - | - |")
    lines += [
        "",
        "A peer's number is its one command over the test words, loading included: compare it with attnkit's cold",
        "column. `time.perf_counter` wall times; thread count 1 for every system.",
    ]
    (HERE / "inference.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
