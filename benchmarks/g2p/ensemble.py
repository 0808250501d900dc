"""An ensemble of G2P models chosen on the validation split, packed into one file for shipping.

    OMP_NUM_THREADS=1 python benchmarks/g2p/ensemble.py runs/g2p-ship2/chosen.safetensors \\
        runs/g2p-seed1 runs/g2p-kd-ft1 runs/g2p-kd-ft0 runs/g2p-kd3 --jobs 2 --out benchmarks/g2p/ensemble

Candidates are packed as they would ship (:func:`attnkit.tasks.g2p.pack`, ``--storage`` int8 or
int4, so the rounding is in every score) and scored on the whole validation split with the shipped
decoding (beam 5, alpha 0.6; WER with stress kept, the metric the trainer selects on), ``--jobs``
at a time (one torch thread each). The lowest valid WER wins (ties: fewer members, then the first
listed). Which candidates (``--search``):

- ``all``: every model alone and every ensemble of two or more whose packed file fits the size
  budget, with each way of combining the members (mean of probabilities, mean of log-probabilities;
  ``--combine`` keeps one). Ensembles over the budget are listed unscored, those of the smallest
  size that does not fit (larger ones are not tried).
- ``forward``: forward selection (Caruana et al., 2004, without replacement): every model alone,
  then the best so far with each other model added, while that fits and lowers the valid WER. For
  many sources, where ``all`` would score hundreds of ensembles.

The winner is packed to PACKED (default runs/g2p-ensemble.safetensors, where compare.py looks for
it) and only then scored on the test split, beside the best single model on valid (its checkpoint
as trained, not rounded); the tables go to OUT.json and OUT.md. Ship it with
``cp PACKED src/attnkit/pretrained/g2p.safetensors``.
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

from attnkit.models.ensemble import COMBINES
from attnkit.tasks.g2p import G2P, pack

KEYS = ("wer", "per", "wer_nostress", "per_nostress")
BUDGET = 20_000_000  # bytes the shipped model may take in the package


def scored(model: G2P, split: str, limit: int | None) -> dict:
    """The figures of ``model`` on ``split``, and under ``full`` everything ``evaluate`` gives."""
    m = model.evaluate(split, beam=5, alpha=0.6, limit=limit)
    return {**{k: m[k] for k in KEYS}, "seconds": round(m["words"] / m["words_per_s"], 1), "full": m}


def _score(path: Path, limit: int | None) -> dict:
    """The valid figures of the packed candidate at ``path``."""
    torch.set_num_threads(1)
    row = scored(G2P.load(path), "valid", limit)
    row.pop("full")
    return row


class Candidates:
    """Packs, sizes and scores candidate ensembles, remembering every one in ``rows``."""

    def __init__(self, sources: list[Path], args, pool: ProcessPoolExecutor, tmp: str):
        self.sources, self.args, self.pool, self.tmp, self.rows = sources, args, pool, tmp, []

    def score(self, subsets: list[tuple[int, ...]]) -> list[dict]:
        """The rows of ``subsets`` with each way of combining; those that fit are scored."""
        work = []
        for subset in subsets:
            for combine in (self.args.combine or COMBINES) if len(subset) > 1 else (None,):
                path = Path(self.tmp, f"{len(self.rows)}.safetensors")
                members = [self.sources[i] for i in subset]
                pack(members, path, combine=combine or "probability", storage=self.args.storage)
                row = {"members": [str(m) for m in members], "combine": combine, "bytes": path.stat().st_size}
                self.rows.append(row)
                if row["bytes"] <= self.args.budget:
                    work.append((row, self.pool.submit(_score, path, self.args.limit)))
                else:
                    path.unlink()
        for row, future in work:
            row |= future.result()
            print(f"valid {row['members']} {row['combine']}: WER {row['wer']:.2f} / {row['wer_nostress']:.2f}, "
                  f"{row['bytes']:,} bytes {self.args.storage}", flush=True)  # fmt: skip
        return [row for row, _ in work]


def _best(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: (r["wer"], len(r["members"])))


def search_all(found: Candidates, n: int) -> None:
    for size in range(1, n + 1):
        if not found.score(list(itertools.combinations(range(n), size))):
            break  # none of this size fits, so no larger one will


def search_forward(found: Candidates, n: int) -> None:
    best = _best(found.score([(i,) for i in range(n)]))
    while len(best["members"]) < n:
        chosen = tuple(found.sources.index(Path(m)) for m in best["members"])
        fits = found.score([chosen + (i,) for i in range(n) if i not in chosen])
        if not fits or _best(fits)["wer"] >= best["wer"]:
            break
        best = _best(fits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, help="checkpoints or run folders (their best.safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md are written")
    parser.add_argument("--packed", type=Path, default=Path("runs/g2p-ensemble.safetensors"), help="the chosen, packed")
    parser.add_argument("--budget", type=int, default=BUDGET, help="bytes the packed file may take")
    parser.add_argument("--storage", choices=("int8", "int4"), default="int8", help="how the weights are packed")
    parser.add_argument("--search", choices=("all", "forward"), default="all", help="which candidates are scored")
    parser.add_argument("--limit", type=int, help="score N evenly spaced words of each split (a smoke run)")
    parser.add_argument("--combine", choices=COMBINES, action="append", help="only this way of combining (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="candidates scored at once, one thread each")
    args = parser.parse_args()
    sources = [s / "best.safetensors" if s.is_dir() else s for s in args.sources]
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        found = Candidates(sources, args, pool, tmp)
        (search_all if args.search == "all" else search_forward)(found, len(sources))
    candidates = found.rows
    chosen = _best([r for r in candidates if "wer" in r])
    single = _best([r for r in candidates if len(r["members"]) == 1])
    packed = args.packed
    pack(chosen["members"], packed, combine=chosen["combine"] or "probability", storage=args.storage)
    shipped = G2P.load(packed)
    best = G2P.load(single["members"][0])
    test = {"chosen": scored(shipped, "test", args.limit), "best single": scored(best, "test", args.limit)}
    doc = {
        "threads": torch.get_num_threads(),
        "limit": args.limit,
        "budget_bytes": args.budget,
        "storage": args.storage,
        "search": args.search,
        "valid": candidates,
        "chosen": {k: chosen[k] for k in ("members", "combine", "bytes")},
        "packed": {"path": str(packed), "bytes": packed.stat().st_size},
        "test": test,
    }
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    rows = [
        f"| split | members | combine | {args.storage} bytes | WER | PER | WER no stress | PER no stress | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    short = [" + ".join(Path(m).parent.name + "/" + Path(m).name for m in r["members"]) for r in candidates]
    for name, r in zip(short, candidates):
        figures = [f"{r[k]:.2f}" for k in KEYS] + [str(r["seconds"])] if "wer" in r else ["over budget"] + [""] * 4
        rows.append(f"| valid | {name} | {r['combine'] or '-'} | {r['bytes']:,} | " + " | ".join(figures) + " |")
    for name, r in test.items():
        rows.append(f"| test | {name} | | | " + " | ".join(f"{r[k]:.2f}" for k in KEYS) + f" | {r['seconds']} |")
    args.out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
