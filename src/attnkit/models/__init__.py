"""Models built from attnkit's modules: encoder-decoders (RNN with every attention, Transformer)
and their decoding (greedy, beam search); text classifiers with attention (RNN or CNN with
attention pooling, Transformer, hierarchical attention network, BCNN/ABCNN for sentence pairs)."""

from .abcnn import ABCNN, ABCNNConfig, match_matrix
from .base import Decoded, Memory
from .classify import (
    CLASSIFIERS,
    CNNClassifier,
    CNNClassifierConfig,
    RNNClassifier,
    RNNClassifierConfig,
    TransformerClassifier,
    TransformerClassifierConfig,
)
from .decoding import Hypothesis, beam_search, greedy
from .encoders import POOLINGS, Classified, Pooling, RNNEncoder
from .ensemble import Ensemble
from .han import HAN, HANConfig
from .rnn import ATTENTIONS, RNNConfig, RNNSeq2Seq
from .transformer import TransformerConfig, TransformerSeq2Seq

__all__ = [
    "ABCNN",
    "ATTENTIONS",
    "CLASSIFIERS",
    "HAN",
    "POOLINGS",
    "ABCNNConfig",
    "CNNClassifier",
    "CNNClassifierConfig",
    "Classified",
    "Decoded",
    "Ensemble",
    "HANConfig",
    "Hypothesis",
    "Memory",
    "Pooling",
    "RNNClassifier",
    "RNNClassifierConfig",
    "RNNConfig",
    "RNNEncoder",
    "RNNSeq2Seq",
    "TransformerClassifier",
    "TransformerClassifierConfig",
    "TransformerConfig",
    "TransformerSeq2Seq",
    "beam_search",
    "greedy",
    "match_matrix",
]
