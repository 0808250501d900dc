"""The specification layer: score functions, normalizers, masks and the eager reference.

Nothing here imports the backends, modules, models or command line.
"""

from . import masks
from .functional import AttentionResult, Call, prepare, reference
from .normalizers import NORMALIZERS, reinforce_loss
from .scores import SCORES

__all__ = ["AttentionResult", "Call", "prepare", "reference", "SCORES", "NORMALIZERS", "masks", "reinforce_loss"]
