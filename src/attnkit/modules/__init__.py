"""``nn.Module`` layer: batch-first modules built on the functional core."""

from .attention import Attention
from .capture import Recorder, capture
from .linear import LinearAttention, LinearState
from .multihead import KVCache, MultiHeadAttention
from .pooling import AttentionPooling, HierarchicalAttention, HierarchicalResult, MaskedEncoder

__all__ = [
    "Attention",
    "AttentionPooling",
    "HierarchicalAttention",
    "HierarchicalResult",
    "KVCache",
    "LinearAttention",
    "LinearState",
    "MaskedEncoder",
    "MultiHeadAttention",
    "Recorder",
    "capture",
]
