"""Copy a trained G2P checkpoint into the package as the shipped default, in float16.

    python benchmarks/g2p/ship.py runs/g2p-main/best.safetensors

float16 halves the file (the package must stay small); the weights are read back into float32.
"""

import sys
from pathlib import Path

import torch

from attnkit.tasks.g2p import G2P
from attnkit.train import checkpoint


def main(source: str) -> None:
    tensors, meta = checkpoint.load(source)
    meta.pop("format")
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith("model.")}
    target = G2P.shipped_path()
    checkpoint.save(target, half, {"task": meta["task"], "train": meta["train"], "progress": meta["progress"]})
    print(f"{target}: {target.stat().st_size / 2**20:.2f} MiB")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path("runs/g2p-main/best.safetensors")))
