"""Inference speed of the G2P models side by side, in one process: words per second on the first
2,000 test words, greedy and beam 5, batches of 256. Writes ``words_per_s`` into results.json.
The shipped model beside the peers, on the whole test split: inference.py.

    python benchmarks/g2p/speed.py   # after compare.py; run it on an otherwise idle machine
"""

import json
import time
from pathlib import Path

import torch

from attnkit.bench.g2p_runs import MODELS, SHIPPED, slug
from attnkit.data import cmudict
from attnkit.tasks.g2p import G2P, decode_words

WORDS = 2000


def main() -> None:
    here = Path(__file__).parent
    path = here / "results.json"
    results = json.loads(path.read_text())
    words = [e.word for e in cmudict.load("test")[:WORDS]]
    runs = {name: Path("runs/compare") / slug(name) for name in MODELS}
    runs |= {n: Path(run) / file for n, (_, run, file) in SHIPPED.items()}
    for name, run in runs.items():
        if name not in results:
            continue
        g2p = G2P.load(run)
        speeds = {}
        for beam in (1, 5):
            decode_words(g2p.model, words[:256], g2p.letters, g2p.phonemes, beam=beam)  # warm-up
            started = time.perf_counter()
            decode_words(g2p.model, words, g2p.letters, g2p.phonemes, beam=beam)
            speeds[beam] = WORDS / (time.perf_counter() - started)
        results[name]["words_per_s"] = speeds[5]
        results[name]["words_per_s_greedy"] = speeds[1]
        results[name]["speed_threads"] = torch.get_num_threads()
        print(f"{name}: {speeds[1]:.0f} words/s greedy, {speeds[5]:.0f} beam 5 ({torch.get_num_threads()} threads)")
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
