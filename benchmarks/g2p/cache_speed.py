"""Transformer greedy decoding with and without the key/value cache: how its time grows with the
output length. A random ``TransformerSeq2Seq`` with the default config, a batch of 32 sources of 10
letters, one thread; EOS is never chosen (its output bias is -1e9), so every run takes exactly its
number of steps. Prints the median of ``--repeats`` runs per length and the ratio 128 steps / 16 steps.

    python benchmarks/g2p/cache_speed.py   # on an otherwise idle machine
"""

import argparse
import statistics
import time

import torch

from attnkit.data.vocab import EOS
from attnkit.models import TransformerConfig, TransformerSeq2Seq, greedy


def seconds(model: TransformerSeq2Seq, src: torch.Tensor, steps: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        hyps = greedy(model, src, max_len=steps)
        times.append(time.perf_counter() - start)
        assert all(len(h.tokens) == steps for h in hyps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs=2, default=(16, 128))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TransformerSeq2Seq(TransformerConfig(src_vocab=32, tgt_vocab=90)).eval()
    with torch.no_grad():
        model.out.bias[EOS] = -1e9
    src = torch.randint(3, 32, (32, 10))
    greedy(model, src, max_len=4)  # warm-up
    short, long = args.lengths
    print(f"greedy, B=32, S=10, default TransformerConfig, 1 thread, median of {args.repeats}")
    for use_cache in (False, True):
        model.use_cache = use_cache
        t_short, t_long = (seconds(model, src, n, args.repeats) for n in (short, long))
        print(
            f"use_cache={use_cache!s:5}  {short} steps {t_short:.3f} s  {long} steps {t_long:.3f} s  "
            f"ratio {t_long / t_short:.1f}x"
        )


if __name__ == "__main__":
    main()
