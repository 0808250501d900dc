"""A reference for the pair task: all-MiniLM-L6-v2 with no training on it, as a ceiling the small
pair models can be read against.

    OMP_NUM_THREADS=2 python benchmarks/classify/minilm_pair.py

The score is the cosine of the two texts' sentence embeddings (attnkit's BERT, ``load_minilm``):
P(match) = sigmoid(cosine - threshold), with the threshold that is best on the validation pairs, so
a pair is called a match when its cosine exceeds it and MAP ranks by cosine. Accuracy, F1 and MAP come from the same ``score`` as the trained models, on the test pairs.
Writes ``benchmarks/classify/minilm_pair.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from attnkit.models.bert import load_minilm
from attnkit.tasks.classify import _records, score


@torch.no_grad()
def embeddings(encoder, texts: list[str], batch: int = 128) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch):
        _, ids, mask = encoder.tokenize(texts[i : i + batch])
        out.append(encoder(ids, mask)[1])
    return torch.cat(out)


def cosines(encoder, split: str) -> tuple[torch.Tensor, list[int], list[str]]:
    pairs = _records("pair", split)
    first = embeddings(encoder, [p.first for p in pairs])
    second = embeddings(encoder, [p.second for p in pairs])
    return (first * second).sum(-1), [int(p.match) for p in pairs], [p.synset for p in pairs]


def best_threshold(cos: torch.Tensor, labels: list[int]) -> float:
    gold = torch.tensor(labels, dtype=torch.bool)
    candidates = cos.sort().values
    accuracy = [(cos.gt(t).eq(gold)).float().mean().item() for t in candidates]
    return candidates[max(range(len(candidates)), key=accuracy.__getitem__)].item()


def main() -> None:
    encoder = load_minilm()
    valid_cos, valid_labels, _ = cosines(encoder, "valid")
    threshold = best_threshold(valid_cos, valid_labels)
    cos, labels, groups = cosines(encoder, "test")
    p = torch.sigmoid(cos - threshold)  # > 0.5 exactly above the threshold, and ranks by cosine
    probs = torch.stack([1 - p, p], -1)
    figures = {**score(probs, labels, groups), "threshold": threshold, "examples": len(labels)}
    print(json.dumps(figures, indent=2))
    (Path(__file__).parent / "minilm_pair.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
