"""Copy trained G2P checkpoints into the package as the shipped default.

    python benchmarks/g2p/ship.py runs/g2p-main/best.safetensors                 # one model, float16
    python benchmarks/g2p/ship.py runs/a/chosen.safetensors runs/b/best.safetensors --storage int8

Several checkpoints ship as one ensemble (:func:`attnkit.tasks.g2p.pack`): its members' next-token
distributions are averaged at every decoding step. float16 halves the file, int8 (per-row scales)
quarters it, so that the package stays small; the weights are read back into float32.
"""

import argparse
import os

import torch

from attnkit.bench.measure import fmt_mib
from attnkit.models.ensemble import COMBINES
from attnkit.tasks.g2p import G2P, STORAGES, pack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="checkpoints (or run folders: their best.safetensors)")
    parser.add_argument("--storage", choices=STORAGES, default="float16")
    parser.add_argument("--combine", choices=COMBINES, default="probability", help="an ensemble's mean")
    parser.add_argument("--out", default=None, help="where to write (default: the package's shipped model)")
    args = parser.parse_args()
    target = G2P.shipped_path() if args.out is None else args.out
    pack(args.sources, target, combine=args.combine, storage=args.storage)
    size = os.path.getsize(target)
    print(f"{target}: {size:,} bytes ({fmt_mib(size, 2)} MiB), {len(args.sources)} model(s), {args.storage}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
