"""
Soft, sparse, hard and local attention
======================================

One score matrix, normalized five ways: softmax (soft, global), sparsemax (exact zeros), hard
(argmax: one key per query), top-k (softmax over the 2 best keys) and a local window of one key on
each side of the query's own position.
"""

import torch

import attnkit
from attnkit import NORMALIZERS
from attnkit.viz import static

torch.manual_seed(1)
q, k = torch.randn(1, 8, 16), torch.randn(1, 8, 16)  # (B, Tq, D), (B, Tk, D)
kinds = {
    "softmax": dict(normalize="softmax"),
    "sparsemax": dict(normalize="sparsemax"),
    "hard": dict(normalize="hard"),
    "top-2": dict(normalize=NORMALIZERS["topk"](k=2)),
    "local, window 1": dict(window=1),
}
rows = [attnkit.attention(q, k, k, need_weights=True, **kw)[1][0] for kw in kinds.values()]
static.grid(torch.stack(rows).unsqueeze(0), [f"t{i}" for i in range(8)], "soft_hard_local.png",
            layers=["weights"], title=" | ".join(kinds))
for name, w in zip(kinds, rows):
    print(f"{name:16s} keys with weight > 0 per query: {(w > 0).sum(-1).float().mean():.2f}")
