"""Data: vocabularies and the datasets the models train on, each read from an installed package."""

from . import cmudict, wordnet
from .vocab import BOS, EOS, PAD, UNK, Vocab

__all__ = ["BOS", "EOS", "PAD", "UNK", "Vocab", "cmudict", "wordnet"]
