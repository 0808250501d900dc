"""Packing G2P checkpoints into one that :meth:`~attnkit.tasks.g2p.G2P.load` reads (:func:`pack`): a
single model or an ensemble, stored as float16, int8 or int4."""

from __future__ import annotations

from pathlib import Path

from ...errors import AttentionError
from ...models.ensemble import COMBINES
from ...models.limits import MAX_MEMBERS
from ...train import checkpoint
from .doc import G2PDoc, _checkpoint_file
from .predictor import read_decoding

__all__ = ["STORAGES", "pack"]

STORAGES = ("float16", "int8", "int4")  # how pack stores the weights
_BITS = {"int8": 8, "int4": 4}  # the storages that quantize, and their bits
# the task fields pack's members share
_MODEL = ("name", "model", "model_config", "letters", "phonemes", "phrases", "max_words")
_RUN_ONLY = ("teacher", "init")  # task fields of how a run was trained, not of its model: pack keeps them per member


def pack(
    sources: list[str | Path],
    target: str | Path,
    *,
    combine: str = "probability",
    storage: str = "float16",
    trust_unchecked: bool = False,
    decoding: dict | None = None,
) -> dict:
    """Write the G2P checkpoints ``sources`` as one checkpoint at ``target`` that :meth:`G2P.load`
    reads: one source as a single model, several as an :class:`~attnkit.models.Ensemble` whose
    next-token distributions are combined by ``combine``. ``storage``: "float16" (half of float32),
    "int8" (:func:`~attnkit.train.checkpoint.quantize`, a quarter) or "int4" (an eighth, plus a
    float32 scale per 128 weights); each is read back into float32. The sources must be the same
    model over the same vocabularies; ``trust_unchecked`` reads sources without a checksum
    (:func:`~attnkit.train.checkpoint.load`). ``decoding``: how :class:`G2P` decodes it by default,
    ``{"beam": 1..100, "int8": bool}`` (chosen on the validation split); None: beam 5, float32.
    Returns the metadata."""
    if decoding is not None:
        read_decoding(decoding)
    if not sources:
        raise AttentionError("sources is empty; give at least one checkpoint")
    if len(sources) > MAX_MEMBERS:
        raise AttentionError(f"sources holds {len(sources)} checkpoints; an ensemble has at most {MAX_MEMBERS}")
    if storage not in STORAGES:
        raise AttentionError(f"storage={storage!r} is unknown; expected one of {list(STORAGES)}")
    if combine not in COMBINES:
        raise AttentionError(f"combine={combine!r} is unknown; expected one of {list(COMBINES)}")
    tensors, members, task = {}, [], None
    for i, source in enumerate(sources):
        path = _checkpoint_file(source)
        found, meta = checkpoint.load(path, trust_unchecked=trust_unchecked)
        G2PDoc.read(meta, path)
        if meta.get("ensemble") is not None:
            raise AttentionError(f"checkpoint {str(path)!r} is an ensemble already; give its members' checkpoints")
        if task is not None and any(meta["task"].get(k) != task.get(k) for k in _MODEL):
            raise AttentionError(f"checkpoint {str(path)!r} is another model or vocabulary than {str(sources[0])!r}")
        task = task or {k: v for k, v in meta["task"].items() if k not in _RUN_ONLY}
        prefix = "model." if len(sources) == 1 else f"model.members.{i}."
        tensors |= {prefix + k[len("model.") :]: v for k, v in found.items() if k.startswith("model.")}
        run = {k: meta["task"][k] for k in _RUN_ONLY if k in meta["task"]}
        members.append({"source": str(path), "train": meta.get("train"), "progress": meta.get("progress"), **run})
    if storage in _BITS:
        tensors = checkpoint.quantize(tensors, bits=_BITS[storage])
    else:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    meta = {"task": task, "storage": storage, "members": members}
    if decoding is not None:
        meta["decoding"] = dict(decoding)
    if len(sources) > 1:
        meta["ensemble"] = {"members": len(sources), "combine": combine}
    checkpoint.save(target, tensors, meta)
    return meta
