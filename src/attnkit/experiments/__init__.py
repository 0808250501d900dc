"""Experiments that check the notes' claims: ``attnkit experiment NAME``.

Each experiment (:class:`~attnkit.experiments.base.Experiment`) tests one claim of the notes on
real models and data, writes a picture, a JSON of every number and a markdown report, and decides
its verdict (:data:`VERDICTS`) from the JSON's numbers by a rule written in its module.

- ``alignment`` (:mod:`.alignment`): attention weights are an alignment (against an EM aligner).
- ``bottleneck`` (:mod:`.bottleneck`): attention removes the fixed-context bottleneck on long inputs.
- ``hardsoft`` (:mod:`.hardsoft`): hard attention trains worse than soft; local loses little.
- ``parameters`` (:mod:`.parameters`): attention needs fewer parameters for the same quality.
- ``scaling`` (:mod:`.scaling`): dividing dot products by √d_k keeps the softmax from saturating.
- ``parallel`` (:mod:`.parallel`): self-attention trains faster than an RNN.
- ``extrapolation`` (:mod:`.extrapolation`): trained on short inputs, a Transformer reads longer ones
  best with ALiBi (a paper's claim, Press et al. 2022, not the notes').
"""

from __future__ import annotations

from . import alignment, bottleneck, extrapolation, hardsoft, parallel, parameters, scaling
from .base import CONDITIONS, FAILS, HOLDS, VERDICTS, Experiment, Notes

__all__ = ["CONDITIONS", "EXPERIMENTS", "FAILS", "HOLDS", "VERDICTS", "Experiment", "Notes"]

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in map(Experiment.of, (alignment, bottleneck, hardsoft, parallel, parameters, scaling, extrapolation))
}
