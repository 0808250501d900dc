"""Label words with a G2P model, as a lexicon a student trains on (sequence-level distillation, Kim &
Rush 2016; words without pronunciations as in Sun et al. 2019):

    OMP_NUM_THREADS=1 python benchmarks/g2p/label.py [--model accurate] [--beam 1] [--out runs/g2p-label]
        [--lists train,wamerican,wordnet]

The words (--lists): every word of the cmudict training split (``train``), and the words of Debian's
word list (``wamerican``: /usr/share/dict/american-english, possessives dropped), WordNet's lemmas
(``wordnet``: ``wordnet-base``, /usr/share/wordnet/index.*) and Debian's large list
(``wamerican-huge``: /usr/share/dict/american-english-huge, its lower-case words not in the other
two) that the CMU dictionary does not hold at all, so that no validation or test word is among them;
letters a-z ' - . only, at most --longest letters. Each
gets the model's output (the accurate ensemble, greedy by default); outputs cut at their length limit
are left out. Written in parts of --part words (a stopped run keeps its finished parts and goes on
from there), then joined into OUT/lexicon.txt (cmudict format) with OUT/label.json, the record.
Train on it with ``attnkit train g2p --train-lexicon OUT/lexicon.txt``.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import time
from pathlib import Path

import torch

from attnkit.data import cmudict
from attnkit.tasks.g2p import G2P

WORD = re.compile(r"[a-z][a-z'.-]*")
LISTS = ("train", "wamerican", "wordnet", "wamerican-huge")


def debian_words(path: str, lower_only: bool = False) -> set[str]:
    """A Debian word list's words, possessives dropped (``lower_only``: names and acronyms too)."""
    words = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        w = line.strip()
        if lower_only and w != w.lower():
            continue
        w = w.lower()
        if not w.endswith("'s") and WORD.fullmatch(w):
            words.add(w)
    return words


def word_lists(longest: int, huge: bool = False) -> dict[str, list[str]]:
    """The training words, and the new words of each list (none of them in the CMU dictionary)."""
    known = {e.word for e in cmudict.load()}
    train = sorted({e.word for e in cmudict.load("train")})
    debian = debian_words("/usr/share/dict/american-english")
    wordnet = set()
    for path in glob.glob("/usr/share/wordnet/index.*"):
        if path.endswith(".sense"):
            continue
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith(" "):
                w = line.split(" ", 1)[0].lower()
                if WORD.fullmatch(w):
                    wordnet.add(w)
    keep = lambda words: sorted(w for w in words if w not in known and len(w) <= longest)
    lists = {"train": train, "wamerican": keep(debian), "wordnet": keep(wordnet - debian)}
    if huge:
        large = debian_words("/usr/share/dict/american-english-huge", lower_only=True)
        lists["wamerican-huge"] = keep(large - debian - wordnet)
    return lists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="accurate", help="the labelling model: a shipped name or a checkpoint")
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--longest", type=int, default=20, help="letters of a new word, at most")
    parser.add_argument("--part", type=int, default=10_000, help="words per part file")
    parser.add_argument("--out", type=Path, default=Path("runs/g2p-label"))
    parser.add_argument("--lists", default="train,wamerican,wordnet", help="comma-separated: " + ", ".join(LISTS))
    args = parser.parse_args()
    names = args.lists.split(",")
    if not set(names) <= set(LISTS):
        parser.error(f"--lists: expected names from {', '.join(LISTS)}, got {args.lists!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    lists = {name: ws for name, ws in word_lists(args.longest, "wamerican-huge" in names).items() if name in names}
    words = [w for name in names for w in lists[name]]
    g2p = G2P.load(args.model)
    started = time.perf_counter()
    for i, start in enumerate(range(0, len(words), args.part)):
        part = args.out / f"part-{i:03d}.txt"
        if part.exists():
            continue
        chunk = words[start : start + args.part]
        results = g2p.pronounce(chunk, beam=args.beam)
        lines = [f"{r.word} {' '.join(r.phones)}\n" for r in results if not r.cut and r.phones]
        tmp = part.with_suffix(".tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        tmp.replace(part)  # whole or absent
        print(f"{part}: {len(lines):,} of {len(chunk):,} words, {time.perf_counter() - started:.0f} s", flush=True)
    parts = sorted(args.out.glob("part-*.txt"))
    text = "".join(p.read_text(encoding="utf-8") for p in parts)
    (args.out / "lexicon.txt").write_text(text, encoding="utf-8")
    record = {
        "model": g2p.path,
        "beam": args.beam,
        "int8": g2p.int8,
        "words": {name: len(ws) for name, ws in lists.items()},
        "labelled": text.count("\n"),
        "threads": torch.get_num_threads(),
    }
    (args.out / "label.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
