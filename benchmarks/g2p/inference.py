"""Inference speed and accuracy of the shipped G2P models beside the peers', measured in one run on the
whole test split (12,606 words), one thread each, one process after the other on an otherwise idle
machine:

- attnkit's default, the fast model, as a user runs it: ``attnkit pronounce --file test.words``, one
  command timed as the peers' are.
- in Python (``G2P.pronounce``, batches sorted by length), as the models decode by default (FastRNN,
  with int8 products where the checkpoint says so): the fast model (``G2P.load()``) greedily, its
  default, and with beam 5; the accurate ensemble (``G2P.load("accurate")``) with beam 3, its
  default; and the accurate one as it decoded before this work (``--before``: that commit's code and
  its one shipped model, beam 5, its default then), the baseline of its speed-up. The two accurate
  rows have one pass fewer (``--passes`` - 1, at least 1). bfloat16 rows only on a CPU with native
  bfloat16 (AVX512-BF16 or AMX).
- the fast model exported to ONNX and decoded greedily by ONNX Runtime (``OnnxG2P``).
- Phonetisaurus (``phonetisaurus-g2pfst``, 1-best, its default beam) and, where installed, Sequitur
  (``g2p.py --apply``), each with the model peers.py chose on validation: one command over the test
  words, model loading included (their only way to run).

A Python row's cold number is a fresh process's first pass, from its launch: starting Python,
importing attnkit and torch, reading the words and loading the model included, as a command's; the
steady number is the best of the later passes in that process. WER is scored on the same outputs (attnkit.tasks.g2p.score).

    OMP_NUM_THREADS=1 python benchmarks/g2p/inference.py [--work runs/peers] [--passes 2]

Writes inference.json and inference.md beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from attnkit.bench.g2p_tools import decoding_name, host, phonetisaurus_env, sequitur_g2p, timed, write_data
from attnkit.data import cmudict
from attnkit.tasks.g2p import score

HERE = Path(__file__).parent

CHILD = """
import json, sys, time
started = time.perf_counter()
import torch
torch.set_num_threads(1)
kind, name, beam, precision, passes, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
words = open(sys.argv[7]).read().split()[: limit or None]  # the peers' word file
if kind == "onnx":
    from attnkit.tasks.g2p.onnx_export import OnnxG2P
    g2p = OnnxG2P(name, threads=1)
    run = lambda: g2p.pronounce(words)
else:
    from attnkit.tasks.g2p import G2P
    g2p = G2P.load() if kind == "before" else G2P.load(name)  # before: that tree's one shipped model
    run = lambda: g2p.pronounce(words, beam=beam, precision=precision)
times = []
for i in range(passes):
    t = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - t)
    if i == 0:
        cold = time.perf_counter() - started  # the interpreter's start is before: see the parent's wall time
        phones = [list(r.phones) for r in out]
print(json.dumps({"words": len(words), "cold_s": cold, "passes_s": times, "phones": phones,
                  "int8": bool(getattr(g2p, "int8", False))}))
"""


def native_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def attnkit_speed(
    kind: str, name: str, beam: int, precision: str, passes: int, refs, words: Path, src: Path | None = None
) -> dict:
    """One fresh process: its cold first pass (from the parent's launch: interpreter, imports, loading)
    and its later passes, with the WER of its outputs; ``src``: import attnkit from that source tree."""
    env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
    launched = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, name, str(beam), precision, str(passes), str(len(refs)), str(words)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    r = json.loads(out.stdout.splitlines()[-1])
    # the cold time from the launch: the child's own clock starts after the interpreter is up
    startup = (time.perf_counter() - launched) - (r["cold_s"] + sum(r["passes_s"][1:]))
    cold = max(startup, 0.0) + r["cold_s"]
    steady = min(r["passes_s"][1:]) if passes > 1 else r["passes_s"][0]
    return {
        "kind": kind,
        "model": name,
        "beam": beam,
        "precision": precision,
        "int8": r["int8"],
        **{k: round(v, 2) for k, v in score([tuple(p) for p in r["phones"]], refs).items()},
        "cold_s": round(cold, 2),
        "cold_words_per_s": round(r["words"] / cold, 1),
        "first_pass_words_per_s": round(r["words"] / r["passes_s"][0], 1),
        "steady_words_per_s": round(r["words"] / steady, 1),
        "passes_s": [round(t, 2) for t in r["passes_s"]],
    }


def peer_speed(name: str, work: Path, words: int) -> dict | None:
    """The chosen model of ``name`` (from peers.json) decoding the test words once; None when the
    tool or its model is not there."""
    peers = {p["peer"]: p for p in json.loads((HERE / "peers.json").read_text())["peers"]}
    chosen = peers[name]["chosen"]
    if name == "phonetisaurus":
        folder = work / "phonetisaurus" / f"order-{chosen['ngram_order']}"
        command = ["phonetisaurus-g2pfst", "--model=model/g2p.fst", "--wordlist=../../data/test.words", "--nbest=1"]
        env = phonetisaurus_env()
    else:
        if shutil.which("g2p.py", path=str(Path(sys.executable).parent)) is None:
            return None
        folder = work / "sequitur" / f"model-{chosen['model']}"
        command = [*sequitur_g2p(), "--model", "model", "--apply", "../../data/test.words"]
        env = None
    if not (folder / "model").exists():
        return None
    run = timed(command, cwd=folder, log=folder / "speed.log", stdout=folder / "speed.out", env=env)
    test = peers[name]["test"]
    return {
        "setting": chosen,
        **run,
        "words_per_s": round(words / run["wall_s"], 1),
        "wer": round(test["wer"], 2),
        "wer_nostress": round(test["wer_nostress"], 2),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="runs/peers", help="peers.py's --work, with the chosen peer models")
    parser.add_argument("--passes", type=int, default=2, help="passes over the test words per attnkit process")
    parser.add_argument("--limit", type=int, help="the first N test words only (a quick check of the script)")
    parser.add_argument(
        "--before",
        default="59981b0",
        help="the commit whose accurate model's decoding is the baseline of its speed-up (checked out in a temp dir)",
    )
    args = parser.parse_args(argv)
    work = Path(args.work)
    words = len(write_data(work / "data")["test"])
    test_words = (work / "data" / "test.words").resolve()  # the peers' word file, read by every row
    refs = [e.pronunciations for e in cmudict.load("test")][: args.limit]
    peers = {name: peer_speed(name, work, words) for name in ("phonetisaurus", "sequitur")}
    precisions = ("fp32", "bf16") if native_bf16() else ("fp32",)
    rows = []
    # the default, as a user runs it: one command over the test words, as the peers are timed
    command = timed(
        [sys.executable, "-m", "attnkit", "pronounce", "--file", "test.words"],
        cwd=work / "data",
        log=work / "data" / "attnkit.log",
        stdout=work / "data" / "attnkit.out",
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    command["words_per_s"] = round(words / command["wall_s"], 1)
    slow = max(1, args.passes - 1)  # the slow rows: their first pass (cold) and fewer steady ones
    for name, beam, passes in (("fast", 1, args.passes), ("fast", 5, args.passes), ("accurate", 3, slow)):
        for precision in precisions:
            rows.append(attnkit_speed("fast", name, beam, precision, passes, refs, test_words))
    with tempfile.TemporaryDirectory() as tmp:
        # the accurate ensemble as it decoded before FastRNN and shrinking batches: the baseline of its speed-up
        before = Path(tmp) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.before], check=True, capture_output=True
        )
        try:
            # beam 5: its default then
            rows.append(attnkit_speed("before", "accurate", 5, "fp32", slow, refs, test_words, before / "src"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], check=True)
        from attnkit.tasks.g2p import G2P
        from attnkit.tasks.g2p.onnx_export import export

        export(G2P.load("fast"), Path(tmp) / "fast-onnx")
        rows.append(attnkit_speed("onnx", str(Path(tmp) / "fast-onnx"), 1, "fp32", args.passes, refs, test_words))
    doc = {
        "machine": host(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": 1,
        "before": args.before,
        "words": words,
        "command": command,
        "attnkit": rows,
        "peers": {k: v for k, v in peers.items() if v is not None},
    }
    (HERE / "inference.json").write_text(json.dumps(doc, indent=1) + "\n")
    (HERE / "inference.md").write_text(report(doc))
    print(report(doc))


def report(doc: dict) -> str:
    lines = [
        (
            f"# G2P inference, test split ({doc['words']:,} words), one thread, {doc['machine']['cpu']} "
            f"(torch CPU capability {doc['torch_cpu_capability']})"
        ),
        "",
        "Measured in one run by `benchmarks/g2p/inference.py`, one process at a time on an idle machine.",
        "",
        (
            "| system | decoding | WER % | WER % no stress | words/s cold (process start to first pass done) "
            "| words/s first pass | words/s steady |"
        ),
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in doc["attnkit"]:
        search = decoding_name(r["beam"])
        if r["kind"] == "onnx":
            system, how = "attnkit fast model, ONNX Runtime", f"{search}, fp32"
        else:
            default = {("fast", 1): " (the default)", ("accurate", 3): " (its default)"}.get(
                (r["model"], r["beam"]), ""
            )
            default = default if r["kind"] == "fast" and r["precision"] == "fp32" else ""
            system = f"attnkit {r['model']} model{default}"
            path = {
                "fast": "FastRNN" + (", int8" if r["int8"] else ", fp32"),
                "before": f"as decoded before (commit {doc['before']}), fp32",
            }
            how = f"{search}, {path[r['kind']] if r['precision'] == 'fp32' else r['precision']}"
        lines.append(
            f"| {system} | {how} | {r['wer']:.2f} | {r['wer_nostress']:.2f} | {r['cold_words_per_s']:,.0f} | "
            f"{r['first_pass_words_per_s']:,.0f} | {r['steady_words_per_s']:,.0f} |"
        )
    c, default = doc["command"], doc["attnkit"][0]
    lines.append(
        f"| `attnkit pronounce --file test.words` (the default: fast model, greedy, int8) | one command | "
        f"{default['wer']:.2f} | {default['wer_nostress']:.2f} | {c['words_per_s']:,.0f} | - | - |"
    )
    for name, p in doc["peers"].items():
        setting = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in p["setting"].items())
        lines.append(
            f"| {name} ({setting}) | 1-best | {p['wer']:.2f} | {p['wer_nostress']:.2f} | {p['words_per_s']:,.0f} | - | - |"
        )
    lines += [
        "",
        "A command's number (the peers', and `attnkit pronounce`'s) is its one run over the test words file, loading",
        "and writing its output included. A Python row's cold column counts from its process's launch (interpreter,",
        "imports, reading the words, loading the model, the first pass); its first pass and steady columns are the",
        "decoding alone (steady: the best later pass; the slow rows have one pass, so steady is their first).",
        "`time.perf_counter` wall times; thread count 1 for every system. The peers' WER is their test score in",
        "peers.json (the same models).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
