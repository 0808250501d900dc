"""``nn.Module`` layer: batch-first modules built on the functional core."""

from .attention import Attention
from .multihead import MultiHeadAttention
from .pooling import AttentionPooling, HierarchicalAttention, HierarchicalResult

__all__ = ["Attention", "MultiHeadAttention", "AttentionPooling", "HierarchicalAttention", "HierarchicalResult"]
