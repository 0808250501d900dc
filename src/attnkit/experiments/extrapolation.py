"""Train short, test long: which way of giving a Transformer token order reads longer inputs?

Press et al. 2022 (ALiBi) train on short inputs and test on longer ones: with sinusoidal, learned,
rotary or T5 positions quality falls apart past the training length, with ALiBi's linear distance
biases it holds up. Here the G2P Transformer (:class:`~attnkit.models.TransformerSeq2Seq`) is
trained once per position method (``TransformerConfig.position``: ``sinusoidal`` and ``learned``
added to the embeddings, ``rope``, ``alibi`` and ``t5`` inside every self-attention), the same
size, data, seed and schedule, on the CMUdict training words of at most N = ``longest`` letters
only; each is chosen (its best epoch) on validation words of at most N letters. Then each decodes
validation words greedily (never the test split), and its WER and PER are reported per word-length
bucket: at most N letters (validation words other than the choosing ones), N+1..N+3, N+4..N+6 and
N+7 up: inputs up to twice as long as any seen in training, and outputs longer too. The absolute
methods' table (``max_len``) covers every validation word, so their longer positions exist but
were never trained (``learned``) or never seen (``sinusoidal``). Cross-attention reads no positions
under the relative methods, so the encoder's ALiBi is its directional form (each head's keys to the
left and right at different slopes): the symmetric form (``-m |i - j|``) would make the ``alibi`` model
read a spelling and its reverse alike (in a pilot, 45-47% PER on short words against 15-18% for
``sinusoidal``), a handicap of an encoder-decoder that the paper's decoder-only models do not have.

Verdict (:func:`verdict`), on PER: the claim holds if ALiBi has the lowest PER of all methods on
both of the two longest buckets and its PER grows least from the short bucket to the longest; it
holds under conditions if ALiBi is lowest on one of the two longest buckets, or on both while
another method grows less; it does not hold here if ALiBi is lowest on neither. A tie for lowest
counts as lowest.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data import cmudict
from ..errors import AttentionError, check_int
from ..models.transformer import POSITIONS
from ..tasks.g2p import G2PTask, decode_words, score
from ..train import checkpoint
from ..viz.static import Panel
from .base import CONDITIONS, FAILS, HOLDS, Notes
from .g2p import _Labelled

__all__ = [
    "CLAIM", "CONFIG", "NAME", "NOTES", "QUICK", "ExtrapolationConfig", "ShortWords", "buckets", "evaluation_words",
    "figure", "growth", "measure_method", "verdict",
]  # fmt: skip

NAME = "extrapolation"
CLAIM = "with ALiBi a Transformer trained on short inputs reads longer ones better than with other positions"
NOTES = (
    Notes(
        "",
        "ALiBi does not add positional embeddings to word embeddings; instead, it biases query-key attention "
        "scores with a penalty that is proportional to their distance. We show that this method trains a 1.3 "
        "billion parameter model on input sequences of length 1024 that extrapolates to input sequences of "
        "length 2048, achieving the same perplexity as a sinusoidal position embedding model trained on inputs "
        "of length 2048 but training 11% faster and using 11% less memory.",
        paper="Press, Smith and Lewis, *Train Short, Test Long: Attention with Linear Biases Enables Input "
        "Length Extrapolation*, ICLR 2022 (arXiv:2108.12409), abstract",
    ),
)

ALIBI = "alibi"  # the method the claim is about


@dataclass
class ExtrapolationConfig:
    methods: list[str] = field(default_factory=lambda: list(POSITIONS))  # TransformerConfig.position, one model each
    longest: int = 7  # N: the most letters of a training (and choosing) word
    d_model: int = 128  # D
    heads: int = 4  # H
    ff_dim: int = 256  # the feed-forward block's inner dim
    layers: int = 2  # encoder and decoder layers each
    max_len: int = 64  # the absolute methods' table: every validation word (17 letters at most) and its output
    words: int | None = 24000  # training words of at most N letters, spread over them; None: all 59,083
    select_words: int = 300  # validation words of at most N letters decoded after each epoch (choosing the epoch)
    bucket_words: int = 400  # validation words decoded per length bucket at the end, spread (fewer where fewer)
    epochs: int = 4  # every epoch runs; the best by validation WER is kept
    batch_size: int = 128  # words per step
    lr: float = 2e-3  # peak learning rate (the trainer's default)
    warmup_steps: int = 200  # linear warm-up steps
    dropout: float = 0.1  # the Transformer's default
    seed: int = 0  # weights, batch order and dropout: the same for every method

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in POSITIONS]
        if unknown:
            raise AttentionError(f"methods has {unknown} outside TransformerConfig.position's {list(POSITIONS)}")
        if ALIBI not in self.methods or len(self.methods) < 2:
            raise AttentionError(
                f"methods has {self.methods}; it must include {ALIBI!r} and at least one method to compare it with"
            )
        for name in ("longest", "select_words", "bucket_words"):
            check_int(name, getattr(self, name))


CONFIG = ExtrapolationConfig  # the full run: ExtrapolationConfig()
QUICK = ExtrapolationConfig(
    d_model=16, heads=2, ff_dim=32, layers=1, words=64, select_words=6, bucket_words=4, epochs=2, batch_size=32,
    warmup_steps=2,
)  # fmt: skip


@dataclass
class ShortWords(G2PTask):
    """A :class:`~attnkit.tasks.g2p.G2PTask` on the training words of at most ``letters_max``
    letters (``limit`` of them, spread), validated on ``valid_limit`` validation words of at most
    that many."""

    letters_max: int = 7  # N: the most letters of a training or validation word

    def __post_init__(self):
        check_int("letters_max", self.letters_max)
        super().__post_init__()
        self.valid = cmudict.spread(_short(cmudict.load("valid"), self.letters_max), self.valid_limit)

    def _training_words(self) -> list[cmudict.Entry]:
        return _short(super()._training_words(), self.letters_max)


def _short(entries: list[cmudict.Entry], letters: int) -> list[cmudict.Entry]:
    return [e for e in entries if len(e.word) <= letters]


def buckets(longest: int) -> list[tuple[int, int | None]]:
    """The word-length buckets (low, high; None: no bound) of a model trained on at most ``longest``
    letters: the training lengths, then three letters, three more, and the rest.

    >>> buckets(7)
    [(1, 7), (8, 10), (11, 13), (14, None)]
    """
    return [(1, longest), (longest + 1, longest + 3), (longest + 4, longest + 6), (longest + 7, None)]


def _name(bounds: tuple[int, int | None]) -> str:
    low, high = bounds
    return f"{low}+" if high is None else f"{low}-{high}"


def evaluation_words(config: ExtrapolationConfig) -> list[list[cmudict.Entry]]:
    """The validation words decoded at the end, per bucket of :func:`buckets`: up to
    ``bucket_words`` spread over the bucket's words; the first bucket's exclude the choosing words."""
    valid = cmudict.load("valid")
    chosen = {e.word for e in cmudict.spread(_short(valid, config.longest), config.select_words)}
    out = []
    for low, high in buckets(config.longest):
        held = [e for e in valid if low <= len(e.word) and (high is None or len(e.word) <= high)]
        out.append(cmudict.spread([e for e in held if e.word not in chosen], config.bucket_words))
    return out


def _model_config(config: ExtrapolationConfig, method: str) -> dict:
    return {
        "d_model": config.d_model,
        "heads": config.heads,
        "ff_dim": config.ff_dim,
        "encoder_layers": config.layers,
        "decoder_layers": config.layers,
        "max_len": config.max_len,
        "dropout": config.dropout,
        "position": method,
    }


def _train(config: ExtrapolationConfig, method: str, work: Path):
    """The trained model of ``method``, at its best epoch, its task and its per-epoch history. A
    folder with a checkpoint of the same run continues it; a finished run is only loaded."""
    from ..train import TrainConfig, Trainer

    task = ShortWords(
        "transformer",
        _model_config(config, method),
        limit=config.words,
        valid_limit=config.select_words,
        letters_max=config.longest,
    )
    train = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        warmup_steps=config.warmup_steps,
        patience=config.epochs,  # no early stopping: every method gets the same budget
        seed=config.seed,
    )
    trainer = Trainer(task, train, work, progress=False)
    with contextlib.redirect_stdout(_Labelled(sys.stdout, f"{method}: ")):
        history = trainer.fit(resume=(work / "last.safetensors").exists())["history"]
    best = work / "best.safetensors"
    tensors, _ = checkpoint.load(best)
    checkpoint.load_model(trainer.model, tensors, best)
    return trainer.model, task, history


def _key(config: ExtrapolationConfig) -> dict:
    """What a method's result depends on: the config without the list of methods."""
    return json.loads(json.dumps({k: v for k, v in asdict(config).items() if k != "methods"}))


def measure_method(config: ExtrapolationConfig, method: str, work: Path, words: list[list[cmudict.Entry]]) -> dict:
    """Train ``method``'s model (in ``work/method``), then its WER and PER per bucket of ``words``.
    The result is kept in ``work/method/result.json`` as soon as it is measured, so that a stopped
    run keeps the methods it finished."""
    folder = Path(work) / method
    done = folder / "result.json"
    if done.is_file():
        kept = json.loads(done.read_text())
        if kept.get("config") == _key(config):
            return kept["result"]
    model, task, history = _train(config, method, folder)
    wer, per = [], []
    for entries in words:
        if not entries:
            wer.append(None)
            per.append(None)
            continue
        hyps = decode_words(model, [e.word for e in entries], task.letters, task.phonemes)
        m = score([h.tokens for h in hyps], [e.pronunciations for e in entries])
        wer.append(m["wer"])
        per.append(m["per"])
    select = [r["wer"] for r in history]
    result = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_words": len({tuple(src) for src, _ in task.pairs}),
        "epoch": [r["epoch"] for r in history],
        "select_wer": select,
        "train_loss": [r["train_loss"] for r in history],
        "chosen_epoch": history[select.index(min(select))]["epoch"],
        "train_s": history[-1]["elapsed_s"],
        "wer": wer,
        "per": per,
    }
    checkpoint.write_json(done, {"config": _key(config), "result": result})
    return result


def measure(config: ExtrapolationConfig, work: Path) -> dict:
    """Per method: its training curve, chosen epoch, and WER / PER per length bucket."""
    words = evaluation_words(config)
    names = [_name(b) for b in buckets(config.longest)]
    doc: dict = {"methods": list(config.methods), "longest": config.longest, "buckets": names}
    doc["bucket_words"] = [len(ws) for ws in words]
    doc["letters"] = [sum(len(e.word) for e in ws) / len(ws) if ws else None for ws in words]
    for method in config.methods:
        doc[method] = measure_method(config, method, work, words)
    top = {k: max(v for m in config.methods for v in doc[m][k] if v is not None) for k in ("per", "wer")}
    doc["mark"] = {"letters": [config.longest, config.longest], "per": [0.0, top["per"]], "wer": [0.0, top["wer"]]}
    return doc


def growth(doc: dict, method: str) -> float:
    """``method``'s PER on the longest bucket with words minus its PER on the shortest (points)."""
    pers = [p for p in doc[method]["per"] if p is not None]
    return pers[-1] - pers[0]


def _lowest(doc: dict, i: int) -> list[str]:
    """The methods with the lowest PER on bucket ``i`` (ties: all of them); none if it has no words."""
    pers = {m: doc[m]["per"][i] for m in doc["methods"] if doc[m]["per"][i] is not None}
    return [m for m, p in pers.items() if p == min(pers.values())] if pers else []


def verdict(doc: dict) -> tuple[str, str]:
    """The verdict from the PER per bucket (see the module docstring), and why."""
    methods, names = doc["methods"], doc["buckets"]
    long_ones = [len(names) - 2, len(names) - 1]
    wins = [i for i in long_ones if ALIBI in _lowest(doc, i)]
    grows = {m: growth(doc, m) for m in methods}
    least = min(grows.values())
    shown = "; ".join(
        f"{m} " + " / ".join("-" if p is None else f"{p:.1f}" for p in doc[m]["per"]) + f" ({grows[m]:+.1f})"
        for m in methods
    )
    said = f"PER on {' / '.join(names)} letters (growth from the first to the last): {shown}"
    best = "; ".join(f"{names[i]}: {', '.join(_lowest(doc, i)) or 'no words'}" for i in long_ones)
    if not wins:
        return FAILS, f"{said}: ALiBi is not the lowest on either of the two longest buckets (lowest: {best})"
    if len(wins) == 2 and grows[ALIBI] <= least:
        return HOLDS, f"{said}: ALiBi is the lowest on both longest buckets and grows least"
    if len(wins) == 2:
        others = ", ".join(m for m in methods if grows[m] < grows[ALIBI])
        return CONDITIONS, f"{said}: ALiBi is the lowest on both longest buckets, but {others} grows less"
    return CONDITIONS, f"{said}: ALiBi is the lowest on one of the two longest buckets only (lowest: {best})"


def figure(doc: dict) -> list[Panel]:
    """PER and WER against the buckets' mean word length, one line per method, the longest training
    word marked; and the choosing WER per epoch."""
    n = doc["longest"]

    def by_length(key: str) -> dict:
        series = {}
        for m in doc["methods"]:
            pairs = [(x, y) for x, y in zip(doc["letters"], doc[m][key]) if x is not None and y is not None]
            series[m] = ([x for x, _ in pairs], [y for _, y in pairs])
        series[f"longest training word ({n})"] = (doc["mark"]["letters"], doc["mark"][key])
        return series

    xlabel = "letters (mean of the bucket: " + ", ".join(doc["buckets"]) + ")"
    choosing = {m: (doc[m]["epoch"], doc[m]["select_wer"]) for m in doc["methods"]}
    return [
        Panel("phoneme error rate by word length", xlabel, "PER (%)", by_length("per")),
        Panel("word error rate by word length", xlabel, "WER (%)", by_length("wer")),
        Panel(f"choosing: validation words of <= {n} letters", "epoch", "WER (%)", choosing),
    ]


def method(config: ExtrapolationConfig) -> list[str]:
    names = ", ".join(_name(b) for b in buckets(config.longest))
    return [
        (
            f"models: the G2P Transformer, D = {config.d_model}, H = {config.heads}, FF {config.ff_dim}, "
            f"{config.layers} + {config.layers} layers, dropout {config.dropout}, with `position=` each of "
            f"{', '.join(config.methods)} (absolute tables of max_len {config.max_len})"
        ),
        (
            f"training: {config.words or 'all'} CMUdict training words of at most {config.longest} letters (spread "
            f"over them), {config.epochs} epochs, batch {config.batch_size}, lr {config.lr}, warm-up "
            f"{config.warmup_steps}, seed {config.seed}, no early stopping (`attnkit.train.Trainer`); the epoch kept "
            f"is the best by greedy WER on {config.select_words} validation words of at most {config.longest} letters"
        ),
        (
            f"test: greedy decoding of up to {config.bucket_words} validation words per length bucket ({names} "
            "letters; the first without the choosing words), WER and PER per bucket; never the test split"
        ),
    ]


def numbers(doc: dict) -> list[str]:
    names = doc["buckets"]
    cell = lambda v: "-" if v is None else f"{v:.1f}"
    lines = [
        "| position | parameters | chosen epoch | "
        + " | ".join(f"{b} letters: WER / PER" for b in names)
        + " | PER growth |"
    ]
    lines.append("|---|---:|---:|" + "---:|" * (len(names) + 1))
    for m in doc["methods"]:
        r = doc[m]
        lines.append(
            f"| {m} | {r['parameters']:,} | {r['chosen_epoch']} | "
            + " | ".join(f"{cell(w)} / {cell(p)}" for w, p in zip(r["wer"], r["per"]))
            + f" | {growth(doc, m):+.1f} |"
        )
    lines.append(
        "| words (mean letters) | | | "
        + " | ".join(f"{n} ({cell(x)})" for n, x in zip(doc["bucket_words"], doc["letters"]))
        + " | |"
    )
    lines += ["", "| position | " + " | ".join(f"epoch {e}" for e in doc[doc["methods"][0]]["epoch"]) + " | train s |"]
    lines.append("|---|" + "---:|" * (len(doc[doc["methods"][0]]["epoch"]) + 1))
    for m in doc["methods"]:
        r = doc[m]
        lines.append(
            f"| {m}: choosing WER | " + " | ".join(f"{w:.2f}" for w in r["select_wer"]) + f" | {r['train_s']} |"
        )
    return lines
