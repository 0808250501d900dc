"""
Self, cross and causal attention
================================

Self-attention: queries, keys and values from the same sequence. Cross-attention: queries from one
sequence (a decoder's), keys and values from another (the encoder's). Causal self-attention: each
position attends only to itself and the positions before it (``causal=True``, or
``mask=attnkit.masks.causal()``; masks are True where a query may attend).
"""

import torch

import attnkit
from attnkit.viz import static

torch.manual_seed(0)
x, source = torch.randn(1, 6, 16), torch.randn(1, 9, 16)  # (B, T, D), (B, S, D)
mha = attnkit.MultiHeadAttention(16, 2).eval()
causal = attnkit.MultiHeadAttention(16, 2, causal=True).eval()
_, w_self = mha(x, need_weights=True)  # (B, Tq, Tk), averaged over heads
_, w_causal = causal(x, need_weights=True)
_, w_cross = mha(x, source, source, need_weights=True)
assert w_causal[0].triu(1).eq(0).all()  # nothing above the diagonal: no looking ahead
tokens = [f"x{i}" for i in range(6)]
static.heatmap(w_self[0], tokens, tokens, "self.png", title="self-attention")
static.heatmap(w_causal[0], tokens, tokens, "causal.png", title="causal self-attention")
static.heatmap(w_cross[0], tokens, [f"s{j}" for j in range(9)], "cross.png", title="cross-attention", xlabel="source")
