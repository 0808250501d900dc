"""Does self-attention, computing every position at once, train faster than an RNN?

One training step (forward, label-smoothed cross-entropy, backward, clipping, AdamW: what the
trainer does) and greedy decoding, against the sequence length S = T, for the G2P RNN (LSTM +
Luong ``general``, the default) and a Transformer of matched parameter count (feed-forward 512:
4,007,511 parameters against 3,993,623), on random batches of the G2P vocabularies. Both models
take the same batches, so a step's time ratio is the epoch's. The measuring is
:mod:`attnkit.bench.train`'s (``Contender``, ``measure_train``, ``measure_decode``): a cold first
step on a fresh model, warm-up steps, then the median of the timed ones; decoding runs twice over
the words, cold then steady, exactly S steps per word.

Verdict (:func:`verdict`), on the steady training step: holds if the Transformer is faster at the
G2P length (``g2p_length``, the first length measured); holds under conditions if it is faster
from some longer length on (the crossover: the shortest length from which it stays faster);
does not hold here if it is slower at the longest length.
"""

from __future__ import annotations

import copy
import string
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..bench.train import Contender, Data, Settings, measure_decode, measure_train
from ..data.vocab import BOS, EOS, SPECIALS
from ..viz.static import Panel
from .base import CONDITIONS, FAILS, HOLDS, Notes

__all__ = ["CLAIM", "CONFIG", "NAME", "NOTES", "QUICK", "ParallelConfig", "crossover", "figure", "verdict"]

NAME = "parallel"
CLAIM = "self-attention computes all positions in parallel, so it trains faster than an RNN"
NOTES = (
    Notes(
        "000_06b4c4b04635e4b5.txt",
        "速度快: Attention解决了RNN不能并行计算的问题。Attention机制每一步计算不依赖于上一步的计算结果，"
        "因此可以和CNN一样并行处理。",
    ),
    Notes(
        "001_3603ecd0843c385a.txt",
        "之前的RNN里面用到了大量的Encoder-Decoder结构(由于前后隐藏状态具有依赖性，所以不能并行，所以**慢**)",
    ),
)

KINDS = {"rnn": "luong-general", "transformer": "transformer"}  # line label -> bench.train's kind


@dataclass
class ParallelConfig:
    lengths: list[int] = field(default_factory=lambda: [10, 20, 40, 80, 160])  # S = T; the first is G2P's
    batch_size: int = 256  # sequences per step and per decoding batch (the G2P default)
    warmup: int = 2  # untimed steps after the cold first one
    steps: int = 8  # timed steps per model and length: their median is the steady step
    decode_words: int = 512  # random words of S letters decoded per model and length
    transformer: dict = field(default_factory=lambda: {"ff_dim": 512})  # matched to the RNN's parameters
    rnn: dict = field(default_factory=dict)  # overrides of RNNConfig (tests: tiny models)
    seed: int = 0  # weights and batches


CONFIG = ParallelConfig  # the full run: ParallelConfig()
QUICK = ParallelConfig(batch_size=128, warmup=1, steps=4, decode_words=128)


def _at_length(data: Data, settings: Settings, length: int) -> Data:
    """``data`` with random batches of sources (B, S) and targets (B, T + 2: BOS ... EOS), S = T =
    ``length``, and random words of ``length`` letters to decode."""
    g = torch.Generator().manual_seed(settings.seed * 1009 + length)
    b, n = settings.batch_size, 1 + settings.warmup + settings.steps
    at = copy.copy(data)
    at.batches = []
    for _ in range(n):
        src = torch.randint(len(SPECIALS), len(data.letters), (b, length), generator=g)  # (B, S), no padding
        tgt = torch.randint(len(SPECIALS), len(data.phonemes), (b, length + 2), generator=g)  # (B, T + 2)
        tgt[:, 0], tgt[:, -1] = BOS, EOS
        at.batches.append((src, tgt))
    letters = torch.randint(len(string.ascii_lowercase), (settings.decode_words, length), generator=g)
    at.words = ["".join(string.ascii_lowercase[i] for i in row) for row in letters.tolist()]
    return at


def measure(config: ParallelConfig, work: Path) -> dict:
    """Per model: parameters, and per length the cold and steady training step and decoding pass."""
    top = max(config.lengths)
    settings = Settings(
        batch_size=config.batch_size, warmup=config.warmup, steps=config.steps, decode_words=config.decode_words,
        rnn=config.rnn, transformer={"max_len": top + 2, **config.transformer}, limit=config.batch_size,
        seed=config.seed,
    )  # fmt: skip
    data = Data(settings)  # the task (its loss), vocabularies and training config of bench.train
    doc: dict = {"lengths": config.lengths, "g2p_length": config.lengths[0]}
    for label, kind in KINDS.items():
        rows = {
            "cold_step_ms": [],
            "steady_step_ms": [],
            "steps_to_steady": [],
            "cold_decode_ms": [],
            "steady_decode_ms": [],
        }
        for length in config.lengths:
            at = _at_length(data, settings, length)
            c = Contender("attnkit", kind, at, settings)
            train = measure_train(c, at, settings)
            decode = measure_decode(c, at, replace(settings, decode_steps=length), beam=1)
            rows["cold_step_ms"].append(1e3 * train["cold_s"])
            rows["steady_step_ms"].append(1e3 * train["steady_step_s"])
            rows["steps_to_steady"].append(train["steps_to_steady"])
            rows["cold_decode_ms"].append(1e3 * decode["cold_pass_s"])
            rows["steady_decode_ms"].append(1e3 * decode["pass_s"])
        doc[label] = {"kind": kind, "parameters": c.params, **rows}
    doc["train_ratio"] = _ratios(doc, "steady_step_ms")
    doc["decode_ratio"] = _ratios(doc, "steady_decode_ms")
    return doc


def _ratios(doc: dict, key: str) -> list[float]:
    """Transformer / RNN per length: < 1 means the Transformer is faster."""
    return [t / r for t, r in zip(doc["transformer"][key], doc["rnn"][key])]


def crossover(lengths: list[int], ratios: list[float]) -> int | None:
    """The shortest length from which every ratio is < 1 (the Transformer stays faster); None if
    it is not faster at the longest length."""
    found = None
    for length, ratio in reversed(list(zip(lengths, ratios))):
        if ratio >= 1:
            break
        found = length
    return found


def verdict(doc: dict) -> tuple[str, str]:
    """The verdict from the training-step ratios (see the module docstring), and why."""
    lengths, ratios = doc["lengths"], doc["train_ratio"]
    at = crossover(lengths, ratios)
    shown = ", ".join(f"{r:.2f}x at {n}" for n, r in zip(lengths, ratios))
    params = f"{doc['transformer']['parameters']:,} against {doc['rnn']['parameters']:,} parameters"
    if at == lengths[0]:
        return HOLDS, f"the Transformer's training step takes {shown} the RNN's ({params}): faster at every length"
    if at is None:
        return FAILS, f"the Transformer's training step takes {shown} the RNN's ({params}): never faster here"
    before = lengths[lengths.index(at) - 1]
    return CONDITIONS, (
        f"the Transformer's training step takes {shown} the RNN's ({params}): slower at the G2P length "
        f"{lengths[0]}, faster from S = T = {at} on (the crossover lies between {before} and {at})"
    )


def figure(doc: dict) -> list[Panel]:
    """Training step and decoding time against length (log-log), and their ratios."""
    n = doc["lengths"]
    kinds = {"steady": "steady_", "cold": "cold_"}
    step = {f"{m} {what}": (n, doc[m][f"{k}step_ms"]) for m in KINDS for what, k in kinds.items()}
    decode = {f"{m} {what}": (n, doc[m][f"{k}decode_ms"]) for m in KINDS for what, k in kinds.items()}
    return [
        Panel("training step (forward + backward + AdamW)", "S = T", "ms per step", step, logx=True, logy=True),
        Panel("greedy decoding, S steps per word", "S = T", "ms per pass over the words", decode, logx=True, logy=True),
        Panel(
            "Transformer / RNN (< 1: Transformer faster)",
            "S = T",
            "time ratio",
            {"training step": (n, doc["train_ratio"]), "decoding": (n, doc["decode_ratio"])},
            logx=True,
        ),
    ]


def method(config: ParallelConfig) -> list[str]:
    return [
        (
            f"models: `RNNConfig()` (LSTM + Luong `general`, the G2P default) and `TransformerConfig({config.transformer})`"
            " (matched parameters), the G2P vocabularies, float32, dropout on (training mode)"
        ),
        (
            f"training: random batches of {config.batch_size} sequences, S = T in {config.lengths}; a fresh model per "
            f"length; its cold first step, {config.warmup} warm-up steps, then the median of {config.steps} timed "
            "steps (`attnkit.bench.train.measure_train`)"
        ),
        (
            f"decoding: greedy, {config.decode_words} random words of S letters, exactly S steps each, in batches of "
            f"{config.batch_size}; a cold pass then a steady pass (`attnkit.bench.train.measure_decode`)"
        ),
    ]


def numbers(doc: dict) -> list[str]:
    r, t = doc["rnn"], doc["transformer"]
    lines = [
        f"parameters: rnn {r['parameters']:,}, transformer {t['parameters']:,}",
        "",
        (
            "| S = T | rnn step cold / steady (ms) | transformer step cold / steady (ms) | step ratio | "
            "rnn decode cold / steady (ms) | transformer decode cold / steady (ms) | decode ratio |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, n in enumerate(doc["lengths"]):
        lines.append(
            f"| {n} | {r['cold_step_ms'][i]:.0f} / {r['steady_step_ms'][i]:.0f} | "
            f"{t['cold_step_ms'][i]:.0f} / {t['steady_step_ms'][i]:.0f} | {doc['train_ratio'][i]:.2f}x | "
            f"{r['cold_decode_ms'][i]:.0f} / {r['steady_decode_ms'][i]:.0f} | "
            f"{t['cold_decode_ms'][i]:.0f} / {t['steady_decode_ms'][i]:.0f} | {doc['decode_ratio'][i]:.2f}x |"
        )
    return lines
