"""The checkpoint of a G2P model: the model kinds (:data:`MODELS`, :func:`build_model`), the task
document a checkpoint carries (:class:`G2PDoc`), and reading a checkpoint's file and ensemble entry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from ...data.vocab import SPECIALS
from ...errors import AttentionError
from ...models import RNNConfig, RNNSeq2Seq, TransformerConfig, TransformerSeq2Seq
from ...models.ensemble import COMBINES
from ...models.limits import MAX_MEMBERS
from ...train import checkpoint, config_from_dict

__all__ = ["MODELS", "G2PDoc", "build_model"]

MODELS = {"rnn": (RNNConfig, RNNSeq2Seq), "transformer": (TransformerConfig, TransformerSeq2Seq)}
MAX_LONGEST = 2**20  # the most letters a task document's ``longest`` training source may claim


def build_model(kind: str, config: dict, src_vocab: int, tgt_vocab: int, *, what: str | None = None) -> nn.Module:
    """A seq2seq model named ``kind`` ("rnn" or "transformer") with ``config``'s fields; ``what``
    names the config in error messages (default ``"KIND config"``)."""
    return MODELS[kind][1](_config(kind, config, src_vocab, tgt_vocab, what))


def _config(kind: str, config: dict, src_vocab: int, tgt_vocab: int, what: str | None = None):
    """The checked config dataclass of :func:`build_model` (sizes bounded: nothing is built yet)."""
    if kind not in MODELS:
        raise AttentionError(f"model={kind!r} is unknown; expected one of {sorted(MODELS)}")
    what = what or f"{kind} config"
    return config_from_dict(MODELS[kind][0], {**config, "src_vocab": src_vocab, "tgt_vocab": tgt_vocab}, what)


@dataclass
class G2PDoc:
    """The ``task`` document of a G2P checkpoint (:meth:`G2PTask.describe`): checked field by field
    on load, so that a damaged file is one error that names the field."""

    name: str  # "g2p"
    model: str  # a key of MODELS
    model_config: dict  # fields of RNNConfig / TransformerConfig, vocab sizes aside
    limit: int | None
    valid_limit: int | None
    letters: list[str]  # the input vocabulary, specials first
    phonemes: list[str]  # the output vocabulary, specials first
    phrases: int | None = None  # a phrase model's training phrases (older checkpoints: None, words)
    max_words: int = 8  # a phrase model's words per phrase, at most
    teacher: dict | None = None  # a distilled model's teacher: {"path", "sha256", "distil"}
    init: dict | None = None  # the checkpoint a run started from: {"path", "sha256"}
    longest: int | None = None  # letters of the longest training source (older checkpoints: None)
    train_lexicon: dict | None = None  # a run trained on a lexicon file: {"path", "sha256"}

    def __post_init__(self):
        if self.longest is not None and not (type(self.longest) is int and 1 <= self.longest <= MAX_LONGEST):
            raise AttentionError(f"longest must be an int in 1..{MAX_LONGEST}, got {self.longest!r}")
        for name in ("letters", "phonemes"):
            symbols = getattr(self, name)
            if tuple(symbols[: len(SPECIALS)]) != SPECIALS:
                raise AttentionError(f"{name} must begin with {list(SPECIALS)}, got {symbols[: len(SPECIALS)]}")
        for name, keys in (
            ("teacher", ("path", "sha256", "distil")),
            ("init", ("path", "sha256")),
            ("train_lexicon", ("path", "sha256")),
        ):
            entry = getattr(self, name)
            if entry is not None and (not isinstance(entry, dict) or set(entry) != set(keys)):
                raise AttentionError(f"{name} must hold {list(keys)}, got {entry!r}")

    def sources(self) -> dict:
        """The ``teacher``, ``distil``, ``init`` and ``train_lexicon`` arguments of the
        :class:`G2PTask` that wrote this document (the inverse of its ``describe``), for a resumed run."""
        out = {} if self.init is None else {"init": self.init["path"]}
        if self.train_lexicon is not None:
            out["train_lexicon"] = self.train_lexicon["path"]
        if self.teacher is not None:
            out |= {"teacher": self.teacher["path"], "distil": self.teacher["distil"]}
        return out

    @classmethod
    def read(cls, meta: dict, path) -> G2PDoc:
        """The checked task document of the checkpoint metadata ``meta`` read from ``path``."""
        return checkpoint.read_task(cls, meta, path, "g2p", "a g2p model")


def _checkpoint_file(path: str | Path) -> Path:
    """A checkpoint given as its file or as its run folder (whose ``best.safetensors`` it is)."""
    path = Path(path)
    return path / "best.safetensors" if path.is_dir() else path


def _ensemble(doc, tensors: dict[str, Tensor]) -> tuple[int, str | None]:
    """(members, combine) of a checkpoint's ``ensemble`` document, checked against the members whose
    ``tensors`` the file holds (before any is built); (1, None) for a single model."""
    if doc is None:
        return 1, None
    members, combine = (doc.get(k) if isinstance(doc, dict) else None for k in ("members", "combine"))
    if not (type(members) is int and 1 <= members <= MAX_MEMBERS) or combine not in COMBINES:
        raise AttentionError(
            f"ensemble must be {{'members': an int in 1..{MAX_MEMBERS}, 'combine': one of {list(COMBINES)}}}, "
            f"got {doc!r:.200}"
        )
    stored = len({k.split(".")[2] for k in tensors if k.startswith("model.members.") and k.count(".") >= 3})
    if stored != members:
        raise AttentionError(f"ensemble has members={members} but the file holds the weights of {stored}")
    return members, combine
