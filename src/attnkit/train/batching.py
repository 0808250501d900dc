"""Batches by token budget, bucketed by length: the ``batch_tokens`` alternative to ``batch_size``.

:func:`token_batches` sorts a seeded shuffle of the examples by length (a stable sort, so examples
of equal length keep their shuffled order) and cuts it into batches whose padded size stays within
the budget: short words go many to a batch, long ones few. The tasks shuffle the batches' order
with the same generator, so an epoch's batches are a pure function of the seed and the epoch, and
``--resume`` continues them exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import AttentionError

__all__ = ["token_batches"]


def token_batches(
    order: Sequence[int],
    dims: Callable[[int], tuple[int, ...]],
    padded: Callable[[int, tuple[int, ...]], int],
    budget: int,
) -> list[list[int]]:
    """Batches (lists of example indices) of ``order``, sorted by ``dims(i)`` (an example's lengths,
    e.g. (source, target)), each as large as fits ``padded(rows, longest) <= budget``, where
    ``longest`` is the batch's elementwise maximum of ``dims``. An example that does not fit alone
    is an error that says how many tokens it needs."""
    batches: list[list[int]] = []
    batch: list[int] = []
    longest: tuple[int, ...] = ()
    for i in sorted(order, key=dims):
        d = dims(i)
        if padded(1, d) > budget:
            raise AttentionError(
                f"batch_tokens={budget} is smaller than one example, which needs {padded(1, d)} padded tokens; "
                f"raise --batch-tokens"
            )
        grown = tuple(map(max, longest, d)) if batch else d
        if batch and padded(len(batch) + 1, grown) > budget:
            batches.append(batch)
            batch, grown = [], d
        batch.append(i)
        longest = grown
    if batch:
        batches.append(batch)
    return batches
