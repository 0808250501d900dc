"""
Multi-head attention: every head
================================

``MultiHeadAttention(D, H)`` runs H attentions of head dim D/H side by side; with
``average_weights=False`` it returns each head's weights (B, H, Tq, Tk). Two layers of a small
Transformer encoder, read with ``attnkit.capture``, drawn as a grid of layers x heads.
"""

import torch

import attnkit
from attnkit.viz import static

torch.manual_seed(0)
layers = torch.nn.ModuleList(attnkit.MultiHeadAttention(32, 4) for _ in range(2)).eval()
x = torch.randn(1, 8, 32)  # (B, T, D)
_, per_head = layers[0](x, need_weights=True, average_weights=False)
assert per_head.shape == (1, 4, 8, 8)  # (B, H, Tq, Tk)
with attnkit.capture(layers) as rec:
    h = x
    for layer in layers:
        h = h + layer(h).output
weights = torch.stack([rec[name][0] for name in rec.names()])  # (L, H, Tq, Tk)
static.grid(weights, [f"x{i}" for i in range(8)], "heads.png", layers=rec.names())
