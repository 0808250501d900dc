"""Data: vocabularies and the datasets the models train on, each read from an installed package."""

from . import cmudict
from .vocab import BOS, EOS, PAD, Vocab

__all__ = ["BOS", "EOS", "PAD", "Vocab", "cmudict"]
