"""Bounds on the model a config may describe, checked when the config is built: before any allocation.

A config comes from command-line flags (``--hidden-dim``) or from a checkpoint's metadata, and a
model's constructor allocates what it says at once: ``hidden_dim=10**9`` asks for a 100 GB matrix,
``layers=10**9`` builds layers until memory runs out. Every model config (``RNNConfig``,
``TransformerConfig`` and the classifiers' configs) checks in ``__post_init__``

1. each size field against its kind's bound (:func:`check_fields`), with the message
   ``hidden_dim must be an int in 1..65536, got 1000000000``;
2. its own :meth:`size` (an upper bound on the parameters and buffer elements of the model it
   builds) against :data:`MAX_PARAMETERS` (:func:`check_size`): each field within its bound can
   still multiply into too much (``hidden_dim=65536`` with ``layers=64``).

The bounds are generous: far above any model attnkit trains (the largest, the default Transformer
G2P, holds 5.6M numbers; a classifier over a 100k-word vocabulary about 13M) and above the widths
and depths of published models, yet what passes them fits in a large machine's memory.
"""

from __future__ import annotations

from ..errors import AttentionError, check_int

__all__ = ["LAYERS", "LENGTH", "MAX_MEMBERS", "MAX_PARAMETERS", "SYMBOLS", "WIDTH", "attention_size", "check_fields",
           "check_size", "linear_size", "rnn_size", "score_size"]  # fmt: skip

WIDTH = 65_536  # a vector's width (embedding, hidden, model, feed-forward, channels, heads): GPT-3's widest is 49,152
LAYERS = 1_024  # layers of one stack: 10x the deepest published Transformers; tiny ones build in seconds
SYMBOLS = 2**24  # a vocabulary or a class count: 16.7M, 60x the largest tokenizers' 256k
LENGTH = 2**20  # positions (max_len) and windows: a 1M-position table; attnkit reads words and phrases
MAX_PARAMETERS = 2**31  # numbers one model holds: 8 GiB in float32 (32 GiB with AdamW's state), 400x the largest
MAX_MEMBERS = 64  # models in one ensemble (a packed checkpoint): published ensembles hold 2 to 10


def check_fields(config, *, symbols=(), widths=(), layers=(), lengths=()) -> None:
    """Raise unless each field of ``config`` named is an int from 1 to the bound of its kind:
    ``symbols`` :data:`SYMBOLS`, ``widths`` :data:`WIDTH`, ``layers`` :data:`LAYERS`, ``lengths``
    :data:`LENGTH`."""
    for names, bound in ((symbols, SYMBOLS), (widths, WIDTH), (layers, LAYERS), (lengths, LENGTH)):
        for name in names:
            check_int(name, getattr(config, name), 1, bound)


def check_size(config, fields: tuple[str, ...]) -> None:
    """Raise if ``config.size()`` is over :data:`MAX_PARAMETERS`; ``fields`` are the sizes the
    message shows."""
    size = config.size()
    if size > MAX_PARAMETERS:
        shown = ", ".join(f"{name}={getattr(config, name)}" for name in fields)
        raise AttentionError(
            f"{type(config).__name__} with {shown} describes a model of about {size:,} parameters, over the limit of "
            f"{MAX_PARAMETERS:,} (2**31); make it narrower, shallower or its vocabulary smaller"
        )


# -- upper bounds on what the building blocks hold (weights and biases) ------------------------------
def rnn_size(cell: str, inputs: int, hidden: int, layers: int, directions: int) -> int:
    """``nn.LSTM`` / ``nn.GRU`` of ``layers`` layers: per layer and direction, gates x hidden x
    (inputs + hidden + 2 biases); layers after the first read ``hidden x directions``."""
    gates = 4 if cell == "lstm" else 3
    first = directions * gates * hidden * (inputs + hidden + 2)
    return first + (layers - 1) * directions * gates * hidden * (hidden * directions + hidden + 2)


def score_size(query_dim: int, key_dim: int, hidden: int | None = None) -> int:
    """Any score of :data:`attnkit.SCORES`: at most (query_dim + key_dim + 1) x hidden + 1 (additive:
    W_q, W_k, v; general: W; concat: w; cosine: a temperature)."""
    return (query_dim + key_dim + 1) * (hidden or key_dim) + 1


def attention_size(dim: int) -> int:
    """``MultiHeadAttention(dim, heads)``: four projections with biases, and each head's score
    over ``dim / heads`` (at most the score of ``dim`` itself)."""
    return 4 * dim * (dim + 1) + score_size(dim, dim)


def linear_size(inputs: int, outputs: int) -> int:
    return (inputs + 1) * outputs
