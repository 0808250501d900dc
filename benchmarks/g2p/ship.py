"""Copy trained G2P checkpoints into the package as a shipped model.

    python benchmarks/g2p/ship.py runs/g2p-main/best.safetensors                 # the accurate model, float16
    python benchmarks/g2p/ship.py runs/a/chosen.safetensors runs/b/best.safetensors --storage int8
    python benchmarks/g2p/ship.py runs/g2p-fast2 --name fast --beam 1 --int8     # the fast model, as choose_fast.py chose

Several checkpoints ship as one ensemble (:func:`attnkit.tasks.g2p.pack`): its members' next-token
distributions are averaged at every decoding step. float16 halves the file, int8 (per-row scales)
quarters it, so that the package stays small; the weights are read back into float32. ``--beam``
and ``--int8`` are how G2P decodes it by default (the checkpoint's ``decoding``; without them, beam 5
in float32).
"""

import argparse
import os

import torch

from attnkit.bench.measure import fmt_mib
from attnkit.models.ensemble import COMBINES
from attnkit.tasks.g2p import G2P, STORAGES, pack
from attnkit.tasks.g2p.predictor import NAMED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="checkpoints (or run folders: their best.safetensors)")
    parser.add_argument("--storage", choices=STORAGES, default="float16")
    parser.add_argument("--combine", choices=COMBINES, default="probability", help="an ensemble's mean")
    parser.add_argument("--name", choices=list(NAMED), default="accurate", help="which shipped model it becomes")
    parser.add_argument("--beam", type=int, help="its default beam (with --int8: its decoding; default: none written)")
    parser.add_argument("--int8", action="store_true", help="decode it with int8 products by default")
    parser.add_argument("--out", default=None, help="where to write (default: the package's shipped model)")
    args = parser.parse_args()
    target = G2P.shipped_path(args.name) if args.out is None else args.out
    decoding = None if args.beam is None and not args.int8 else {"beam": args.beam or 5, "int8": args.int8}
    pack(args.sources, target, combine=args.combine, storage=args.storage, decoding=decoding)
    size = os.path.getsize(target)
    print(
        f"{target}: {size:,} bytes ({fmt_mib(size, 2)} MiB), {len(args.sources)} model(s), {args.storage}, {decoding}"
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
