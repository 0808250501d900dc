"""What one attention call is made of: the validated :class:`Call` every backend receives, and the
:class:`AttentionResult` every backend returns. :mod:`attnkit.core.functional` builds calls
(:func:`~attnkit.core.functional.prepare`) and runs the reference on them;
:mod:`attnkit.core.nonfinite` cleans and finishes them; both import from here, not from each other.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dq / Dk / Dv feature dims.
Leading dims (...) are any batch dims, e.g. (B,) or (B, H); they broadcast between q, k and v.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.utils import _pytree

from .masks import Mask
from .scores import Score

__all__ = ["AttentionResult", "Call"]


class AttentionResult(tuple):
    """``(output, weights)``, unpackable as a pair, with ``log_prob`` for stochastic normalizers.

    ``output`` (..., Tq, Dv); ``weights`` (..., Tq, Tk) when asked for (``need_weights=True``), else
    None; ``log_prob`` (..., Tq) from ``normalize="sample"``, else None.
    """

    def __new__(cls, output: Tensor, weights: Tensor | None, log_prob: Tensor | None = None):
        self = super().__new__(cls, (output, weights))
        self.log_prob = log_prob
        return self

    @property
    def output(self) -> Tensor:
        return self[0]

    @property
    def weights(self) -> Tensor | None:
        return self[1]


def _result_children(result: AttentionResult):
    keys = [_pytree.GetAttrKey(name) for name in ("output", "weights", "log_prob")]
    return list(zip(keys, (result[0], result[1], result.log_prob))), None


# a pytree node, so torch.export and torch.compile see the tensors inside it
_pytree.register_pytree_node(
    AttentionResult,
    lambda r: ([r[0], r[1], r.log_prob], None),
    lambda children, _context: AttentionResult(*children),
    serialized_type_name="attnkit.AttentionResult",
    flatten_with_keys_fn=_result_children,
)


@dataclass(frozen=True, eq=False)
class Call:
    """One validated attention call: what every backend receives, and what dispatch decides on.

    ``region`` is the whole mask (user mask, window, local-p's neighbourhood) as one
    :class:`~attnkit.masks.Mask`; ``gauss`` is local-p's Gaussian factor (..., Tq, Tk) or None.
    """

    query: Tensor  # (..., Tq, Dq)
    key: Tensor  # (..., Tk, Dk)
    value: Tensor  # (..., Tk, Dv)
    score: Score
    normalizer: object
    region: Mask | None
    gauss: Tensor | None
    score_params: Mapping[str, Tensor]
    dropout: float
    need_weights: bool
    kv_groups: int = 1  # grouped-query attention: query heads per key/value head (enable_gqa=True)

    @property
    def scores_shape(self) -> tuple[int, ...]:
        key_lead = self.key.shape[:-2]
        if self.kv_groups > 1:  # (..., Hkv) -> (..., H)
            key_lead = (*key_lead[:-1], key_lead[-1] * self.kv_groups)
        lead = torch.broadcast_shapes(self.query.shape[:-2], key_lead)
        return (*lead, self.query.shape[-2], self.key.shape[-2])

    def expand_kv(self, *, shape_only: bool = False) -> Call:
        """This call with key and value (..., Hkv, Tk, D) repeated to the query's H heads, as
        SDPA's ``enable_gqa`` (head h reads key/value head h // (H / Hkv)); itself when not grouped.

        ``shape_only``: zero-stride stand-ins of the right shape, dtype and device (no memory), for
        a backend's ``supports``, which looks at shapes only.
        """
        if self.kv_groups == 1:
            return self
        if shape_only:
            k, v = (stand_in(t, self.kv_groups) for t in (self.key, self.value))
        else:
            k, v = (t.repeat_interleave(self.kv_groups, dim=-3) for t in (self.key, self.value))
        return replace(self, key=k, value=v, kv_groups=1)

    @property
    def requires_grad(self) -> bool:
        """Whether autograd will want gradients from this call."""
        tensors = [self.query, self.key, self.value, *self.score_params.values()]
        return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def stand_in(t: Tensor, groups: int) -> Tensor:
    """A zero-stride tensor shaped like ``t`` (..., Hkv, T, D) repeated to (..., Hkv·groups, T, D)."""
    shape = (*t.shape[:-3], t.shape[-3] * groups, *t.shape[-2:])
    return t.new_zeros(()).requires_grad_(t.requires_grad and t.dtype.is_floating_point).expand(shape)
