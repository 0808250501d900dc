"""Integer storage of checkpoint tensors: int8 per row, int4 per group of :data:`GROUP` weights,
each with float32 scales stored beside the values (``NAME:int8_scale``, ``NAME:int4_scale``).
:func:`quantize` writes it, :func:`dequantize` reads it back into float32;
:func:`attnkit.train.checkpoint.load` calls the latter on every file it reads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import CheckpointError

__all__ = ["GROUP", "SCALE", "SCALE4", "SCALES", "dequantize", "quantize"]

SCALE = ":int8_scale"  # suffix of the per-row scales of a tensor stored in int8 (:func:`quantize`)
SCALE4 = ":int4_scale"  # suffix of the per-group scales of a tensor stored in int4
SCALES = (SCALE, SCALE4)
GROUP = 128  # weights that share one int4 scale


def quantize(tensors: dict[str, Tensor], *, bits: int = 8, group: int = GROUP) -> dict[str, Tensor]:
    """Symmetric integer storage of every non-empty floating tensor with two or more dims (the
    weight matrices); 1-dim tensors (biases, norms) and the rest are kept as they are. :func:`load`
    reverses it.

    - ``bits=8``: per row, int8 values ``round(w / s)`` in [-127, 127] plus float32 scales
      ``NAME:int8_scale`` (rows,), ``s = max |w_row| / 127``. A quarter of float32's bytes.
    - ``bits=4``: per ``group`` consecutive weights along the last dim (the whole last dim where
      it is not a multiple of ``group``), values ``round(w / s)`` in [-7, 7] stored two to a byte
      (uint8, ``value + 8``, the first of each pair in the low nibble) plus float32 scales
      ``NAME:int4_scale`` ``(*shape[:-1], groups)``, ``s = max |w_group| / 7``. An eighth of float32's
      bytes, plus the scales; a tensor whose last dim is odd is stored in int8 instead.

    Either way each element is within s/2 of its value, and an all-zero row or group stays zero.

    >>> w = torch.tensor([[1.0, -0.5], [0.0, 0.0]])
    >>> q = quantize({"w": w})
    >>> q["w"].tolist(), q["w:int8_scale"].tolist()
    ([[127, -64], [0, 0]], [0.007874015718698502, 0.0])
    >>> dequantize(q)["w"].tolist()
    [[1.0, -0.5039370059967041], [0.0, 0.0]]
    >>> q = quantize({"w": w}, bits=4)
    >>> q["w"].tolist(), dequantize(q)["w"].tolist()
    ([[95], [136]], [[1.0, -0.4285714626312256], [0.0, 0.0]])
    """
    if bits not in (4, 8):
        raise CheckpointError(f"bits={bits!r} is not supported; expected 4 or 8")
    if not (isinstance(group, int) and group >= 2 and group % 2 == 0):
        raise CheckpointError(f"group={group!r} must be an even int >= 2")
    out = {}
    for name, t in tensors.items():
        if name.endswith(SCALES):
            raise CheckpointError(f"tensor {name!r} already holds integer scales; quantize the float tensors once")
        if not (t.is_floating_point() and t.dim() >= 2) or t.numel() == 0:
            out[name] = t
        elif bits == 4 and t.shape[-1] % 2 == 0:
            out[name], out[name + SCALE4] = _int4(t.detach().float(), group)
        else:
            out[name], out[name + SCALE] = _int8(t.detach().float())
    return out


def _nonzero(scale: Tensor) -> Tensor:
    """``scale`` with its zeros made ones, so that an all-zero row or group divides to zero."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 values shaped as ``w``, float32 scales (rows,)) of ``w`` (rows, ...)."""
    rows = w.reshape(w.shape[0], -1)
    scale = rows.abs().amax(-1) / 127  # (rows,)
    return (rows / _nonzero(scale)[:, None]).round().clamp(-127, 127).to(torch.int8).reshape(w.shape), scale


def _from_int8(values: Tensor, scale: Tensor) -> Tensor | None:
    """The float32 weights of :func:`_int8`'s ``values`` and ``scale``; None if they do not match."""
    if values.dtype != torch.int8 or scale.shape != values.shape[:1]:
        return None
    return (values.float().reshape(len(scale), -1) * scale.float()[:, None]).reshape(values.shape)


def _int4(w: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """(packed uint8 values (*lead, last / 2), float32 scales (*lead, groups)) of ``w`` (*lead, last)."""
    last = w.shape[-1]
    size = group if last % group == 0 else last
    groups = w.reshape(*w.shape[:-1], last // size, size)
    scale = groups.abs().amax(-1) / 7  # (*lead, groups)
    q = (groups / _nonzero(scale)[..., None]).round().clamp(-7, 7).add(8).to(torch.uint8).reshape(w.shape)
    return q[..., 0::2] | (q[..., 1::2] << 4), scale


def _from_int4(values: Tensor, scale: Tensor) -> Tensor | None:
    """The float32 weights of :func:`_int4`'s ``values`` and ``scale``; None if they do not match."""
    lead, last = values.shape[:-1], 2 * values.shape[-1]
    if values.dtype != torch.uint8 or scale.shape[:-1] != lead or last % max(scale.shape[-1], 1):
        return None
    q = torch.stack([values & 15, values >> 4], -1).reshape(*lead, last)
    return ((q.float() - 8).reshape(*scale.shape, -1) * scale.float()[..., None]).reshape(q.shape)


# a scale suffix: the storage's name, the layout it expects and how its weights are read back
_FORMATS = {
    SCALE: ("int8", "int8 values with one scale per row", _from_int8),
    SCALE4: ("int4", "uint8 values holding two weights a byte, with one scale per group of the last dim", _from_int4),
}


def _bad_scale(scale: Tensor):
    """The first value of ``scale`` that no :func:`quantize` writes (negative, NaN or infinite), or
    its dtype when it is not floating; None when every value is a scale."""
    if not scale.is_floating_point():
        return scale.dtype
    flat = scale.flatten()
    wrong = flat[~(torch.isfinite(flat) & (flat >= 0))]  # (N,)
    return wrong[0].item() if len(wrong) else None


def dequantize(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The float32 tensors of a :func:`quantize`-d dict (a dict without integer scales is returned
    as it is); a scale without its tensor, of the wrong shape, negative or not finite raises a
    CheckpointError."""
    if not any(name.endswith(SCALES) for name in tensors):
        return tensors
    out = {name: t for name, t in tensors.items() if not name.endswith(SCALES)}
    for key, scale in tensors.items():
        suffix = next((s for s in SCALES if key.endswith(s)), None)
        if suffix is None:
            continue
        kind, expected, read = _FORMATS[suffix]
        name = key[: -len(suffix)]
        bad = _bad_scale(scale)
        if bad is not None:
            raise CheckpointError(
                f"{kind} scales {key!r} of tensor {name!r} hold {bad}; expected finite floating scales >= 0 "
                f"(max |w| / {127 if suffix == SCALE else 7})"
            )
        values = out.get(name)
        weights = None if values is None else read(values, scale)
        if weights is None:
            got = "missing" if values is None else f"{values.dtype} {tuple(values.shape)}"
            raise CheckpointError(
                f"{kind} scales {key!r} {tuple(scale.shape)} do not match tensor {name!r} ({got}); expected {expected}"
            )
        out[name] = weights
    return out
