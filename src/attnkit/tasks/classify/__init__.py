"""Text classification on WordNet: the three tasks the trainer runs, their metrics, and the
inference wrapper behind ``attnkit eval`` and ``attnkit explain``.

Tasks (:data:`TASKS`) and the models that read their input (:data:`attnkit.models.CLASSIFIERS`):

- ``gloss``: a synset's definition -> its supersense (45 classes). Models ``rnn``, ``cnn``,
  ``transformer``.
- ``document``: the definition and every example, sentence by sentence -> the supersense. Model
  ``han``; ``rnn``, ``cnn`` and ``transformer`` read the sentences joined into one text (the
  baseline the hierarchy is compared with).
- ``pair``: (definition, example) -> match (2 classes: ``other``, ``match``). Models ``bcnn``,
  ``abcnn1``, ``abcnn2``, ``abcnn3``.

Text becomes ids by :func:`attnkit.data.wordnet.tokenize`; each sentence keeps its first
:data:`MAX_WORDS` words, a document its first :data:`MAX_SENTENCES` sentences (joined into one
text for a text model), and no sequence is longer than the model's ``max_len`` where it has one; a
sentence without a word is dropped. A split's examples are ordered by crc32 of their synset id (a
fixed shuffle), so that the first N (``limit``) are a sample of every supersense rather than the
first lexicographer files. The word vocabulary is the
training examples' words seen at least ``min_count`` times, after ``<unk>``, which stands for the
others. With ``vectors="minilm"`` the embedding table starts from pretrained word vectors
(:mod:`attnkit.data.vectors`) fitted to the model's embedding width, and ``freeze_vectors`` keeps
it fixed; the pair task needs them (without, every pair model stays at chance).

Metrics (:func:`score`), in %: ``accuracy`` for every task (what early stopping follows); for
``pair`` also ``f1`` of the match class and ``map``: the mean, over definitions with a positive and a
negative example, of the average precision of their examples ranked by P(match).
"""

# Names outside __all__ are re-exported too (``X as X``), so that every import from before the split
# keeps working (the benchmarks import _records).
from .build import _check_names as _check_names
from .build import _config as _config
from .build import build_model
from .build import load_vectors as load_vectors
from .data import DEFAULT_MODEL, MAX_SENTENCES, MAX_WORDS, TASKS
from .data import PAIR_LABELS as PAIR_LABELS
from .data import Encoder as Encoder
from .data import _label as _label
from .data import _length as _length
from .data import _records as _records
from .data import _texts as _texts
from .data import collate as collate
from .data import labels_of as labels_of
from .doc import ClassifyDoc
from .metrics import _average_precision as _average_precision
from .metrics import predict as predict
from .metrics import score
from .predictor import _SENTENCE_END as _SENTENCE_END
from .predictor import Classifier, Explanation
from .task import _PADDED as _PADDED
from .task import ClassifyTask

__all__ = [
    "DEFAULT_MODEL",
    "MAX_SENTENCES",
    "MAX_WORDS",
    "TASKS",
    "Classifier",
    "ClassifyDoc",
    "ClassifyTask",
    "Explanation",
    "build_model",
    "score",
]
