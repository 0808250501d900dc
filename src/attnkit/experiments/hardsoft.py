"""Hard, soft and local attention on one task: what each costs and what it gives.

The notes set out the kinds: soft attention weighs every key; hard attention picks one key, so it
must align in one go and, not being differentiable, is trained with reinforcement learning; local
attention is the compromise, a soft window around a position picked first. Here all of them are
the same G2P model (a bidirectional LSTM encoder, an LSTM decoder with Luong's ``general`` score
scaled by √M, the same data, seed and schedule), differing only in the decoder's attention
(:data:`attnkit.models.ATTENTIONS`):

- soft: ``softmax``; sparse: ``sparsemax``, ``entmax15`` (exact zeros, still differentiable);
- hard: ``hard`` (one letter sampled in training, REINFORCE with reward log p(y_t)), ``gumbel``
  (straight-through Gumbel-softmax); both take the argmax at inference;
- local: ``local-m`` (a window of 2D + 1 letters around t), ``local-p`` (around a predicted centre,
  Gaussian-weighted).

For each: the validation WER per epoch and at the end (greedy), the training time, and how sharp
the trained weights are (:func:`.g2p.attention_sharpness`: one-hot share, entropy, letters with a
weight above zero).

Verdict (:func:`verdict`): the notes' account holds if REINFORCE-trained hard attention ends at
least ``MARGIN`` WER points behind soft attention while both local kinds end less than
``MARGIN`` behind it (or ahead); holds under conditions if only one of the two parts does; does
not hold here otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data import cmudict
from ..errors import AttentionError
from ..tasks.g2p import decode_words, score
from ..viz.static import Panel
from . import g2p
from .base import CONDITIONS, FAILS, HOLDS, Notes, numbered
from .g2p import TrainSize

__all__ = ["CLAIM", "CONFIG", "NAME", "NOTES", "QUICK", "HardSoftConfig", "figure", "verdict"]

NAME = "hardsoft"
CLAIM = "hard attention is harder to train than soft; local attention, between the two, loses little"
NOTES = (
    Notes(
        "000_06b4c4b04635e4b5.txt",
        "这种方式是直接精准定位到某个key，其余key就都不管了，相当于这个key的概率是1，其余key的概率全是0.因此这种对齐方式要求很高，"
        "要求一步到位，如果没有正确对齐，会有很大影响。另一方面，因为不可导，一般需要用强化学习的方法进行训练。",
    ),
    Notes(
        "000_06b4c4b04635e4b5.txt",
        "**Local Attention**，这种方式其实是以上两种方式的折中，对一个窗口区域进行计算，先用Hard方式定位到某个地方，"
        "以这个点为中心可以得到一个窗口区域，在这个小区域内用Soft方式来计算Attention。",
    ),
)

# line label -> the RNN's ``attention``; "softmax" first: every other kind is compared with it
KINDS = {
    "softmax": "luong-general",
    "sparsemax": "sparsemax",
    "entmax15": "entmax15",
    "hard (REINFORCE)": "hard",
    "gumbel (straight-through)": "gumbel",
    "local-m": "local-m",
    "local-p": "local-p",
}
SOFT, HARD, LOCAL = "softmax", "hard (REINFORCE)", ("local-m", "local-p")
MARGIN = 1.0  # WER points


@dataclass
class HardSoftConfig:
    kinds: list[str] = field(default_factory=lambda: list(KINDS))  # labels of KINDS; SOFT, HARD, LOCAL among them
    rnn: dict = field(default_factory=dict)  # RNNConfig fields beside attention and scaled (default: the G2P default)
    words: int | None = 30000  # training words; None: the whole split
    valid_words: int = 1000  # validation words decoded after each epoch and at the end
    epochs: int = 5  # every epoch runs
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 400
    seed: int = 0

    def __post_init__(self):
        unknown, missing = set(self.kinds) - set(KINDS), {SOFT, HARD, *LOCAL} - set(self.kinds)
        if unknown or missing:
            raise AttentionError(
                f"kinds has {sorted(unknown)} outside {list(KINDS)} or lacks {sorted(missing)}; "
                f"it must include {sorted({SOFT, HARD, *LOCAL})}, the kinds the verdict compares"
            )


CONFIG = HardSoftConfig  # the full run: HardSoftConfig()
QUICK = HardSoftConfig(
    rnn={"embed_dim": 32, "hidden_dim": 64}, words=12000, valid_words=500, epochs=4, batch_size=64, warmup_steps=100
)


def measure(config: HardSoftConfig, work: Path) -> dict:
    """Per kind: parameters, validation WER per epoch, training seconds, the final greedy WER / PER
    on the validation words and the sharpness of the trained weights."""
    size = TrainSize(
        config.words, config.valid_words, config.epochs, config.batch_size, config.lr, config.warmup_steps, config.seed
    )
    valid = cmudict.spread(cmudict.load("valid"), config.valid_words)
    doc: dict = {"kinds": config.kinds, "index": list(range(len(config.kinds)))}  # index: the x of the kinds
    for label in config.kinds:
        model_config = {**config.rnn, "attention": KINDS[label], "scaled": True}
        run = g2p.train("rnn", model_config, size, work / KINDS[label])
        hyps = decode_words(run.model, [e.word for e in valid], run.task.letters, run.task.phonemes)
        final = score([h.tokens for h in hyps], [e.pronunciations for e in valid])
        doc[label] = {
            "attention": KINDS[label],
            "parameters": sum(p.numel() for p in run.model.parameters()),
            "epoch": run.curve("epoch"),
            "wer_curve": run.curve("wer"),
            "train_s": run.history[-1]["elapsed_s"],
            "wer": final["wer"],
            "per": final["per"],
            "weights": g2p.attention_sharpness(run),
        }
    return doc


def verdict(doc: dict) -> tuple[str, str]:
    """The verdict from the final validation WERs (see the module docstring), and why."""
    soft = doc[SOFT]["wer"]
    gap = {k: doc[k]["wer"] - soft for k in doc["kinds"]}
    hard_worse = gap[HARD] >= MARGIN
    local_close = all(gap[k] < MARGIN for k in LOCAL)
    said = f"validation WER against softmax's {soft:.2f}: " + ", ".join(
        f"{k} {gap[k]:+.2f}" for k in doc["kinds"] if k != SOFT
    )
    hard = f"hard attention (REINFORCE) is {'' if hard_worse else 'not '}>= {MARGIN} points worse"
    local = (
        f"local-m and local-p are {'both' if local_close else 'not both'} less than {MARGIN} point worse (or better)"
    )
    if hard_worse and local_close:
        return HOLDS, f"{said}: {hard} and {local}"
    if hard_worse or local_close:
        return CONDITIONS, f"{said}: {hard}, but {local}" if hard_worse else f"{said}: {local}, but {hard}"
    return FAILS, f"{said}: {hard}, and {local}"


def figure(doc: dict) -> list[Panel]:
    """Validation WER per epoch; final WER against training time; letters weighed per step."""
    kinds, index = doc["kinds"], doc["index"]
    return [
        Panel("validation WER (greedy) per epoch", "epoch", "WER (%)", {k: (doc[k]["epoch"], doc[k]["wer_curve"]) for k in kinds}),
        Panel("final WER against training time", "training seconds", "WER (%)", {k: ([doc[k]["train_s"]], [doc[k]["wer"]]) for k in kinds}),
        Panel(
            "sharpness of the trained weights",
            numbered([doc[k]["attention"] for k in kinds]),
            "",
            {
                "letters weighed per step": (index, [doc[k]["weights"]["support"] for k in kinds]),
                "entropy (nats)": (index, [doc[k]["weights"]["entropy"] for k in kinds]),
                "one-hot share": (index, [doc[k]["weights"]["saturated"] for k in kinds]),
            },
        ),
    ]  # fmt: skip


def method(config: HardSoftConfig) -> list[str]:
    return [
        (
            f"model: `RNNConfig({config.rnn or ''})` with `scaled=True` and `attention` one of "
            + ", ".join(f"`{KINDS[k]}` ({k})" for k in config.kinds)
        ),
        (
            f"training: {config.words or 'all'} training words, {config.epochs} epochs, batch {config.batch_size}, "
            f"lr {config.lr}, warm-up {config.warmup_steps}, seed {config.seed}, no early stopping "
            f"(`attnkit.train.Trainer`); greedy WER on {config.valid_words} validation words after each epoch and at "
            "the end; sharpness of the decoder's weights teacher-forced on those words (hard kinds: their argmax)"
        ),
    ]


def numbers(doc: dict) -> list[str]:
    lines = [
        "| attention | parameters | WER | PER | training s | one-hot steps | entropy | letters weighed per step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in doc["kinds"]:
        d, w = doc[k], doc[k]["weights"]
        lines.append(
            f"| {k} (`{d['attention']}`) | {d['parameters']:,} | {d['wer']:.2f} | {d['per']:.2f} | {d['train_s']:.0f} | "
            f"{w['saturated']:.1%} | {w['entropy']:.3f} | {w['support']:.2f} |"
        )
    return lines
