"""
The three steps: score, normalize, aggregate
============================================

``attnkit.attention`` scores each query against each key, normalizes the scores into weights, and
aggregates the values with them. The weights of one call, as a heatmap (rows: queries, columns: keys).
"""

import torch

import attnkit
from attnkit.viz import static

torch.manual_seed(0)
q, k, v = torch.randn(1, 5, 16), torch.randn(1, 7, 16), torch.randn(1, 7, 8)  # (B, Tq, D), (B, Tk, D), (B, Tk, Dv)
out, w = attnkit.attention(q, k, v, score="scaled_dot", normalize="softmax", need_weights=True)
assert torch.allclose(w.sum(-1), torch.ones(1, 5))  # every row of weights sums to 1
assert torch.allclose(out, w @ v, atol=1e-6)  # aggregate: the weighted sum of the values
static.heatmap(w[0], [f"q{i}" for i in range(5)], [f"k{j}" for j in range(7)], "three_steps.png",
               title="scaled_dot + softmax")
