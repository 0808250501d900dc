"""The specification layer: score functions, normalizers, masks and the eager reference.

Nothing here imports the backends, modules, models or command line.
"""

from . import masks, positions
from .functional import AttentionResult, Call, prepare, reference
from .linear import FEATURE_MAPS, linear_attention
from .normalizers import NORMALIZERS, reinforce_loss
from .scores import SCORES

__all__ = [
    "FEATURE_MAPS",
    "NORMALIZERS",
    "SCORES",
    "AttentionResult",
    "Call",
    "linear_attention",
    "masks",
    "positions",
    "prepare",
    "reference",
    "reinforce_loss",
]
