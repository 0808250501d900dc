"""attnkit: every kind of attention, as PyTorch functions and modules.

Attention(Query, Source) = Σ_j normalize(score(q, k_j)) · v_j, in three steps: score -> normalize
-> aggregate. Shape legend for the whole package: B batch, H heads, Tq query positions, Tk key
positions, D model dim, Dh head dim. Masks: True = may attend.

The main job, pronouncing English words with the shipped G2P model (an attention seq2seq):

>>> [p.phones for p in attnkit.pronounce("cat attention")]  # doctest: +SKIP
[('K', 'AE1', 'T'), ('AH0', 'T', 'EH1', 'N', 'SH', 'AH0', 'N')]

``attnkit.G2P`` is its class (:class:`attnkit.tasks.g2p.G2P`: ``G2P.load(checkpoint)``, ``.pronounce``,
``.evaluate``); both load on first use, so ``import attnkit`` stays the attention kit alone.
"""

import functools

from . import backends
from .backends import attention
from .core import NORMALIZERS, SCORES, masks, positions, reinforce_loss
from .core.linear import FEATURE_MAPS, linear_attention
from .errors import AttentionError
from .modules import Attention, AttentionPooling, HierarchicalAttention, KVCache, MultiHeadAttention, capture
from .modules.linear import LinearAttention, LinearState

__all__ = [
    "FEATURE_MAPS",
    "G2P",
    "NORMALIZERS",
    "SCORES",
    "Attention",
    "AttentionError",
    "AttentionPooling",
    "HierarchicalAttention",
    "KVCache",
    "LinearAttention",
    "LinearState",
    "MultiHeadAttention",
    "attention",
    "backends",
    "capture",
    "linear_attention",
    "masks",
    "positions",
    "pronounce",
    "reinforce_loss",
]
__version__ = "0.1.0"


def pronounce(
    words,
    *,
    beam: int | None = None,
    precision: str = "fp32",
    stress: bool = True,
    model=None,
    trust_unchecked: bool = False,
    nbest: int | None = None,
    mass: float | None = None,
    lexicon=None,
    cmudict: bool = False,
) -> list:
    """Phonemes of ``words`` (a list of words, or one string of whitespace-separated words) from
    the shipped fast G2P model, ``model="accurate"`` (the shipped ensemble: slower, more accurate),
    or the checkpoint (file or run folder) ``model``: a list of
    :class:`~attnkit.tasks.g2p.Pronunciation` (``word``, ``phones``, attention ``weights``, ``cut``,
    ``source``, ``probability``) in the words' order. The model is loaded once per ``model`` and
    kept; the options are :meth:`attnkit.tasks.g2p.G2P.pronounce`'s (``beam`` 1 is greedy, None the
    model's own; ``precision`` fp32 or bf16; ``stress=False`` drops the stress digits; ``nbest`` and
    ``mass`` give each word a list of alternatives; ``lexicon`` and ``cmudict`` known pronunciations
    that win over the model)."""
    if isinstance(words, str):
        words = words.split()
    elif not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
        got = type(words).__name__ if not isinstance(words, (list, tuple)) else "a sequence holding non-strings"
        raise AttentionError(f"words must be a list of str or one str of whitespace-separated words, got {got}")
    key = None if model is None else str(model)
    return _loaded(key, trust_unchecked).pronounce(
        list(words),
        beam=beam,
        precision=precision,
        stress=stress,
        nbest=nbest,
        mass=mass,
        lexicon=lexicon,
        cmudict=cmudict,
    )


@functools.lru_cache(maxsize=4)
def _loaded(model: str | None, trust_unchecked: bool):
    from .tasks.g2p import G2P

    return G2P.load(model, trust_unchecked=trust_unchecked)


def __getattr__(name: str):
    if name == "G2P":  # loaded on first use: the G2P task's modules are not the kit's
        from .tasks.g2p import G2P

        return G2P
    raise AttributeError(f"module 'attnkit' has no attribute {name!r}")
