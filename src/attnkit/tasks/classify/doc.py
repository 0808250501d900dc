"""The checkpoint document: :class:`ClassifyDoc`, the ``task`` metadata of a classifier
checkpoint, checked field by field on load."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import AttentionError
from ...train import checkpoint
from .build import _check_names

__all__ = ["ClassifyDoc"]


@dataclass
class ClassifyDoc:
    """The ``task`` document of a classifier checkpoint (:meth:`ClassifyTask.describe`): checked
    field by field on load. Checkpoints from before pretrained vectors lack the last three fields."""

    name: str  # "classify"
    task: str  # a key of TASKS
    model: str  # a key of CLASSIFIERS
    model_config: dict  # fields of the model's config, vocab and classes aside
    limit: int | None
    valid_limit: int | None
    words: list[str]  # the word vocabulary after the specials
    labels: list[str]  # the class names
    min_count: int = 2
    vectors: str = "none"
    freeze_vectors: bool = False

    def __post_init__(self):
        _check_names(self.task, self.model)
        if not self.labels:
            raise AttentionError("labels is empty")

    @classmethod
    def read(cls, meta: dict, path) -> ClassifyDoc:
        """The checked task document of the checkpoint metadata ``meta`` read from ``path``."""
        return checkpoint.read_task(cls, meta, path, "classify", "a classifier")
