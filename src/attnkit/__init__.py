"""attnkit: every kind of attention, as PyTorch functions and modules.

Attention(Query, Source) = Σ_j normalize(score(q, k_j)) · v_j, in three steps: score -> normalize
-> aggregate. Shape legend for the whole package: B batch, H heads, Tq query positions, Tk key
positions, D model dim, Dh head dim. Masks: True = may attend.
"""

from . import backends
from .backends import attention
from .core import NORMALIZERS, SCORES, masks, reinforce_loss
from .errors import AttentionError
from .modules import Attention, AttentionPooling, HierarchicalAttention, KVCache, MultiHeadAttention, capture

__all__ = [
    "attention",
    "backends",
    "SCORES",
    "NORMALIZERS",
    "masks",
    "reinforce_loss",
    "AttentionError",
    "Attention",
    "MultiHeadAttention",
    "KVCache",
    "AttentionPooling",
    "HierarchicalAttention",
    "capture",
]
__version__ = "0.1.0"
