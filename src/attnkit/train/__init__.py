"""Training: one loop (:class:`Trainer`) for every task, and atomic safetensors checkpoints."""

from . import checkpoint
from .trainer import TrainConfig, Trainer, config_from_dict

__all__ = ["TrainConfig", "Trainer", "checkpoint", "config_from_dict"]
