"""Grapheme-to-phoneme conversion on the CMU Pronouncing Dictionary: data, objective, metrics,
and the inference wrapper behind ``attnkit pronounce``.

Its modules, each using only those above it:
- :mod:`.metrics`: WER and PER (:func:`score`), per word-length bucket (:func:`by_length`).
- :mod:`.doc`: the model kinds (:func:`build_model`) and a checkpoint's task document (:class:`G2PDoc`).
- :mod:`.decode`: decoding lists of words (:func:`decode_words`).
- :mod:`.predictor`: inference, :class:`G2P` (``G2P.load()`` is the shipped model).
- :mod:`.align`: a letter-to-phoneme alignment read from the attention, as text (:func:`align`).
- :mod:`.task`: the training task, :class:`G2PTask`, and a teacher's targets for distillation.
- :mod:`.packing`: checkpoints packed into one model or ensemble (:func:`pack`).
"""

# Names outside __all__ are re-exported too (``X as X``), so that every import from before the split
# keeps working (decode_words is imported by the benchmarks, the experiments and attnkit.bench).
from .alignment import align, alignment_text
from .decode import decode_words as decode_words
from .decode import positions
from .doc import MAX_LONGEST as MAX_LONGEST
from .doc import MODELS, G2PDoc, build_model
from .doc import _checkpoint_file as _checkpoint_file
from .doc import _config as _config
from .doc import _ensemble as _ensemble
from .metrics import LENGTHS, by_length, edit_distance, score
from .packing import _BITS as _BITS
from .packing import _MODEL as _MODEL
from .packing import _RUN_ONLY as _RUN_ONLY
from .packing import STORAGES, pack
from .predictor import G2P, SHIPPED, LengthLimitWarning, Pronunciation, shown
from .task import TARGETS, VALID_PHRASES, G2PTask, teacher_targets
from .task import _check_limit as _check_limit

__all__ = [
    "G2P", "LENGTHS", "MODELS", "SHIPPED", "STORAGES", "TARGETS", "VALID_PHRASES", "G2PDoc", "G2PTask",
    "LengthLimitWarning", "Pronunciation", "align", "alignment_text", "build_model", "by_length", "edit_distance",
    "pack", "positions", "score", "shown", "teacher_targets",
]  # fmt: skip
