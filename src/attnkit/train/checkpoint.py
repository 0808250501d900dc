"""Checkpoints: one safetensors file holding tensors plus a JSON document, written atomically.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed over
the old one (``os.replace``), so a killed run leaves either the previous checkpoint or the new one,
never half of one. The JSON (configs, progress, optimizer hyper-parameters) rides in the
safetensors header's metadata under the key ``attnkit``, so the tensors and the config that
explains them cannot drift apart.

Beside it, under ``attnkit.checksum``, the header holds ``"sha256:"`` and the SHA-256 of everything
else in the file (:func:`checksum`): the canonical form of every other metadata entry
(:func:`canonical_metadata`), then each tensor's name, dtype, shape and bytes, in name order. It is
checked on load, so a flipped bit in the weights, or a vocabulary, config field or ensemble setting
edited in the header, is an error, not a model that reads ``AA AA AA``. A checksum is not a
signature: it shows that a file is whole, not who wrote it, so the metadata is checked field by
field as well, and model sizes are bounded (:mod:`attnkit.models.limits`) before anything is built.

A file without that checksum is refused unless the caller trusts it (``trust_unchecked=True``;
``--trust-unchecked`` on the command line). That includes files of attnkit before this checksum,
whose ``attnkit.sha256`` covers the tensors alone: trusted, they load with that tensor checksum
checked, and :func:`resave` writes them again with the full one. A tensor holding NaN or infinity,
and a quantization scale below 0, is an error in every checkpoint. Integer storage (int8, int4)
is :mod:`attnkit.train.quantize`; its names are re-exported here.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import AttentionError, CheckpointError
from .quantize import GROUP as GROUP  # re-exported
from .quantize import SCALE as SCALE
from .quantize import SCALE4 as SCALE4
from .quantize import SCALES as SCALES
from .quantize import dequantize, quantize

__all__ = [
    "FORMAT",
    "CheckpointError",
    "average",
    "build_loaded",
    "canonical_metadata",
    "checksum",
    "dequantize",
    "digest",
    "load",
    "load_optimizer",
    "optimizer_tensors",
    "quantize",
    "read_meta",
    "read_task",
    "remove_temporaries",
    "resave",
    "save",
    "task_name",
    "write_json",
]

FORMAT = "attnkit/1"
CHECKSUM = "attnkit.checksum"  # the metadata key of the checksum of tensors and metadata (:func:`checksum`)
OLD_CHECKSUM = "attnkit.sha256"  # the key of the tensors-only checksum of older files (:func:`digest`)
_SCHEME = b"attnkit checksum 1\0"  # what the hash reads first: another scheme never collides with this one


def digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 (hex) of ``tensors``: each one's name, dtype, shape and bytes, in name order. What a
    run's document records of its teacher and start, and what older files held as ``attnkit.sha256``."""
    h = hashlib.sha256()
    _hash_tensors(h, tensors)
    return h.hexdigest()


def _hash_tensors(h, tensors: dict[str, Tensor]) -> None:
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        size = t.numel() * t.element_size()
        if size:
            h.update((ctypes.c_ubyte * size).from_address(t.data_ptr()))  # the raw bytes, any dtype, no numpy


def canonical_metadata(entries: dict[str, str]) -> bytes:
    """The bytes of a file's metadata that :func:`checksum` reads: every entry of the safetensors
    header's ``__metadata__`` (strings to strings) except :data:`CHECKSUM` itself, as a JSON list of
    ``[key, value]`` pairs sorted by key, without spaces, non-ASCII escaped. Each value is taken as
    stored (the ``attnkit`` entry is JSON text, hashed as that text), so any edit of any entry,
    an entry added or one removed, changes these bytes.

    >>> canonical_metadata({"b": "2", "attnkit.checksum": "sha256:...", "a": "[1, 2]"})
    b'[["a","[1, 2]"],["b","2"]]'
    """
    pairs = sorted([key, value] for key, value in entries.items() if key != CHECKSUM)
    return json.dumps(pairs, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def checksum(tensors: dict[str, Tensor], entries: dict[str, str]) -> str:
    """``"sha256:"`` and the SHA-256 (hex) of a file's ``tensors`` (as stored: int8 and int4 ones
    undequantized) and metadata ``entries``: a scheme tag, :func:`canonical_metadata`, then each
    tensor's name, dtype, shape and bytes in name order (:func:`digest`'s input)."""
    h = hashlib.sha256(_SCHEME)
    h.update(canonical_metadata(entries))
    _hash_tensors(h, tensors)
    return "sha256:" + h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        _write(path, data)
    except OSError as err:  # a full disk or a read-only folder: name the file it was writing
        if err.filename is None and err.errno is not None:
            err.filename = str(path)
        raise


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide the checkpoint from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself reaches the disk
    finally:
        os.close(dir_fd)


def remove_temporaries(folder: str | os.PathLike, names: list[str]) -> list[Path]:
    """Delete the temporary files (``.NAME.XXXXXXXX.tmp``) that writes of the files ``names`` in
    ``folder`` left when they were killed before their rename; returns them."""
    folder = Path(folder)
    found = sorted(p for name in names for p in folder.glob(f".{name}.*.tmp")) if folder.is_dir() else []
    for tmp in found:
        tmp.unlink(missing_ok=True)
    return found


def write_json(path: str | os.PathLike, doc) -> None:
    """Write ``doc`` as indented JSON, atomically."""
    _atomic_write(Path(path), (json.dumps(doc, indent=2) + "\n").encode())


def save(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict) -> None:
    """Write ``tensors`` and the JSON-able ``meta`` to ``path`` atomically."""
    from safetensors.torch import save as to_bytes

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    entries = {"attnkit": json.dumps({"format": FORMAT, **meta})}
    entries[CHECKSUM] = checksum(flat, entries)
    _atomic_write(Path(path), to_bytes(flat, metadata=entries))


def resave(path: str | os.PathLike, target: str | os.PathLike | None = None, *, meta: dict | None = None) -> Path:
    """Write the checkpoint ``path`` again, to ``target`` (default: in place), with the checksum of
    :func:`checksum`: for a file you trust that has none, or only the tensor checksum of older
    attnkit (checked here when there is one). The tensors are written as they are stored (int8 and
    int4 stay so) and the ``attnkit`` metadata as it is, with the entries of ``meta`` added or
    replaced; returns the path written.

    ``python -c "from attnkit.train import checkpoint; checkpoint.resave('old.safetensors')"``"""
    tensors, found = _read(path, tensors=True, trust_unchecked=True)
    target = Path(path if target is None else target)
    save(target, tensors, {k: v for k, v in found.items() if k != "format"} | (meta or {}))
    return target


def _read(path: str | os.PathLike, tensors: bool, trust_unchecked: bool = False) -> tuple[dict[str, Tensor], dict]:
    """The tensors (when asked for, checked against the checksum) and the JSON of one checkpoint,
    from one open of the file.

    A writer may replace the file at any moment (``os.replace`` of a new one), so everything is
    read through a single file handle: the whole file for the tensors (``safe_open`` may map the
    path a second time and mix the old header with the new tensors), the header alone for the JSON.
    Without the tensors nothing is verified: :func:`read_meta`'s callers load the file before
    they rely on more than its task's name.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as from_bytes

    path = Path(path)
    if not path.is_file():  # say what is there instead: nothing, a folder, or a device, pipe or socket
        what = (
            "does not exist"
            if not path.exists()
            else "is a folder, not a checkpoint"
            if path.is_dir()
            else "is not a regular file (a device, a pipe or a socket), so not a checkpoint"
        )
        raise CheckpointError(f"checkpoint {str(path)!r} {what}")
    try:
        with path.open("rb") as f:
            if tensors:
                data = f.read()
                size = int.from_bytes(data[:8], "little")
                head = data[8 : 8 + size]
            else:
                size = int.from_bytes(f.read(8), "little")
                head = f.read(min(size, 100_000_000))
        if len(head) != size:
            raise ValueError(f"the header says {size} bytes but the file holds {len(head)}")
        header = json.loads(head)
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a safetensors file ({e})") from None
    entries = _entries(header, path)
    try:
        meta = json.loads(entries.get("attnkit", "null"))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt: its metadata 'attnkit' is not JSON ({e})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} was not written by attnkit (no {FORMAT!r} metadata)")
    if not tensors:
        return {}, meta
    try:
        found = from_bytes(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a safetensors file ({e})") from None
    _verify(found, entries, path, trust_unchecked)
    for name, t in sorted(found.items()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: tensor {name!r} holds NaN or infinity")
    return found, meta


def _entries(header, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors ``header`` (parsed JSON): an object of strings, else
    an error naming the key that is not."""
    from .schema import type_name

    where = f"checkpoint {str(path)!r} is corrupt:"
    if not isinstance(header, dict):
        raise CheckpointError(f"{where} its safetensors header must be a JSON object, got {type_name(header)}")
    entries = header.get("__metadata__")
    if entries is None:
        return {}
    if not isinstance(entries, dict):
        got = type_name(entries)
        raise CheckpointError(f"{where} its header's __metadata__ must be an object of strings, got {got}")
    for key, value in entries.items():
        if not isinstance(value, str):
            got = f"{type_name(value)} {value!r:.40}"
            raise CheckpointError(f"{where} its metadata {key!r} must be a string, got {got}")
    return entries


def _verify(tensors: dict[str, Tensor], entries: dict[str, str], path: Path, trust_unchecked: bool) -> None:
    """Check ``tensors`` and ``entries`` against the file's checksum; a file without one is an
    error unless ``trust_unchecked`` (then an old tensor-only checksum, if any, is still checked)."""
    stored = entries.get(CHECKSUM)
    if stored is not None:
        if stored != checksum(tensors, entries):
            raise CheckpointError(
                f"checkpoint {str(path)!r} is corrupt: its tensors and metadata do not match the sha256 checksum "
                f"stored with them"
            )
        return
    old = entries.get(OLD_CHECKSUM)
    if not trust_unchecked:
        resave = f"from attnkit.train import checkpoint; checkpoint.resave({str(path)!r})"
        how = (
            "if you trust it, load it with --trust-unchecked (trust_unchecked=True in Python), or write it again "
            f'with the full checksum: python -c "{resave}"'
        )
        if old is None:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has no checksum ({CHECKSUM!r}), so nothing shows that its weights and "
                f"metadata are whole; {how}"
            )
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds the checksum of older attnkit ({OLD_CHECKSUM!r}), which covers its "
            f"tensors only, not its metadata (vocabularies, model config); {how}"
        )
    if old is not None and old != digest(tensors):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt: its tensors do not match the sha256 checksum stored with them"
        )


def load(path: str | os.PathLike, *, trust_unchecked: bool = False) -> tuple[dict[str, Tensor], dict]:
    """(tensors, meta) of a checkpoint written by :func:`save`, checked against its checksum; a
    missing, corrupt or foreign file raises an AttentionError that names it, and so does a file
    without the checksum unless ``trust_unchecked``. Tensors stored in int8 or int4
    (:func:`quantize`) come back in float32."""
    tensors, meta = _read(path, tensors=True, trust_unchecked=trust_unchecked)
    try:
        return dequantize(tensors), meta
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: {err}") from None


def average(paths: list[str | os.PathLike], *, trust_unchecked: bool = False) -> tuple[dict[str, Tensor], dict]:
    """Checkpoint averaging: the element-wise mean of the floating tensors of several checkpoints of
    one model (e.g. the weights after its last epochs), with the last one's metadata. Averaged
    weights often generalise better than any single one. The checkpoints must hold the same tensor
    names and shapes, else a CheckpointError names the first that differs; ``trust_unchecked`` as in
    :func:`load`."""
    if not paths:
        raise CheckpointError("average needs at least one checkpoint")
    tensors, meta = load(paths[-1], trust_unchecked=trust_unchecked)
    total = {k: v.double() if v.is_floating_point() else v for k, v in tensors.items()}
    for path in paths[:-1]:
        other, _ = load(path, trust_unchecked=trust_unchecked)
        if other.keys() != tensors.keys() or any(other[k].shape != v.shape for k, v in tensors.items()):
            raise CheckpointError(f"checkpoint {str(path)!r} holds other tensors than {str(paths[-1])!r}")
        for k, v in other.items():
            if v.is_floating_point():
                total[k] += v.double()
    n = len(paths)
    return {k: (v / n).to(tensors[k].dtype) if v.is_floating_point() else v for k, v in total.items()}, meta


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON of a checkpoint without its tensors (only the header is read), unverified: the
    checksum needs the tensors, so a caller loads the file (:func:`load`) before it relies on
    more than the name of its task; errors as :func:`load`."""
    return _read(path, tensors=False)[1]


def read_task(cls, meta: dict, path, task: str, what: str):
    """The task document ``meta["task"]`` checked against the dataclass ``cls`` (see
    :func:`~attnkit.train.schema.from_dict`); a checkpoint of another task, or a damaged document,
    raises a CheckpointError naming ``path``. ``what`` names the task's models in the message."""
    from .schema import from_dict

    found = task_name(meta)
    if found != task:
        raise CheckpointError(f"checkpoint {str(path)!r} is not {what} (task {found!r})")
    try:
        return from_dict(cls, meta["task"], "task")
    except AttentionError as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: {err}") from None


def task_name(meta: dict):
    """The task a checkpoint's metadata names (``meta["task"]["name"]``), None where it names none."""
    task = meta.get("task")
    return task.get("name") if isinstance(task, dict) else None


def build_loaded(build: Callable[[], nn.Module], tensors: dict[str, Tensor], path, prefix: str = "model.") -> nn.Module:
    """``build()``'s model holding the ``prefix``-ed ``tensors``. It is built on the meta device
    first (shapes, no memory) and checked against the tensors as :func:`load_model` does, so that
    metadata describing a far larger model than the file holds is an error, not an allocation.
    Neither build initialises its weights (every one is then loaded): an initialiser on the meta
    device goes through torch's reference ops, whose first call imports its compiler (a second or
    more of a command's start)."""
    with _no_init(), torch.device("meta"):
        shapes = build()
    _check_fits(shapes.state_dict(), tensors, path, prefix)
    with _no_init():
        model = build()
    load_model(model, tensors, path, prefix)
    return model


@contextlib.contextmanager
def _no_init():
    """``torch.nn.init``'s in-place initialisers as no-ops, for a model whose every tensor is loaded next."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_") and callable(getattr(nn.init, n))]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, _unchanged)
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def _unchanged(tensor: Tensor, *args, **kwargs) -> Tensor:
    return tensor


def load_model(model: nn.Module, tensors: dict[str, Tensor], path: str | os.PathLike, prefix: str = "model.") -> None:
    """Load the ``prefix``-ed tensors into ``model``; missing, extra or misshapen ones raise an
    AttentionError that says which."""
    own = model.state_dict()
    got = _check_fits(own, tensors, path, prefix)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in got.items()})


def _check_fits(own: dict[str, Tensor], tensors: dict[str, Tensor], path, prefix: str) -> dict[str, Tensor]:
    """The ``prefix``-ed ``tensors`` without the prefix, checked to be the names and shapes of ``own``."""
    got = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, extra = sorted(own.keys() - got.keys()), sorted(got.keys() - own.keys())
    wrong = [
        f"{k} {tuple(got[k].shape)} != {tuple(own[k].shape)}"
        for k in own.keys() & got.keys()
        if got[k].shape != own[k].shape
    ]
    if missing or extra or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
            for what, items in (("missing", missing), ("unexpected", extra), ("shape", wrong))
            if items
        )
        raise CheckpointError(f"checkpoint {str(path)!r} does not match the model ({detail})")
    return got


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """An optimizer's state split into tensors (``optimizer.<param>.<name>``) and JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
