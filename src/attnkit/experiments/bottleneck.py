"""Does attention remove the fixed-context bottleneck, so that quality holds up on long inputs?

The shape of Bahdanau et al. 2015, Figure 2 (quality against sentence length, RNNenc against
RNNsearch), on real data with long inputs: CMUdict **phrases**, 1 to ``max_words`` dictionary
words joined by ``_`` in spelling and pronunciation (:func:`attnkit.data.cmudict.phrases`; the
validation phrases hold validation words only). Four models of about the same parameter count,
same data, seed and schedule: an LSTM encoder-decoder without attention (one fixed context: the
bottleneck), with Bahdanau's additive attention, with Luong's scaled ``general`` attention, and a
Transformer (1.02M to 1.15M parameters). Each is trained by the project's trainer for a fixed
number of epochs, then decodes the validation phrases greedily; the phoneme error rate (PER) and the share of phrases wrong
(WER) are reported per number of words in the phrase. The same four kinds are also trained on
single words, with WER per word-length bucket (:data:`attnkit.tasks.g2p.LENGTHS`).

Verdict (:func:`verdict`), on the phrase PER: the degradation of a model is its PER on the
longest phrases minus its PER on one-word phrases. The claim holds if the model without attention
degrades by at least ``DEGRADES`` points and every attention model degrades by at most ``SHARE``
of that and ends below it on the longest phrases; it holds under conditions if some attention
models do; it does not hold here if none does (or if the model without attention does not
degrade: then there is no bottleneck to remove at these lengths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.cmudict import SEPARATOR
from ..errors import AttentionError
from ..tasks.g2p import LENGTHS, by_length, decode_words, score
from ..viz.static import Panel
from . import g2p
from .base import FAILS, Notes, by_share, numbered
from .g2p import TrainSize

__all__ = ["CLAIM", "CONFIG", "NAME", "NOTES", "QUICK", "BottleneckConfig", "degradation", "figure", "verdict"]

NAME = "bottleneck"
CLAIM = "attention removes the fixed-context bottleneck, so quality holds up on long inputs"
NOTES = (
    Notes(
        "002_f9da88eb9150baf4.txt",
        "虽然我们将编码器的上下文向量传给解码器。但实际上，上下文向量是这类模型的瓶颈。因为这使得模型在处理长文本时面临非常大的挑战。",
    ),
    Notes(
        "001_3603ecd0843c385a.txt",
        "解决*输入尺寸过长的时候效果差的问题(Lose Focus)*，由于Encoder-Decoder的架构将输入X映射为一个固定长度的隐向量Z",
    ),
)

DEGRADES = 5.0  # PER points the model without attention must lose from one-word to the longest phrases
SHARE = 0.5  # an attention model may lose at most this share of the no-attention model's loss
BASELINE = "none"  # the label of the model without attention


def _kinds() -> dict[str, tuple[str, dict]]:
    """Line label -> (model, config): 1.02M (none, Transformer) to 1.15M (Bahdanau) parameters at the
    phrase vocabularies, a size that trains on long phrases in minutes an epoch on one CPU thread."""
    rnn = {"embed_dim": 64, "hidden_dim": 128}
    return {
        "none": ("rnn", {"attention": "none", **rnn}),
        "bahdanau": ("rnn", {"attention": "bahdanau", **rnn}),
        "luong": ("rnn", {"attention": "luong-general", "scaled": True, **rnn}),
        "transformer": ("transformer", {"d_model": 128, "heads": 4, "ff_dim": 256, "max_len": 512}),
    }


@dataclass
class BottleneckConfig:
    kinds: dict = field(default_factory=_kinds)  # label -> (model, config); BASELINE among them
    phrases: int = 8000  # training phrases
    max_words: int = 8  # words per phrase, 1..max_words
    valid_phrases: int = 1600  # validation phrases decoded at the end (about 200 per word count)
    phrase_epochs: int = 5  # epochs on phrases (no early stopping)
    phrase_batch: int = 64  # phrases per step
    words: int | None = 30000  # training words of the single-word part; None: the whole split
    valid_words: int | None = 3000  # validation words decoded at the end; None: all
    word_epochs: int = 3  # epochs on words
    word_batch: int = 256  # words per step
    lr: float = 2e-3  # peak learning rate (the trainer's default)
    warmup_steps: int = 400  # linear warm-up steps
    epoch_valid: int = 200  # validation phrases / words decoded after each epoch (the curves)
    seed: int = 0  # weights, batch order and dropout

    def __post_init__(self):
        if BASELINE not in self.kinds:
            raise AttentionError(
                f"kinds has {sorted(self.kinds)}; it must include {BASELINE!r}, the model without attention"
            )


CONFIG = BottleneckConfig  # the full run: BottleneckConfig()
_SMALL = {"embed_dim": 32, "hidden_dim": 64}
QUICK = BottleneckConfig(
    kinds={
        "none": ("rnn", {"attention": "none", **_SMALL}),
        "bahdanau": ("rnn", {"attention": "bahdanau", **_SMALL}),
        "luong": ("rnn", {"attention": "luong-general", "scaled": True, **_SMALL}),
        "transformer": ("transformer", {"d_model": 64, "heads": 2, "ff_dim": 128, "max_len": 512}),
    },
    phrases=5000, max_words=4, valid_phrases=400, phrase_epochs=4, phrase_batch=32,
    words=8000, valid_words=1000, word_epochs=3, word_batch=64, warmup_steps=100, epoch_valid=60,
)  # fmt: skip


def _words_in(phrase: str) -> int:
    return phrase.count(SEPARATOR) + 1


def _decoded(run: g2p.Run, entries) -> tuple[list[str], list, list]:
    """Greedy outputs of ``run``'s model for ``entries``: their spellings, outputs and references."""
    task = run.task
    spellings = [e.word for e in entries]
    hyps = decode_words(run.model, spellings, task.letters, task.phonemes)
    return spellings, [h.tokens for h in hyps], [e.pronunciations for e in entries]


def by_words(spellings: list[str], hyps, refs, max_words: int) -> dict[str, list]:
    """:func:`~attnkit.tasks.g2p.score` of the phrases of each word count 1..``max_words``, as lists
    over the counts (a count without phrases: None), with the count of phrases and mean letters."""
    out: dict[str, list] = {"words": list(range(1, max_words + 1)), "phrases": [], "letters": []}
    for key in ("wer", "per"):
        out[key] = []
    for n in out["words"]:
        idx = [i for i, s in enumerate(spellings) if _words_in(s) == n]
        out["phrases"].append(len(idx))
        out["letters"].append(sum(len(spellings[i]) for i in idx) / len(idx) if idx else None)
        m = score([hyps[i] for i in idx], [refs[i] for i in idx]) if idx else {}
        for key in ("wer", "per"):
            out[key].append(m.get(key))
    return out


def measure(config: BottleneckConfig, work: Path) -> dict:
    """Per kind: parameters, the phrase model's validation curve and its PER / WER per word count,
    the word model's validation curve and its WER / PER per word-length bucket."""
    phrase_size = TrainSize(
        None, config.epoch_valid, config.phrase_epochs, config.phrase_batch, config.lr, config.warmup_steps, config.seed,
        phrases=config.phrases, max_words=config.max_words,
    )  # fmt: skip
    word_size = TrainSize(
        config.words, config.epoch_valid, config.word_epochs, config.word_batch, config.lr, config.warmup_steps,
        config.seed,
    )  # fmt: skip
    from ..data import cmudict

    valid_phrases = cmudict.phrases("valid", config.valid_phrases, config.max_words)
    valid_words = cmudict.spread(cmudict.load("valid"), config.valid_words)
    doc: dict = {"kinds": list(config.kinds), "max_words": config.max_words, "buckets": [_bucket(b) for b in LENGTHS]}
    doc["bucket_index"] = list(range(len(LENGTHS)))  # the x of the single-word panel
    for label, (kind, model_config) in config.kinds.items():
        phrase = g2p.train(kind, model_config, phrase_size, work / f"{label}-phrases")
        spellings, hyps, refs = _decoded(phrase, valid_phrases)
        word = g2p.train(kind, model_config, word_size, work / f"{label}-words")
        words, word_hyps, word_refs = _decoded(word, valid_words)
        buckets = by_length(words, word_hyps, word_refs)
        doc[label] = {
            "model": kind,
            "config": model_config,
            "parameters": sum(p.numel() for p in phrase.model.parameters()),
            "phrases": {
                "epoch": phrase.curve("epoch"),
                "valid_wer": phrase.curve("wer"),
                "train_s": phrase.history[-1]["elapsed_s"],
                **by_words(spellings, hyps, refs, config.max_words),
                **{f"all_{k}": v for k, v in score(hyps, refs).items() if k in ("wer", "per")},
            },
            "words": {
                "epoch": word.curve("epoch"),
                "train_s": word.history[-1]["elapsed_s"],
                "valid_wer": word.curve("wer"),
                "bucket_words": [buckets.get(b, {}).get("words", 0) for b in doc["buckets"]],
                "wer": [buckets.get(b, {}).get("wer") for b in doc["buckets"]],
                "per": [buckets.get(b, {}).get("per") for b in doc["buckets"]],
                **{f"all_{k}": v for k, v in score(word_hyps, word_refs).items() if k in ("wer", "per")},
            },
        }
    return doc


def _bucket(bounds: tuple[int, int | None]) -> str:
    low, high = bounds
    return f"{low}+" if high is None else f"{low}-{high}"


def _measured(curve: dict) -> list[float]:
    """The PERs of the word counts that had phrases, shortest first."""
    return [p for p in curve["per"] if p is not None]


def degradation(curve: dict) -> float:
    """PER on the longest phrases measured minus PER on the shortest (in points)."""
    pers = _measured(curve)
    return pers[-1] - pers[0]


def verdict(doc: dict) -> tuple[str, str]:
    """The verdict from the phrase PER per word count (see the module docstring), and why."""
    base = doc[BASELINE]["phrases"]
    top = max(n for n, p in zip(base["words"], base["per"]) if p is not None)
    lost = degradation(base)
    others = [k for k in doc["kinds"] if k != BASELINE]
    ends = {k: (_measured(doc[k]["phrases"])[0], _measured(doc[k]["phrases"])[-1]) for k in doc["kinds"]}
    shown = "; ".join(f"{k} {a:.1f} -> {b:.1f}" for k, (a, b) in ends.items())
    said = f"PER from 1-word to {top}-word phrases: {shown}"
    if lost < DEGRADES:
        return FAILS, f"{said}: without attention the PER rises by {lost:.1f} < {DEGRADES} points, no bottleneck shows"
    kept = [k for k in others if degradation(doc[k]["phrases"]) <= SHARE * lost and ends[k][1] < ends[BASELINE][1]]
    verdict, which = by_share(kept, others)
    return verdict, (
        f"{said}: attention models that hold up: {which} (an attention model may lose at most {SHARE:.0%} of the "
        f"{lost:.1f} points the model without attention loses, and end below it)"
    )


def figure(doc: dict) -> list[Panel]:
    """PER and WER against words per phrase (Bahdanau's Figure 2), WER against word length."""
    kinds, labels = doc["kinds"], doc["bucket_index"]

    def line(part: str, key: str, xs_key: str) -> dict:
        series = {}
        for k in kinds:
            pairs = [
                (x, y) for x, y in zip(doc[k][part][xs_key] if xs_key else labels, doc[k][part][key]) if y is not None
            ]
            series[k] = ([x for x, _ in pairs], [y for _, y in pairs])
        return series

    return [
        Panel("phrases: phoneme error rate", "words in the phrase", "PER (%)", line("phrases", "per", "words")),
        Panel("phrases: share wrong", "words in the phrase", "phrase error rate (%)", line("phrases", "wer", "words")),
        Panel(
            "single words: WER by length",
            numbered(doc["buckets"], per_line=4) + " letters",
            "WER (%)",
            line("words", "wer", ""),
        ),
    ]


def method(config: BottleneckConfig) -> list[str]:
    models = "; ".join(f"{k}: `{m}` {c}" for k, (m, c) in config.kinds.items())
    return [
        f"models: {models}",
        (
            f"phrases: {config.phrases} training phrases of 1-{config.max_words} training words "
            f"(`cmudict.phrases`, seed 0), {config.phrase_epochs} epochs, batch {config.phrase_batch}, lr {config.lr}, "
            f"warm-up {config.warmup_steps}, seed {config.seed}, no early stopping (`attnkit.train.Trainer`, "
            f"`G2PTask(phrases=)`); then greedy decoding of {config.valid_phrases} validation phrases of validation "
            "words, PER and phrase error rate per word count"
        ),
        (
            f"single words: {config.words or 'all'} training words, {config.word_epochs} epochs, batch "
            f"{config.word_batch}; greedy decoding of {config.valid_words or 'all'} validation words, WER and PER per "
            "word-length bucket"
        ),
    ]


def numbers(doc: dict) -> list[str]:
    kinds = doc["kinds"]
    first = doc[kinds[0]]["phrases"]
    lines = ["| model | parameters | " + " | ".join(f"{n} words" for n in first["words"]) + " | all |"]
    lines.append("|---|---:|" + "---:|" * (len(first["words"]) + 1))
    cell = lambda v: "-" if v is None else f"{v:.1f}"
    for k in kinds:
        p = doc[k]["phrases"]
        lines.append(
            f"| {k}: PER / phrase error | {doc[k]['parameters']:,} | "
            + " | ".join(f"{cell(a)} / {cell(b)}" for a, b in zip(p["per"], p["wer"]))
            + f" | {p['all_per']:.1f} / {p['all_wer']:.1f} |"
        )
    lines.append(
        "| phrases (mean letters) | | "
        + " | ".join(f"{n} ({cell(m)})" for n, m in zip(first["phrases"], first["letters"]))
        + " | |"
    )
    w = doc[kinds[0]]["words"]
    lines += ["", "| single words: WER / PER | " + " | ".join(f"{b} letters" for b in doc["buckets"]) + " | all |"]
    lines.append("|---|" + "---:|" * (len(doc["buckets"]) + 1))
    for k in kinds:
        p = doc[k]["words"]
        lines.append(
            f"| {k} | "
            + " | ".join(f"{cell(a)} / {cell(b)}" for a, b in zip(p["wer"], p["per"]))
            + f" | {p['all_wer']:.1f} / {p['all_per']:.1f} |"
        )
    lines.append("| words per bucket | " + " | ".join(str(n) for n in w["bucket_words"]) + " | |")
    lines += ["", "| degradation, PER points (longest - 1 word) | " + " | ".join(kinds) + " |"]
    lines += [
        "|---|" + "---:|" * len(kinds),
        "| | " + " | ".join(f"{degradation(doc[k]['phrases']):+.1f}" for k in kinds) + " |",
    ]
    return lines
