"""The specification layer: score functions, normalizers, masks and the functional ``attention``.

Nothing here imports the modules, models or command line.
"""

from . import masks
from .functional import AttentionResult, attention
from .normalizers import NORMALIZERS, reinforce_loss
from .scores import SCORES

__all__ = ["attention", "AttentionResult", "SCORES", "NORMALIZERS", "masks", "reinforce_loss"]
