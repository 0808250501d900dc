"""Models built from attnkit's modules: encoder-decoders (RNN with every attention, Transformer)
and their decoding (greedy, beam search)."""

from .base import Decoded, Memory
from .decoding import Hypothesis, beam_search, greedy
from .rnn import ATTENTIONS, RNNConfig, RNNSeq2Seq
from .transformer import TransformerConfig, TransformerSeq2Seq

__all__ = [
    "ATTENTIONS",
    "Decoded",
    "Hypothesis",
    "Memory",
    "RNNConfig",
    "RNNSeq2Seq",
    "TransformerConfig",
    "TransformerSeq2Seq",
    "beam_search",
    "greedy",
]
