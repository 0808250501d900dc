"""Phonetisaurus and Sequitur G2P, the established grapheme-to-phoneme tools, trained and scored on
attnkit's cmudict split: the peer rows next to benchmarks/g2p/results.md (issue 13).

Each peer trains on exactly the training split (every pronunciation of a training word is one
training pair), chooses its setting by WER on the validation split, decodes the test split 1-best
with that setting, and is scored by attnkit.tasks.g2p.score, the metric of results.md.

- phonetisaurus: a joint n-gram model per order in --orders (``phonetisaurus-train --seq2_del``),
  decoded by ``phonetisaurus-g2pfst`` (its default beam, 1-best).
- sequitur: ``g2p.py`` model-1, then ramp-up model-2, model-3, ... Its ``--devel`` held-out data,
  on which it estimates discounts and decides when an EM step has converged, is the validation split,
  so that it trains on the whole training split. The ramp-up stops when a model's valid WER is no
  better than the previous one's, after --sequitur-max-model, or once the steps so far took
  --sequitur-budget-min minutes.

Training and decoding run as one process each; the tools are single-threaded (peers.json records
the CPU time next to the wall time to show it). Decoding speed is the test words over the wall time
of the whole decoding command, model loading included.

Everything is kept under --work: a model, its training time and its decoded outputs are reused when
the script runs again, so it can be stopped and rerun, one step under the CPU lock at a time:

    flock /tmp/attnkit-cpu.lock python benchmarks/g2p/peers.py phonetisaurus
    flock /tmp/attnkit-cpu.lock python benchmarks/g2p/peers.py sequitur --sequitur-max-model 2 --no-test
    python benchmarks/g2p/peers.py report

Every run ends by writing peers.json and peers.md from the test results under --work.
Install the tools first: benchmarks/g2p/install-peers.sh.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attnkit.bench.g2p_tools import host, phonetisaurus_env, sequitur_g2p, timed, write_data
from attnkit.data import cmudict
from attnkit.tasks.g2p import LENGTHS, by_length, score

HERE = Path(__file__).parent


# ---------------------------------------------------------------------------------------------------
# Data and scoring


def read_outputs(path: Path, entries: list[cmudict.Entry]) -> list[tuple[str, ...]]:
    """The tool's ``word<TAB>P1 P2 ...`` lines as one output per entry; a word the tool gave no
    output for gets the empty output (an error)."""
    outputs = {}
    for line in path.read_text().splitlines():
        word, _, phones = line.partition("\t")
        outputs.setdefault(word, tuple(phones.split()))
    return [outputs.get(e.word, ()) for e in entries]


def metrics(entries: list[cmudict.Entry], outputs) -> dict:
    """score() on the whole split and per word-length bucket, plus how many words got no output."""
    refs = [e.pronunciations for e in entries]
    buckets = by_length([e.word for e in entries], outputs, refs)
    missing = sum(not o for o in outputs)
    return {**score(outputs, refs), "words": len(entries), "no_output": missing, "by_length": buckets}


# ---------------------------------------------------------------------------------------------------
# Running the tools


def once(meta: Path, step, *args, **kwargs) -> dict:
    """``step(*args, **kwargs)``'s record, kept in ``meta``: a step whose record exists is not run
    again. The record is written last, so a step that was stopped half-way runs again from scratch."""
    if meta.exists():
        return json.loads(meta.read_text())
    record = step(*args, **kwargs)
    meta.write_text(json.dumps(record, indent=1) + "\n")
    return record


def evaluated(folder: Path, split: str, decode, splits) -> dict:
    """Decodes ``split`` with ``decode(words, outputs, log)`` once (kept in ``folder``; ``words`` is
    the split's word list relative to ``folder``) and scores it; the record has the decoding time and
    words/s."""
    outputs = folder / f"{split}.out"

    def step():
        run = decode(f"../../data/{split}.words", outputs, folder / f"{split}.log")
        return {**run, "words_per_s": round(len(splits[split]) / run["wall_s"], 1)}

    run = once(folder / f"{split}.json", step)
    return {**metrics(splits[split], read_outputs(outputs, splits[split])), "decode": run}


# ---------------------------------------------------------------------------------------------------
# The peers: each trains its candidate settings, picks one on valid and returns the candidates.


def phonetisaurus(args, work: Path, splits) -> tuple[list[dict], dict]:
    """One model per n-gram order in ``--orders``, each scored on valid; returns them and the search."""
    env = phonetisaurus_env()
    candidates = []
    for order in args.orders:
        folder = work / "phonetisaurus" / f"order-{order}"
        folder.mkdir(parents=True, exist_ok=True)
        command = [
            "phonetisaurus-train", "--lexicon", "../../data/train.lex", "--seq2_del",
            "--ngram_order", str(order), "--dir_prefix", "model", "--model_prefix", "g2p",
        ]  # fmt: skip
        train = once(folder / "train.json", timed, command, cwd=folder, log=folder / "train.log", env=env)

        def decode(words, outputs, log, folder=folder):
            command = [
                "phonetisaurus-g2pfst", "--model=model/g2p.fst", f"--wordlist={words}",
                "--nbest=1", "--print_scores=false",
            ]  # fmt: skip
            return timed(command, cwd=folder, log=log, stdout=outputs, env=env)

        valid = evaluated(folder, "valid", decode, splits)
        candidates.append(
            {
                "setting": {"ngram_order": order},
                "train": train,
                "model_mb": round((folder / "model" / "g2p.fst").stat().st_size / 2**20, 1),
                "valid": valid,
                "decode": decode,
                "folder": folder,
            }
        )
        print(f"phonetisaurus order {order}: train {train['wall_s']:.0f} s, valid WER {valid['wer']:.2f}")
    return candidates, {"orders": args.orders}


def sequitur(args, work: Path, splits) -> tuple[list[dict], dict]:
    """model-1, then ramp-up steps while valid WER improves (and the limits allow), each scored on
    valid; returns them and the search, with why the ramp-up stopped."""
    g2p = sequitur_g2p()
    root = work / "sequitur"
    root.mkdir(parents=True, exist_ok=True)
    candidates, spent = [], 0.0
    stopped = f"reached --sequitur-max-model {args.sequitur_max_model}"
    for level in range(1, args.sequitur_max_model + 1):
        folder = root / f"model-{level}"
        if not (folder / "train.json").exists():
            if candidates and spent >= 60 * args.sequitur_budget_min:
                stopped = f"the ramp-up up to model-{level - 1} took {spent / 60:.1f} min, over the budget"
                break
            if len(candidates) >= 2 and candidates[-1]["valid"]["wer"] >= candidates[-2]["valid"]["wer"]:
                stopped = f"model-{level - 1}'s valid WER was no better than model-{level - 2}'s"
                break
        folder.mkdir(exist_ok=True)
        command = [*g2p, "--train", "../../data/train.lex", "--devel", "../../data/valid.lex"]
        if level > 1:
            command += ["--model", f"../model-{level - 1}/model", "--ramp-up"]
        command += ["--write-model", "model"]
        train = once(folder / "train.json", timed, command, cwd=folder, log=folder / "train.log")
        spent += train["wall_s"]

        def decode(words, outputs, log, folder=folder):
            command = [*g2p, "--model", "model", "--apply", words]
            return timed(command, cwd=folder, log=log, stdout=outputs)

        valid = evaluated(folder, "valid", decode, splits)
        candidates.append(
            {
                "setting": {"model": level},
                "train": {**train, "ramp_up_wall_s": round(spent, 2)},
                "model_mb": round((folder / "model").stat().st_size / 2**20, 1),
                "valid": valid,
                "decode": decode,
                "folder": folder,
            }
        )
        print(f"sequitur model-{level}: train {train['wall_s']:.0f} s, valid WER {valid['wer']:.2f}")
    print(f"sequitur: stopped: {stopped}")
    search = {"max_model": args.sequitur_max_model, "budget_min": args.sequitur_budget_min, "stopped": stopped}
    return candidates, search


@dataclass(frozen=True)
class Peer:
    run: Callable  # (args, work, splits) -> (candidates, each scored on valid; the search's settings)
    package: str  # the PyPI distribution, for its version
    patches: str | None = None  # what install-peers.sh changed in it


PEERS = {
    "phonetisaurus": Peer(phonetisaurus, "phonetisaurus"),
    "sequitur": Peer(
        sequitur,
        "sequitur-g2p",
        "built from the PyPI sdist by install-peers.sh: np.sometrue -> np.any; the 'x.thisown = True' "
        "lines dropped and %newobject declared in sequitur.i (as upstream pull requests #111, #112)",
    ),
}


def test(name: str, candidates: list[dict], search: dict, splits) -> dict:
    """The chosen candidate (lowest valid WER, the first of equals) decoded and scored on test."""
    chosen = min(candidates, key=lambda c: c["valid"]["wer"])
    result = evaluated(chosen["folder"], "test", chosen["decode"], splits)
    strip = ("decode", "folder")
    return {
        "peer": name,
        "version": importlib.metadata.version(PEERS[name].package),
        "patches": PEERS[name].patches,
        "chosen": chosen["setting"],
        "train": chosen["train"],
        "model_mb": chosen["model_mb"],
        "valid": chosen["valid"],
        "test": result,
        "search": search,
        "candidates": [{k: v for k, v in c.items() if k not in strip} for c in candidates],
    }


# ---------------------------------------------------------------------------------------------------
# The report


def setting_name(setting: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in setting.items())


SEQUITUR_NOTE = [
    "- Sequitur's training time above is each ramp-up step's own; its `--devel` held-out data is",
    "  the validation split (discount estimation and EM stopping), so it trains on all of train.",
]


def markdown(results: list[dict], host: dict) -> str:
    cpu = f"{host['cpu']}, 1 thread"
    rows = [
        "| model | parameters | WER % | PER % | WER % (no stress) | PER % (no stress) | training | words/s greedy / beam 5 |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        t, train = r["test"], r["train"]
        minutes = train.get("ramp_up_wall_s", train["wall_s"]) / 60
        cut = (
            " (ramp-up cut short by the time budget: under-trained)"
            if "budget" in r["search"].get("stopped", "")
            else ""
        )
        rows.append(
            f"| {r['peer']} {r['version']}, {setting_name(r['chosen'])}{cut} | {r['model_mb']} MB model "
            f"| {t['wer']:.2f} | {t['per']:.2f} | {t['wer_nostress']:.2f} | {t['per_nostress']:.2f} "
            f"| {minutes:.1f} min, {cpu} | {t['decode']['words_per_s']:.0f} (1-best) |"
        )
    lengths = [f"{low}+" if high is None else f"{low}-{high}" for low, high in LENGTHS]
    by_length = [
        "| model | " + " | ".join(f"{n} letters" for n in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for r in results:
        b = r["test"]["by_length"]
        cells = " | ".join(f"{b[n]['wer']:.2f} / {b[n]['wer_nostress']:.2f}" for n in lengths)
        by_length.append(f"| {r['peer']}, {setting_name(r['chosen'])} | {cells} |")
    words = " | ".join(str(results[0]["test"]["by_length"][n]["words"]) for n in lengths) if results else ""
    by_length.append(f"| (test words) | {words} |")
    selection = [
        "| peer | setting | valid WER % | valid PER % | valid WER % (no stress) | training |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for c in r["candidates"]:
            v = c["valid"]
            selection.append(
                f"| {r['peer']} | {setting_name(c['setting'])} | {v['wer']:.2f} | {v['per']:.2f} "
                f"| {v['wer_nostress']:.2f} | {c['train']['wall_s'] / 60:.1f} min |"
            )
    return "\n".join(
        [
            "# G2P peers: Phonetisaurus and Sequitur on attnkit's cmudict split",
            "",
            "Written by `benchmarks/g2p/peers.py` (tools installed by `install-peers.sh`); numbers and",
            "commands in `peers.json`. Same split, same scoring (`attnkit.tasks.g2p.score`) and same",
            "columns as `results.md`. Each peer trains on the training split, picks its setting by valid",
            "WER, and decodes the test split 1-best.",
            "",
            *rows,
            "",
            "- parameters: the size of the model file (the peers are not neural networks).",
            f"- training: wall time of the chosen model's training, one process on {host['cpu']}",
            f"  ({host['cores']} cores); for Sequitur, every ramp-up step up to the chosen model.",
            "- words/s: test words over the wall time of one decoding command (model loading included),",
            "  1-best; the tools are single-threaded and `phonetisaurus-g2pfst` has no thread option.",
            "  There is no greedy / beam 5 split: Phonetisaurus searches the WFST with its default",
            "  beam (10000), Sequitur with its own stack decoder.",
            "",
            "## Test WER by word length (stress kept / removed, %)",
            "",
            *by_length,
            "",
            "## Settings tried, on the validation split",
            "",
            *selection,
            "",
            *[f"- {r['peer']}: " + "; ".join(f"{k}: {v}" for k, v in r["search"].items()) + "." for r in results],
            *(SEQUITUR_NOTE if any(r["peer"] == "sequitur" for r in results) else []),
            "",
        ]
    )


def report(work: Path, out: Path) -> None:
    results = [json.loads(p.read_text()) for name in PEERS if (p := work / name / "result.json").exists()]
    machine = host()
    document = {"machine": machine, "threads": 1, "split": "attnkit.data.cmudict", "peers": results}
    (out / "peers.json").write_text(json.dumps(document, indent=1) + "\n")
    (out / "peers.md").write_text(markdown(results, machine))
    print(f"wrote {out / 'peers.json'} and {out / 'peers.md'} ({', '.join(r['peer'] for r in results)})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peers", nargs="*", metavar="PEER", help=f"{', '.join(PEERS)} or report (default: all peers)")
    parser.add_argument("--work", type=Path, default=Path("runs/peers"), help="models and outputs (reused)")
    parser.add_argument("--out", type=Path, default=HERE, help="where peers.json and peers.md go")
    parser.add_argument("--orders", type=int, nargs="+", default=[6, 7, 8, 9], help="Phonetisaurus n-gram orders")
    parser.add_argument("--sequitur-max-model", type=int, default=8, help="last ramp-up level to train")
    parser.add_argument(
        "--sequitur-budget-min", type=float, default=60.0, help="start no ramp-up step after this much training"
    )
    parser.add_argument("--no-test", action="store_true", help="train and score on valid only")
    args = parser.parse_args(argv)
    for name in args.peers:
        if name not in [*PEERS, "report"]:
            parser.error(f"unknown peer {name!r}; expected {', '.join(PEERS)} or report")
    args.work = args.work.resolve()
    splits = write_data(args.work / "data")
    for name in args.peers or PEERS:
        if name == "report":
            continue
        candidates, search = PEERS[name].run(args, args.work, splits)
        if not args.no_test:
            result = test(name, candidates, search, splits)
            (args.work / name / "result.json").write_text(json.dumps(result, indent=1) + "\n")
            print(f"{name} {setting_name(result['chosen'])}: test WER {result['test']['wer']:.2f}")
    report(args.work, args.out)


if __name__ == "__main__":
    main()
