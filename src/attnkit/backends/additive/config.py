"""The knobs of ``additive_fused`` (:data:`config`) and the worker count they set."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FusedConfig", "config"]


@dataclass(slots=True)  # slots: a misspelt knob raises instead of being ignored
class FusedConfig:
    """Knobs of ``additive_fused``; change the module's :data:`config` in place (tests do)."""

    min_work: int = 1 << 17  # N·Tq·Tk·A below which auto dispatch keeps the reference (as fast there)
    compile: str = "auto"  # "auto": see compile_min_work and compile_after; "always"; "never"
    compile_min_work: int = 1 << 24  # N·Tq·Tk·A: below it eager tiles take ~10 ms, less than compiling
    compile_after: int = 2  # "auto" starts a tile shape's background build on its 2nd call, not for one-offs
    eager_tile: int = 1 << 20  # units (n, i, j, a) per eager tile: 4 MB in float32, kept in L2/L3
    compiled_tile: int = 1 << 23  # units per compiled call (never written): amortises ~50 µs per call
    key_tile: int = 1 << 17  # keys × A per tile at most: b's tile (512 KB in float32) stays in L2
    max_compiled_shapes: int = 6  # tile shapes compiled or loaded per process; then eager
    workers: int = 0  # threads walking the tiles, each running its ops on one core; 0: torch.get_num_threads()


config = FusedConfig()


def _workers() -> int:
    """Threads that walk the tiles: ``config.workers``, or torch's intra-op thread count."""
    return config.workers if config.workers > 0 else torch.get_num_threads()
