"""``topk_gather``: hard and top-k attention that aggregates only the selected keys' values.

The reference builds dense (..., Tq, Tk) weights and multiplies them with all values; here each
query's k selected values are gathered, (..., Tq, k, Dv), and weighted: O(Tq·k·Dv) instead of
O(Tq·Tk·Dv). The scores are still computed for every pair (they decide the selection), but in
chunks of queries, so the dense (Tq, Tk) scores never exist at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.functional import AttentionResult, Call
from ..core.normalizers import Hard, Softmax, TopK
from .registry import register

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


def _gather_rows(value: Tensor, idx: Tensor) -> Tensor:
    """value (..., Tk, Dv), idx (..., Tq, k) -> (..., Tq, k, Dv)."""
    *lead, tq, k = idx.shape
    flat = idx.reshape(*lead, tq * k, 1).expand(*lead, tq * k, value.shape[-1])
    return value.gather(-2, flat).reshape(*lead, tq, k, value.shape[-1])


def run(call: Call) -> AttentionResult:
    q, key, value = call.query, call.key, call.value
    lead = torch.broadcast_shapes(q.shape[:-2], key.shape[:-2], value.shape[:-2])
    q, key, value = (t.expand(*lead, *t.shape[-2:]) for t in (q, key, value))
    tq, tk = q.shape[-2], key.shape[-2]
    shape = (*lead, tq, tk)
    allowed = None if call.region is None else call.region.materialize(shape, q.device).expand(shape)
    bias = None if call.region is None else call.region.bias(shape, q.device, q.dtype)
    hard = type(call.normalizer) is Hard
    selector = TopK(1) if hard else call.normalizer
    rows = max(1, CHUNK_ELEMENTS // max(1, tk * max(1, torch.Size(lead).numel())))
    outputs, weights = [], [] if call.need_weights else None
    for start in range(0, tq, rows):
        sl = slice(start, start + rows)
        scores = call.score.fn(q[..., sl, :], key, call.score_params)  # (..., c, Tk)
        if bias is not None:
            scores = scores + bias.expand(shape)[..., sl, :]
        ok = None if allowed is None else allowed[..., sl, :]
        idx = selector.select(scores, ok)  # (..., c, k)
        picked = scores.gather(-1, idx)  # (..., c, k)
        keep = None if ok is None else ok.gather(-1, idx)
        w = Softmax()(picked.detach() if hard else picked, keep).weights  # (..., c, k)
        if call.dropout > 0:
            w_used = torch.nn.functional.dropout(w, call.dropout)
        else:
            w_used = w
        rows_v = _gather_rows(value, idx)  # (..., c, k, Dv)
        outputs.append((w_used.unsqueeze(-2).to(value.dtype) @ rows_v).squeeze(-2))  # (..., c, Dv)
        if weights is not None:
            weights.append(torch.zeros_like(scores).scatter(-1, idx, w))  # (..., c, Tk)
    out = torch.cat(outputs, dim=-2)
    return AttentionResult(out, None if weights is None else torch.cat(weights, dim=-2), None)


register(
    "topk_gather",
    run,
    supports,
    "hard / top-k attention: select per query chunk, gather only the k selected values",
    worthwhile,
)
