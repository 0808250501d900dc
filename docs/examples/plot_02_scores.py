"""
Each score function
===================

The same queries and keys under every score of ``attnkit.SCORES`` (parameters drawn by each score's
``init_params``), one panel per score. ``concat``'s rows are all alike: with softmax its weights do
not depend on the query.
"""

import torch

import attnkit
from attnkit.viz import static

torch.manual_seed(0)
q, k = torch.randn(1, 6, 8), torch.randn(1, 6, 8)  # (B, Tq, D), (B, Tk, D)
names = ["dot", "scaled_dot", "general", "cosine", "concat", "additive"]
panels = []
for name in names:
    params = attnkit.SCORES[name].init_params(8, 8) if name in ("general", "concat", "additive") else None
    _, w = attnkit.attention(q, k, k, score=name, score_params=params, need_weights=True)
    panels.append(w[0])
weights = torch.stack(panels).unsqueeze(0)  # (L=1, H=scores, Tq, Tk)
tokens = [f"t{i}" for i in range(6)]
static.grid(weights, tokens, "scores.png", layers=["score"], title="dot | scaled_dot | general | cosine | concat | additive")
for name in names:
    print(name, ":", attnkit.SCORES[name].formula)
