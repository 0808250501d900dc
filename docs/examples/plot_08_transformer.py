"""
The Transformer: self, causal and cross attention in one model
==============================================================

A small (untrained) ``TransformerSeq2Seq`` built from attnkit's modules; ``attnkit.capture``
records every attention call by module name. Shown: every head of the decoder's last
cross-attention (phonemes over letters) and of its causal self-attention.
"""

import torch

import attnkit
from attnkit.models import TransformerConfig, TransformerSeq2Seq
from attnkit.viz import static

torch.manual_seed(0)
model = TransformerSeq2Seq(TransformerConfig(src_vocab=32, tgt_vocab=90, d_model=64, heads=4)).eval()
src, tgt = torch.randint(3, 32, (1, 7)), torch.randint(3, 90, (1, 5))
with attnkit.capture(model) as rec:
    model(src, tgt)
print(rec.names())
cross = rec["decoder.2.cross_attn"]  # (B, H, Tq, Tk)
self_attn = rec["decoder.2.self_attn"]
tokens = [f"y{i}" for i in range(5)]
static.grid(cross, tokens, "transformer_cross.png", keys=[f"x{j}" for j in range(7)],
            layers=["decoder.2.cross_attn"])
static.grid(self_attn, tokens, "transformer_causal.png", layers=["decoder.2.self_attn"])
