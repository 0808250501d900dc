"""Checkpoints: one safetensors file holding tensors plus a JSON document, written atomically.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed over
the old one (``os.replace``), so a killed run leaves either the previous checkpoint or the new one,
never half of one. The JSON (configs, progress, optimizer hyper-parameters) rides in the
safetensors header's metadata under the key ``attnkit``, so the tensors and the config that
explains them cannot drift apart.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import AttentionError

__all__ = ["FORMAT", "load", "load_optimizer", "optimizer_tensors", "read_meta", "save", "write_json"]

FORMAT = "attnkit/1"


def _atomic_write(path: Path, data: bytes) -> None:
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


def write_json(path: str | os.PathLike, doc) -> None:
    """Write ``doc`` as indented JSON, atomically."""
    _atomic_write(Path(path), (json.dumps(doc, indent=2) + "\n").encode())


def save(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict) -> None:
    """Write ``tensors`` and the JSON-able ``meta`` to ``path`` atomically."""
    from safetensors.torch import save as to_bytes

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_write(Path(path), to_bytes(flat, metadata={"attnkit": json.dumps({"format": FORMAT, **meta})}))


def _read(path: str | os.PathLike, tensors: bool) -> tuple[dict[str, Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AttentionError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("attnkit", "null"))
            found = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118 (a method, not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise AttentionError(f"checkpoint {str(path)!r} is corrupt or not a safetensors file ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AttentionError(f"checkpoint {str(path)!r} was not written by attnkit (no {FORMAT!r} metadata)")
    return found, meta


def load(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """(tensors, meta) of a checkpoint written by :func:`save`; a missing, corrupt or foreign file
    raises an AttentionError that names it."""
    return _read(path, tensors=True)


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON of a checkpoint without its tensors (only the header is read); errors as :func:`load`."""
    return _read(path, tensors=False)[1]


def load_model(model: nn.Module, tensors: dict[str, Tensor], path: str | os.PathLike, prefix: str = "model.") -> None:
    """Load the ``prefix``-ed tensors into ``model``; missing, extra or misshapen ones raise an
    AttentionError that says which."""
    own = model.state_dict()
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
        raise AttentionError(f"checkpoint {str(path)!r} does not match the model ({detail})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in got.items()})


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
