"""Batched greedy and beam-search decoding for any attnkit encoder-decoder.

Shape legend: B batch, K beam, S source positions, V target vocabulary.

A model offers ``encode(src) -> Memory``, ``start(memory) -> state`` and
``step(memory, state, token, t, need_weights) -> (logits (B, V), state, weights (B, S) | None, _)``;
both decoders return, for every source, a :class:`Hypothesis` that carries the cross-attention
weights of each of its steps. A state with a ``reorder(index)`` method (the Transformer's
key/value cache) is reordered in place when beam search reorders its hypotheses; any other state
(tensors, tuples, dataclasses of them) is indexed along its batch dim.

Each source has its own length limit: ``max_len`` steps, or by default 2 S_b + 10 with S_b its own
length (not its batch's longest, so an output does not depend on the other words of its batch),
lowered to ``cap`` where the model has fewer positions (a Transformer's ``max_len``). An output
that reaches its limit without emitting EOS is cut: its :class:`Hypothesis` has ``finished=False``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..data.vocab import BOS, EOS, PAD
from ..errors import AttentionError
from .base import select

__all__ = ["Hypothesis", "beam_search", "greedy", "length_limit", "length_penalty"]


class Hypothesis(NamedTuple):
    """One decoded output: ``tokens`` (ids, without BOS and EOS), ``score`` (summed log-probability,
    EOS included) and ``weights`` (len(tokens) + 1, S) over the real source positions, the last row
    being the step that emitted EOS; None for a model without attention. ``finished`` is False for
    an output cut at its length limit: no EOS, so ``weights`` has len(tokens) rows."""

    tokens: list[int]
    score: float
    weights: Tensor | None
    finished: bool = True


def length_penalty(length: Tensor, alpha: float) -> Tensor:
    """GNMT's ``lp(Y) = ((5 + |Y|) / 6)^alpha``; beam search ranks finished outputs by score / lp."""
    return ((5.0 + length.to(torch.float32)) / 6.0) ** alpha


def _score_dtype(memory) -> torch.dtype:
    """Log-probabilities are summed in the model's dtype, and never below float32."""
    return torch.promote_types(memory.states.dtype, torch.float32)


def reorder_state(state, index: Tensor):
    """``state`` at rows ``index`` (B K,) along the batch dim."""
    reorder = getattr(state, "reorder", None)
    return reorder(index) if callable(reorder) else select(state, index)


def length_limit(source_length: int, cap: int | None = None) -> int:
    """The most steps a source of ``source_length`` positions decodes by default: 2 S + 10, at most
    ``cap`` (the model's positions)."""
    return 2 * source_length + 10 if cap is None else min(2 * source_length + 10, cap)


def _limits(src: Tensor, max_len: int | None, min_len: int, cap: int | None) -> Tensor:
    """Each source's most steps (B,): ``max_len``, else :func:`length_limit` of its own length."""
    if not (isinstance(min_len, int) and min_len >= 0):
        raise AttentionError(f"min_len must be an int >= 0, got {min_len!r}")
    if cap is not None and not (isinstance(cap, int) and cap >= 1):
        raise AttentionError(f"cap must be an int >= 1 or None, got {cap!r}")
    if max_len is None:
        n = torch.tensor([length_limit(s, cap) for s in src.ne(PAD).sum(-1).tolist()], device=src.device)  # (B,)
    else:
        n = torch.full((src.shape[0],), max_len, dtype=torch.long, device=src.device)
    if min_len > int(n.min()):
        raise AttentionError(f"min_len={min_len} is above max_len={int(n.min())}")
    return n


def _no_early_end(logp: Tensor, t: int, min_len: int) -> Tensor:
    """``logp`` (N, V) with EOS ruled out at step ``t`` < ``min_len``: no output shorter than it."""
    return logp.index_fill(-1, torch.tensor([EOS], device=logp.device), float("-inf")) if t < min_len else logp


def _hypotheses(
    tokens: Tensor, scores: Tensor, weights: Tensor | None, src: Tensor, limits: Tensor
) -> list[Hypothesis]:
    out = []
    src_len = src.ne(PAD).sum(-1).tolist()
    for i, (row, limit) in enumerate(zip(tokens.tolist(), limits.tolist())):
        finished = EOS in row
        n = row.index(EOS) if finished else min(len(row), limit)  # a cut row is padded after its limit
        w = None if weights is None else weights[i, : n + finished, : src_len[i]].clone()
        out.append(Hypothesis(row[:n], float(scores[i]), w, finished))
    return out


@torch.no_grad()
def greedy(
    model, src: Tensor, *, max_len: int | None = None, min_len: int = 0, cap: int | None = None
) -> list[Hypothesis]:
    """Take the most likely token at every step; ``src`` (B, S) padded with 0. A row stops when it
    emits EOS or after ``max_len`` steps (default 2 S_b + 10, its own source length S_b, at most
    ``cap``: see the module docstring); EOS is ruled out for the first ``min_len`` steps
    (``min_len == max_len``: exactly that many steps, as benchmarks decode). Rows that have stopped
    leave the batch (once a quarter of it has), so a batch's short outputs do not pay for its long ones."""
    limits = _limits(src, max_len, min_len, cap)  # (B,)
    memory = model.encode(src)
    state = model.start(memory)
    b, device = src.shape[0], src.device
    dtype = _score_dtype(memory)
    steps = int(limits.max())
    tokens = torch.full((b, steps), PAD, dtype=torch.long, device=device)
    scores = torch.zeros(b, device=device, dtype=dtype)
    weights = None  # (B, T, S) once the model gives weights
    rows = torch.arange(b, device=device)  # the batch row of each row still decoding
    token = torch.full((b,), BOS, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    limit = limits
    # a state that holds keys and values projected from this memory (a Transformer's cross-attention
    # cache) is checked against the very memory tensor it was filled from: its batch cannot shrink
    shrinks = not getattr(state, "holds_source", False)
    for t in range(steps):
        logits, state, w, _ = model.step(memory, state, token, t, True)
        logp = _no_early_end(logits.to(dtype).log_softmax(-1), t, min_len)  # (N, V), N rows still decoding
        stopped = done | (t >= limit)  # (N,): ended, or at its length limit
        token = logp.argmax(-1).masked_fill(stopped, PAD)  # (N,)
        scores[rows] += logp.gather(-1, token[:, None]).squeeze(-1).masked_fill(stopped, 0.0)
        tokens[rows, t] = token
        if w is not None:
            if weights is None:
                weights = w.new_zeros(b, steps, w.shape[-1])
            weights[rows, t] = w
        done |= token == EOS
        over = done | (t + 1 >= limit)
        if over.all():
            break
        if shrinks and 4 * int(over.sum()) >= len(rows):  # drop the stopped rows from the batch
            keep = (~over).nonzero().squeeze(1)
            rows, token, done, limit = rows[keep], token[keep], done[keep], limit[keep]
            memory, state = select(memory, keep), reorder_state(state, keep)
    return _hypotheses(tokens, scores, weights, src, limits)


@torch.no_grad()
def beam_search(
    model,
    src: Tensor,
    *,
    beam: int = 5,
    alpha: float = 0.6,
    max_len: int | None = None,
    min_len: int = 0,
    cap: int | None = None,
    nbest: int | None = None,
) -> list[Hypothesis] | list[list[Hypothesis]]:
    """Keep the ``beam`` best prefixes of every source at each step; return each source's best
    finished output ranked by score / :func:`length_penalty` (``alpha=0``: raw score). A finished
    prefix stays in the beam with its score, extended by padding at no cost, so ``beam=1`` is
    exactly :func:`greedy`; so does every prefix of a source at its length limit. ``max_len``,
    ``min_len`` and ``cap`` as in :func:`greedy`. Sources whose every prefix has stopped leave the
    batch (once a quarter of it has), as in :func:`greedy`.

    ``nbest=k`` (1 <= k <= ``beam``): each source's list of up to k outputs instead, the distinct
    prefixes left in the beam at the end, by score (log-probability) descending, without the
    length penalty: its finished ones, or its cut ones where none finished. Prefixes of score -inf
    (fewer than k possible outputs) are left out, all but the first. Its first output is the one
    ``nbest=None`` returns with ``alpha=0``."""
    if not (isinstance(beam, int) and beam >= 1):
        raise AttentionError(f"beam must be an int >= 1, got {beam!r}")
    if nbest is not None and not (isinstance(nbest, int) and not isinstance(nbest, bool) and 1 <= nbest <= beam):
        raise AttentionError(f"nbest must be an int from 1 to beam={beam} (the beam holds the outputs), got {nbest!r}")
    limits = _limits(src, max_len, min_len, cap)  # (B,)
    b, k = src.shape[0], beam
    device = src.device
    memory = select(model.encode(src), torch.arange(b, device=device).repeat_interleave(k))  # (B K, ...)
    state = model.start(memory)
    dtype = _score_dtype(memory)
    scores = torch.full((b, k), float("-inf"), device=device, dtype=dtype)
    scores[:, 0] = 0.0  # the K copies of the start are one prefix, not K
    scores = scores.view(-1)  # (B K,)
    token = torch.full((b * k,), BOS, dtype=torch.long, device=device)
    done = torch.zeros(b * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(b * k, dtype=torch.long, device=device)
    tokens = torch.zeros(b * k, 0, dtype=torch.long, device=device)
    weights = None
    row_limits = limits.repeat_interleave(k)  # (B K,)
    sources = torch.arange(b, device=device)  # the source of each of the b sources still searching
    retired = []  # the final prefixes of sources that left the batch: (sources, scores, lengths, done, tokens, weights)
    shrinks = not getattr(state, "holds_source", False)  # as in greedy
    for t in range(int(limits.max())):
        logits, state, w, _ = model.step(memory, state, token, t, True)
        logp = _no_early_end(logits.to(dtype).log_softmax(-1), t, min_len)  # (b K, V)
        v = logp.shape[-1]
        finished = torch.full_like(logp[0], float("-inf"))
        finished[PAD] = 0.0  # a finished prefix continues with padding, at no cost
        stopped = done | (t >= row_limits)  # (b K,): ended, or its source at its length limit
        logp = torch.where(stopped[:, None], finished, logp)
        cand = (scores[:, None] + logp).view(b, k * v)  # (b, K V)
        top, idx = cand.topk(k, dim=-1)  # (b, K)
        origin = (torch.arange(b, device=device)[:, None] * k + idx // v).view(-1)  # (b K,) parent rows
        token = (idx % v).view(-1)
        state = reorder_state(state, origin)
        tokens = torch.cat([tokens[origin], token[:, None]], 1)
        if w is not None:
            step_w = w[origin][:, None]  # (b K, 1, S)
            weights = step_w if weights is None else torch.cat([weights[origin], step_w], 1)
        lengths = lengths[origin] + (~stopped[origin]).long()
        done = done[origin] | ((token == EOS) & ~stopped[origin])
        scores = top.view(-1)
        over = (done | (t + 1 >= row_limits)).view(b, k).all(-1)  # (b,): sources whose every prefix stopped
        if over.all():
            break
        if shrinks and 4 * int(over.sum()) >= b:  # the sources that stopped leave the batch
            rows = over.repeat_interleave(k)  # (b K,)
            retired.append(
                (
                    sources[over],
                    scores[rows],
                    lengths[rows],
                    done[rows],
                    tokens[rows],
                    None if w is None else weights[rows],
                )
            )
            keep = (~rows).nonzero().squeeze(1)
            sources, b = sources[~over], int((~over).sum())
            scores, lengths, done, tokens, token, row_limits = (
                x[keep] for x in (scores, lengths, done, tokens, token, row_limits)
            )
            weights = None if weights is None else weights[keep]
            memory, state = select(memory, keep), reorder_state(state, keep)
    if retired:
        scores, lengths, done, tokens, weights = _rejoin(
            [*retired, (sources, scores, lengths, done, tokens, weights)], src.shape[0], k
        )
        b = src.shape[0]
    if nbest is not None:
        return _nbest(tokens, scores, weights, done, src, limits, nbest)
    ranked = (scores / length_penalty(lengths, alpha)).masked_fill(~done, float("-inf")).view(b, k)
    # no finished prefix after max_len steps: fall back to the best raw score
    ranked = torch.where(done.view(b, k).any(-1, keepdim=True), ranked, scores.view(b, k))
    best = torch.arange(b, device=device) * k + ranked.argmax(-1)  # (B,)
    return _hypotheses(tokens[best], scores[best], None if weights is None else weights[best], src, limits)


def _rejoin(parts: list, b: int, k: int) -> tuple:
    """The final prefixes of all ``b`` sources, (B K, ...) in source order, from the ``parts`` that left
    the batch at different steps: (sources, scores, lengths, done, tokens, weights) each; tokens are
    padded with PAD and weights with 0 after a part's last step."""
    steps = max(p[4].shape[1] for p in parts)
    order = torch.cat([p[0] for p in parts]).argsort()  # part-major sources -> source order
    rows = (order[:, None] * k + torch.arange(k, device=order.device)).view(-1)  # (B K,)
    pad = lambda x, value: torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, steps - x.shape[1]), value=value)
    scores, lengths, done = (torch.cat([p[i] for p in parts])[rows] for i in (1, 2, 3))
    tokens = torch.cat([pad(p[4], PAD) for p in parts])[rows]
    weights = None if parts[0][5] is None else torch.cat([pad(p[5], 0.0) for p in parts])[rows]
    return scores, lengths, done, tokens, weights


def _nbest(
    tokens: Tensor, scores: Tensor, weights: Tensor | None, done: Tensor, src: Tensor, limits: Tensor, n: int
) -> list[list[Hypothesis]]:
    """The ``n`` best of each source's K final prefixes (B K, ...) by score: finished ones, or cut ones
    where none finished; ties keep beam order, as ``argmax`` does. Distinct prefixes have distinct
    tokens, but several prefixes of score -inf can share theirs, so those are dropped."""
    b = src.shape[0]
    k = scores.shape[0] // b
    finished, raw = done.view(b, k), scores.view(b, k)  # (B, K)
    kept = torch.where(finished.any(-1, keepdim=True), raw.masked_fill(~finished, float("-inf")), raw)
    top, idx = kept.sort(dim=-1, descending=True, stable=True)  # (B, K)
    rows = (torch.arange(b, device=src.device)[:, None] * k + idx[:, :n]).view(-1)  # (B n,)
    hyps = _hypotheses(
        tokens[rows],
        scores[rows],
        None if weights is None else weights[rows],
        src.repeat_interleave(n, 0),
        limits.repeat_interleave(n),
    )
    possible = top[:, :n].isfinite().tolist()  # (B, n)
    return [[h for j, h in enumerate(hyps[i * n : (i + 1) * n]) if j == 0 or possible[i][j]] for i in range(b)]
