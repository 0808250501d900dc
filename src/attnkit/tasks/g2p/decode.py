"""Decoding lists of words with a G2P model (greedy or beam search), in batches of similar length."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ...models import TransformerSeq2Seq, beam_search, greedy
from ...models.ensemble import Ensemble

__all__ = ["decode_words", "positions", "sorted_batches"]


def sorted_batches(words: list[str], letters, batch_size: int):
    """Index batches of ``words`` grouped by length (less padding), with their encoded sources."""
    order = sorted(range(len(words)), key=lambda i: len(words[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, letters.pad([letters.encode(words[i]) for i in idx])


def positions(model: nn.Module) -> int | None:
    """The longest source or output ``model`` holds: a Transformer's ``max_len`` (an ensemble's
    smallest); None for an RNN, or a Transformer with relative positions, which have no table of
    positions (:attr:`~attnkit.models.TransformerSeq2Seq.max_positions`)."""
    members = model.members if isinstance(model, Ensemble) else [model]
    tables = [m.max_positions for m in members if isinstance(m, TransformerSeq2Seq) and m.max_positions is not None]
    return min(tables) if tables else None


def decode_words(
    model,
    words: list[str],
    letters,
    phonemes,
    *,
    beam: int = 1,
    batch_size: int = 256,
    alpha: float = 0.6,
    progress: Callable[[int, int], None] | None = None,
    steps: int | None = None,
    cap: int | None = None,
    nbest: int | None = None,
):
    """Hypotheses for ``words`` in their order; beam 1 is greedy. ``nbest``: each word's list of up
    to that many, most probable first (:func:`~attnkit.models.decoding.beam_search`'s ``nbest``; at
    most ``beam``). ``progress(done, total)`` is
    called before the first batch and after each one with the number of words decoded so far.
    ``steps``: decode exactly that many steps per word (EOS ruled out before), as benchmarks do so
    that an untrained model's output lengths do not set the speed. ``cap``: the most steps of any
    output (default and at most: the model's positions, :func:`positions`)."""
    model.eval()
    caps = [c for c in (cap, positions(model)) if c is not None]
    cap = min(caps) if caps else None
    device = next(model.parameters()).device
    out = [None] * len(words)
    done = 0
    if progress is not None:
        progress(done, len(words))
    for idx, src in sorted_batches(words, letters, batch_size):
        src = src.to(device)
        lengths = {"max_len": steps, "min_len": steps or 0, "cap": cap}
        if nbest is not None:
            hyps = beam_search(model, src, beam=beam, alpha=alpha, nbest=nbest, **lengths)
        elif beam == 1:
            hyps = greedy(model, src, **lengths)
        else:
            hyps = beam_search(model, src, beam=beam, alpha=alpha, **lengths)
        for i, h in zip(idx, hyps):
            out[i] = [_named(x, phonemes) for x in h] if nbest is not None else _named(h, phonemes)
        done += len(idx)
        if progress is not None:
            progress(done, len(words))
    return out


def _named(hyp, phonemes):
    """``hyp`` with its tokens as phoneme symbols."""
    return hyp._replace(tokens=tuple(phonemes.decode(hyp.tokens)))
