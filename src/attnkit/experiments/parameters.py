"""Does attention need fewer parameters for the same quality?

Three kinds of G2P model, each at several sizes, trained on the same words with the same seed and
schedule: an LSTM encoder-decoder without attention, the same with Luong's scaled ``general``
attention, and a Transformer. The validation WER (greedy) against the parameter count gives each
kind a curve; the **target** is the best WER that every kind reaches (the worst of the kinds'
best), and for each kind the parameters it needs to reach it are read off its curve
(:func:`needed`: linear in log-parameters between the two sizes around the target).

Verdict (:func:`verdict`): holds if both attention kinds need fewer parameters than the model
without attention; holds under conditions if one of them does; does not hold here otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AttentionError
from ..viz.static import Panel
from . import g2p
from .base import Notes, by_share
from .g2p import TrainSize

__all__ = ["CLAIM", "CONFIG", "NAME", "NOTES", "QUICK", "ParametersConfig", "figure", "needed", "verdict"]

NAME = "parameters"
CLAIM = "attention needs fewer parameters than an RNN without it for the same quality"
NOTES = (Notes("000_06b4c4b04635e4b5.txt", "模型复杂度跟CNN、RNN相比，复杂度更小，参数也更少。所以对算力的要求更小。"),)

BASELINE = "rnn, no attention"


def _kinds() -> dict[str, tuple[str, dict, str, list[int]]]:
    """Label -> (model, fixed config, the field that sets the size, its values)."""
    return {
        BASELINE: ("rnn", {"attention": "none"}, "hidden_dim", [32, 64, 128, 256]),
        "rnn, Luong attention": ("rnn", {"attention": "luong-general", "scaled": True}, "hidden_dim", [32, 64, 128, 256]),
        "transformer": ("transformer", {}, "d_model", [32, 64, 128, 256]),
    }  # fmt: skip


@dataclass
class ParametersConfig:
    kinds: dict = field(default_factory=_kinds)  # label -> (model, config, size field, sizes); BASELINE among them
    words: int | None = 20000  # training words
    valid_words: int = 1000  # validation words decoded after each epoch (the final epoch's WER counts)
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 200
    seed: int = 0

    def __post_init__(self):
        if BASELINE not in self.kinds:
            raise AttentionError(
                f"kinds has {sorted(self.kinds)}; it must include {BASELINE!r}, the model without attention"
            )


CONFIG = ParametersConfig  # the full run: ParametersConfig()
QUICK = ParametersConfig(
    kinds={
        BASELINE: ("rnn", {"attention": "none", "embed_dim": 32}, "hidden_dim", [24, 48, 96]),
        "rnn, Luong attention": ("rnn", {"attention": "luong-general", "scaled": True, "embed_dim": 32}, "hidden_dim", [24, 48, 96]),
        "transformer": ("transformer", {"encoder_layers": 2, "decoder_layers": 2}, "d_model", [24, 48, 96]),
    },
    words=15000, valid_words=400, epochs=4, batch_size=64, warmup_steps=100,
)  # fmt: skip


def _sized(kind: str, config: dict, key: str, value: int) -> dict:
    """``config`` with its size field set; a Transformer's feed-forward is 2 x d_model and its heads
    d_model / 16 (at least 1), so that one number sets its width."""
    out = {**config, key: value}
    if kind == "transformer" and key == "d_model":
        out |= {"ff_dim": 2 * value, "heads": max(1, value // 16)}
    return out


def measure(config: ParametersConfig, work: Path) -> dict:
    """Per kind and size: parameters and the final validation WER; then the target and needs."""
    size = TrainSize(
        config.words, config.valid_words, config.epochs, config.batch_size, config.lr, config.warmup_steps, config.seed
    )
    doc: dict = {"kinds": list(config.kinds)}
    for label, (kind, fixed, key, values) in config.kinds.items():
        rows = {"size_field": key, "sizes": values, "parameters": [], "wer": [], "train_s": []}
        for value in values:
            run = g2p.train(kind, _sized(kind, fixed, key, value), size, work / f"{kind}-{label[:8]}-{value}")
            rows["parameters"].append(sum(p.numel() for p in run.model.parameters()))
            rows["wer"].append(run.curve("wer")[-1])
            rows["train_s"].append(run.history[-1]["elapsed_s"])
        doc[label] = rows
    doc["target_wer"] = max(min(doc[k]["wer"]) for k in doc["kinds"])
    for k in doc["kinds"]:
        doc[k]["needed"] = needed(doc[k]["parameters"], doc[k]["wer"], doc["target_wer"])
    return doc


def needed(parameters: list[int], wers: list[float], target: float) -> float | None:
    """The parameters at which the curve (sorted by parameters) first reaches ``target`` WER:
    linear in log-parameters between the last size above it and the first at or below it; the
    smallest size if that already reaches it; None if no size does."""
    points = sorted(zip(parameters, wers))
    for i, (p, w) in enumerate(points):
        if w <= target:
            if i == 0:
                return float(p)
            p0, w0 = points[i - 1]
            t = (w0 - target) / (w0 - w)
            return math.exp(math.log(p0) + t * (math.log(p) - math.log(p0)))
    return None


def verdict(doc: dict) -> tuple[str, str]:
    """The verdict from the parameters each kind needs (see the module docstring), and why."""
    base = doc[BASELINE]["needed"]
    others = [k for k in doc["kinds"] if k != BASELINE]
    said = f"parameters to reach {doc['target_wer']:.2f}% validation WER: " + ", ".join(
        f"{k} {_count(doc[k]['needed'])}" for k in doc["kinds"]
    )
    fewer = [k for k in others if doc[k]["needed"] is not None and (base is None or doc[k]["needed"] < base)]
    verdict, which = by_share(fewer, others)
    return verdict, f"{said}: attention models that need fewer than the RNN without attention: {which}"


def figure(doc: dict) -> list[Panel]:
    """Validation WER against parameters (log x), with the target as a line; training time."""
    kinds = doc["kinds"]
    low = min(min(doc[k]["parameters"]) for k in kinds)
    high = max(max(doc[k]["parameters"]) for k in kinds)
    wer = {k: (doc[k]["parameters"], doc[k]["wer"]) for k in kinds}
    wer["target"] = ([low, high], [doc["target_wer"]] * 2)
    return [
        Panel("validation WER against size", "parameters", "WER (%)", wer, logx=True),
        Panel("training time", "parameters", "seconds", {k: (doc[k]["parameters"], doc[k]["train_s"]) for k in kinds}, logx=True),
    ]  # fmt: skip


def method(config: ParametersConfig) -> list[str]:
    models = "; ".join(f"{k}: `{m}` {c}, {key} in {values}" for k, (m, c, key, values) in config.kinds.items())
    return [
        f"models: {models} (a Transformer's feed-forward is 2 x d_model, its heads d_model / 16)",
        (
            f"training: {config.words or 'all'} training words, {config.epochs} epochs, batch {config.batch_size}, "
            f"lr {config.lr}, warm-up {config.warmup_steps}, seed {config.seed}, no early stopping; the last epoch's "
            f"greedy WER on {config.valid_words} validation words"
        ),
        "target: the worst of the kinds' best WERs; parameters needed: linear in log-parameters between sizes",
    ]


def numbers(doc: dict) -> list[str]:
    lines = ["| model | size | parameters | validation WER | training s |", "|---|---:|---:|---:|---:|"]
    for k in doc["kinds"]:
        d = doc[k]
        for i, v in enumerate(d["sizes"]):
            lines.append(
                f"| {k} | {d['size_field']} {v} | {d['parameters'][i]:,} | {d['wer'][i]:.2f} | {d['train_s'][i]:.0f} |"
            )
    lines += ["", f"target: {doc['target_wer']:.2f}% WER", "", "| model | parameters needed |", "|---|---:|"]
    lines += [f"| {k} | {_count(doc[k]['needed'])} |" for k in doc["kinds"]]
    return lines


def _count(value: float | None) -> str:
    return "never" if value is None else f"{value:,.0f}"
