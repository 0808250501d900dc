"""``topk_gather``: hard and top-k attention that aggregates only the selected keys' values.

Shape legend: B batch, H heads, Tq query positions, Tk key positions, Dq / Dk / Dv feature dims;
here also M = B·H.. (the leading dims flattened) and k selected keys per query.

The reference builds dense (..., Tq, Tk) weights and multiplies them with all values; here each
query's k selected values are gathered, (..., Tq, k, Dv), and weighted: O(Tq·k·Dv) instead of
O(Tq·Tk·Dv). The scores are still computed for every pair (they decide the selection), but in
chunks of queries, so the dense (Tq, Tk) scores never exist at once.

For the dot-family scores (``dot``, ``scaled_dot``, ``general``, ``cosine``: a dot product of
rewritten inputs, :func:`~attnkit.backends.sdpa.as_dot_product`) the chunks run without autograd,
and the k selected scores are computed again, with autograd, from the k selected keys: the
backward is O(Tq·k·D) products and row gathers instead of two dense (Tq, Tk) x (Tk, D) products
per chunk, and it is a handful of operations, which also keeps it from collapsing when the cores
are shared. Other scores keep autograd on the chunks' dense scores and gather the selected ones.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.functional import AttentionResult, Call
from ..core.normalizers import Hard, Softmax, TopK
from .registry import register
from .sdpa import SCORES as DOT_SCORES
from .sdpa import as_dot_product

CHUNK_ELEMENTS = 1 << 22  # scores per query chunk: 4M elements, 16 MB in float32


def supports(call: Call) -> str | None:
    if type(call.normalizer) not in (TopK, Hard):
        return f"gathers the values of hard or top-k selections only, not {call.normalizer}"
    if call.gauss is not None:
        return "local-p's Gaussian factor is not supported"
    if 0 in call.scores_shape:
        return f"scores of shape {call.scores_shape} are empty: nothing to select"
    return None


def worthwhile(call: Call) -> str | None:
    k = getattr(call.normalizer, "k", 1)
    if 4 * k > call.key.shape[-2]:
        return f"k={k} is a large share of Tk={call.key.shape[-2]}; the dense product is as fast"
    return None


def _rows(x: Tensor, idx: Tensor) -> Tensor:
    """x (..., Tk, D), idx (..., Tq, k) -> (..., Tq, k, D): whole rows, one ``index_select``
    (``gather`` with an index expanded over D copies element by element, 5-10x slower)."""
    *lead, tk, d = x.shape
    m = math.prod(lead)
    offsets = torch.arange(0, m * tk, tk, device=idx.device).reshape(*lead, 1, 1)  # (..., 1, 1): row 0 of each
    picked = x.reshape(m * tk, d).index_select(0, (idx + offsets).reshape(-1))  # (M·Tq·k, D)
    return picked.reshape(*idx.shape, d)


def _select(call: Call, q: Tensor, key: Tensor, allowed: Tensor | None, bias: Tensor | None, with_scores: bool):
    """(..., Tq, k) selected keys of every query and, ``with_scores``, their scores (..., Tq, k),
    from the dense scores of one chunk of queries at a time, with autograd only ``with_scores``."""
    selector = TopK(1) if type(call.normalizer) is Hard else call.normalizer
    tq, tk = q.shape[-2], key.shape[-2]
    rows = max(1, CHUNK_ELEMENTS // max(1, tk * max(1, q.shape[:-2].numel())))
    picks, picked = [], []
    with torch.set_grad_enabled(with_scores and torch.is_grad_enabled()):
        for start in range(0, tq, rows):
            sl = slice(start, start + rows)
            scores = call.score.fn(q[..., sl, :], key, call.score_params)  # (..., c, Tk)
            if bias is not None:
                scores = scores + bias[..., sl, :]
            idx = selector.select(scores, None if allowed is None else allowed[..., sl, :])  # (..., c, k)
            picks.append(idx)
            if with_scores:
                picked.append(scores.gather(-1, idx))  # (..., c, k)
    idx = torch.cat(picks, dim=-2) if len(picks) > 1 else picks[0]
    return idx, (torch.cat(picked, dim=-2) if len(picked) > 1 else picked[0]) if with_scores else None


def _dot_scores(call: Call, lead: torch.Size, idx: Tensor) -> Tensor:
    """(..., Tq, k): the selected scores of a dot-family score, from the selected keys only."""
    q, k, scale = as_dot_product(call)  # softmax(scale · q'k'ᵀ) = softmax(score(q, k))
    q, k = (t.expand(*lead, *t.shape[-2:]) for t in (q, k))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    wide = torch.promote_types(q.dtype, torch.float32)  # a half-precision dot product sums in float32
    dots = (q.unsqueeze(-2).to(wide) * _rows(k, idx).to(wide)).sum(
        -1
    )  # (..., Tq, 1, D) * (..., Tq, k, D) -> (..., Tq, k)
    return (dots * scale).to(q.dtype)


def run(call: Call) -> AttentionResult:
    q, key, value = call.query, call.key, call.value
    lead = torch.broadcast_shapes(q.shape[:-2], key.shape[:-2], value.shape[:-2])
    q, key, value = (t.expand(*lead, *t.shape[-2:]) for t in (q, key, value))
    tq, tk = q.shape[-2], key.shape[-2]
    shape = (*lead, tq, tk)
    allowed = None if call.region is None else call.region.materialize(shape, q.device).expand(shape)
    bias = None if call.region is None else call.region.bias(shape, q.device, q.dtype)
    bias = None if bias is None else bias.expand(shape)
    hard = type(call.normalizer) is Hard
    dot = call.score.name in DOT_SCORES
    idx, picked = _select(call, q, key, allowed, bias, with_scores=not dot)  # (..., Tq, k) each
    if dot:
        picked = _dot_scores(call, lead, idx)
        if bias is not None:
            picked = picked + bias.gather(-1, idx)
    keep = None if allowed is None else allowed.gather(-1, idx)  # (..., Tq, k)
    w = Softmax()(picked.detach() if hard else picked, keep).weights  # (..., Tq, k)
    w_used = torch.nn.functional.dropout(w, call.dropout) if call.dropout > 0 else w
    wide = torch.promote_types(value.dtype, torch.float32)
    rows_v = _rows(value, idx).to(wide)  # (..., Tq, k, Dv)
    out = (
        (w_used.to(wide).unsqueeze(-1) * rows_v).sum(-2).to(value.dtype)
    )  # (..., Tq, k, 1) * (..., Tq, k, Dv) -> (..., Tq, Dv)
    weights = None
    if call.need_weights:  # O(Tq·Tk), paid only when asked for
        weights = w.new_zeros(shape).scatter(-1, idx, w)  # (..., Tq, Tk)
    return AttentionResult(out, weights, None)


register(
    "topk_gather",
    run,
    supports,
    "hard / top-k attention: select per query chunk, then weight and gather only the k selected keys",
    worthwhile,
)
