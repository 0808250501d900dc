"""``nn.Module`` layer: batch-first modules built on the functional core."""

from .attention import Attention
from .capture import Recorder, capture
from .multihead import MultiHeadAttention
from .pooling import AttentionPooling, HierarchicalAttention, HierarchicalResult

__all__ = ["capture", "Recorder", "Attention", "MultiHeadAttention", "AttentionPooling", "HierarchicalAttention", "HierarchicalResult"]
