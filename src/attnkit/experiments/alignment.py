"""Are attention weights an alignment? Checked against an independent one.

The reference: letter-to-phoneme alignments learnt by expectation maximisation over the training
lexicon (:class:`attnkit.data.align.Aligner`, a many-to-many aligner: one letter to 0-2 phonemes,
two letters to one), which never sees a neural model. Each G2P model (LSTM + Luong scaled
``general``, LSTM + Bahdanau, a Transformer's last cross-attention averaged over heads) is trained
on the same words; then, teacher-forced on validation words, each phoneme's attention argmax
(the letter it weighs most) is checked against the letters of the phoneme's unit in the reference.
The **alignment error rate** is the share of phonemes whose argmax is not one of those letters.
Two baselines bound it: the diagonal guess (phoneme t of T on letter ⌊(t + ½)·S/T⌋) and, for
the Luong model, its weights taken one step late (the previous phoneme's row).

A second Luong model learns the same task with every spelling reversed: if its weights are an
alignment they must run along the anti-diagonal, and its error against the mirrored reference
must stay as low as the forward model's (the first panel draws one word's argmax path).

Verdict (:func:`verdict`): holds if every model's alignment error is at most ``GOOD`` and below
the diagonal guess's, and the reversed model's too; holds under conditions if some models' are
(typically the RNNs', not the Transformer's multi-head average); does not hold here otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import cmudict
from ..data.align import Aligner, letter_of_phoneme
from ..errors import AttentionError
from ..viz.static import Panel
from . import g2p
from .base import Notes, by_share, numbered
from .g2p import TrainSize

__all__ = ["CLAIM", "CONFIG", "NAME", "NOTES", "QUICK", "AlignmentConfig", "argmax_error", "figure", "verdict"]

NAME = "alignment"
CLAIM = "attention weights are interpretable as an alignment"
NOTES = (
    Notes(
        "002_f9da88eb9150baf4.txt",
        "本质上就是为了实现编解码之间的对齐，在解码时根据前一时刻的解码状态，获取不同时刻编码状态的权重值并加权求和，进而获得该时刻语义编码向量",
    ),
    Notes("003_19406b024c1182fd.txt", "增强可解释性 -> 权值"),
)

GOOD = 0.25  # at most this share of phonemes may point at a letter outside their reference unit
REVERSED = "luong, reversed spelling"


def _kinds() -> dict[str, tuple[str, dict]]:
    return {
        "luong": ("rnn", {"attention": "luong-general", "scaled": True}),
        "bahdanau": ("rnn", {"attention": "bahdanau"}),
        "transformer": ("transformer", {"ff_dim": 512}),
    }


@dataclass
class AlignmentConfig:
    kinds: dict = field(default_factory=_kinds)  # label -> (model, config); the first is also trained reversed
    aligner_words: int = 20000  # training words the EM aligner learns from
    aligner_iterations: int = 5  # EM rounds
    words: int | None = 40000  # training words of the models; None: the whole split
    valid_words: int = 2000  # validation words checked (those the aligner can cut)
    epochs: int = 3
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 400
    seed: int = 0
    example: str = "approximate"  # the validation word whose argmax path the first panel draws


CONFIG = AlignmentConfig  # the full run: AlignmentConfig()
QUICK = AlignmentConfig(
    kinds={
        "luong": ("rnn", {"attention": "luong-general", "scaled": True, "embed_dim": 32, "hidden_dim": 96}),
        "bahdanau": ("rnn", {"attention": "bahdanau", "embed_dim": 32, "hidden_dim": 96}),
        "transformer": ("transformer", {"d_model": 64, "heads": 2, "ff_dim": 128}),
    },
    aligner_words=4000, words=20000, valid_words=500, epochs=3, batch_size=64, warmup_steps=100,
)  # fmt: skip


def argmax_error(weights: torch.Tensor, reference: list[tuple[int, ...]], shift: int = 0) -> tuple[int, int]:
    """(phonemes whose argmax letter is outside their reference letters, phonemes) for one word:
    ``weights`` (T + 1, S), a row per phoneme and one for the end; ``shift`` 1 reads each phoneme's
    weights from the previous row (the first phoneme's from its own)."""
    picks = weights[: len(reference)].argmax(-1).tolist()
    if shift:
        picks = picks[:1] + picks[:-1]
    return sum(p not in ref for p, ref in zip(picks, reference)), len(reference)


def _diagonal(reference: list[tuple[int, ...]], letters: int) -> int:
    t = len(reference)
    return sum(int((i + 0.5) * letters / t) not in ref for i, ref in enumerate(reference))


def _weights(run: g2p.Run, word: str, phones) -> torch.Tensor:
    """Teacher-forced weights (T + 1, S) of ``run``'s model on ``word`` (as the task spells it)."""
    task = run.task
    src = task.letters.pad([task.letters.encode(word)])
    tgt_in = task.phonemes.pad([task.phonemes.encode(phones)], bos=True)
    run.model.eval()
    with torch.no_grad():
        return run.model.decode(run.model.encode(src), tgt_in).weights[0].float()  # (T + 1, S)


def measure(config: AlignmentConfig, work: Path) -> dict:
    """The aligner, then per model its alignment error on the cut validation words, the diagonal
    guess's, and the example word's argmax path and reference."""
    train = cmudict.spread(cmudict.load("train"), config.aligner_words)
    aligner = Aligner.fit([(e.word, e.pronunciations[0]) for e in train], config.aligner_iterations)
    valid = cmudict.load("valid")
    picked = cmudict.spread(valid, config.valid_words)
    checked = []
    for e in picked:
        cut = aligner.align(e.word, e.pronunciations[0])
        if cut is not None:
            checked.append((e, letter_of_phoneme(cut)))
    example = next((e for e in valid if e.word == config.example), None)
    cut = None if example is None else aligner.align(example.word, example.pronunciations[0])
    if cut is None:
        raise AttentionError(f"example={config.example!r} is not a validation word the aligner can cut")
    example = (example, letter_of_phoneme(cut))
    size = TrainSize(
        config.words, config.valid_words, config.epochs, config.batch_size, config.lr, config.warmup_steps, config.seed
    )
    diagonal = sum(_diagonal(ref, len(e.word)) for e, ref in checked)
    phonemes = sum(len(ref) for _, ref in checked)
    doc: dict = {
        "aligner": {"units": len(aligner.logp), "words": len(train), "iterations": config.aligner_iterations},
        "checked_words": len(checked),
        "skipped_words": len(picked) - len(checked),
        "phonemes": phonemes,
        "diagonal_error": diagonal / phonemes,
        "example": {"word": example[0].word, "phones": list(example[0].pronunciations[0])},
        "kinds": [*config.kinds, REVERSED],
    }
    doc["example"]["reference"] = [min(r) for r in example[1]]
    doc["example"]["steps"] = list(range(len(example[1])))  # the x of the first panel
    doc["index"] = list(range(len(doc["kinds"])))  # the x of the second panel: the models in order
    first = next(iter(config.kinds))
    runs = [(label, kind, cfg, False) for label, (kind, cfg) in config.kinds.items()]
    runs.append((REVERSED, *config.kinds[first], True))
    for label, kind, model_config, reverse in runs:
        run = g2p.train(kind, model_config, size, work / label.replace(" ", "-"), reverse=reverse)
        wrong = late = 0
        for e, ref in checked:
            n = len(e.word)
            word, ref = (e.word[::-1], [tuple(n - 1 - i for i in r) for r in ref]) if reverse else (e.word, ref)
            w = _weights(run, word, e.pronunciations[0])
            wrong += argmax_error(w, ref)[0]
            late += argmax_error(w, ref, shift=1)[0]
        w = _weights(run, example[0].word[::-1] if reverse else example[0].word, example[0].pronunciations[0])
        doc[label] = {
            "model": kind,
            "parameters": sum(p.numel() for p in run.model.parameters()),
            "valid_wer": run.curve("wer")[-1],
            "error": wrong / phonemes,
            "late_error": late / phonemes,
            "example_argmax": w[: len(example[1])].argmax(-1).tolist(),
        }
    return doc


def verdict(doc: dict) -> tuple[str, str]:
    """The verdict from the alignment errors (see the module docstring), and why."""
    kinds, diagonal = doc["kinds"], doc["diagonal_error"]
    said = ", ".join(f"{k} {doc[k]['error']:.1%}" for k in kinds) + f" (the diagonal guess: {diagonal:.1%})"
    good = [k for k in kinds if doc[k]["error"] <= GOOD and doc[k]["error"] < diagonal]
    rule = f"at most {GOOD:.0%} and below the diagonal guess"
    verdict, which = by_share(good, kinds)
    return verdict, f"alignment error of the attention argmax: {said}: models whose error is {rule}: {which}"


def figure(doc: dict) -> list[Panel]:
    """The example word's argmax path per model against the reference; the error per model."""
    ex = doc["example"]
    steps, index = ex["steps"], doc["index"]
    n = len(ex["word"])
    paths = {"EM reference": (steps, ex["reference"])}
    paths |= {k: (steps, doc[k]["example_argmax"]) for k in doc["kinds"]}
    return [
        Panel(
            f"argmax letter per phoneme: '{ex['word']}' ({n} letters)",
            "phoneme",
            "letter position as the model reads it",
            paths,
        ),
        Panel(
            "alignment error",
            numbered(doc["kinds"], per_line=2),
            "share of phonemes",
            {
                "attention argmax": (index, [doc[k]["error"] for k in doc["kinds"]]),
                "one step late": (index, [doc[k]["late_error"] for k in doc["kinds"]]),
                "diagonal guess": (index, [doc["diagonal_error"]] * len(index)),
            },
        ),
    ]  # fmt: skip


def method(config: AlignmentConfig) -> list[str]:
    models = "; ".join(f"{k}: `{m}` {c}" for k, (m, c) in config.kinds.items())
    return [
        (
            f"reference: `attnkit.data.align.Aligner` (EM, units of 1 letter : 0-2 phonemes and 2 letters : 1 phoneme) "
            f"fit on the first pronunciations of {config.aligner_words} training words spread over the split, {config.aligner_iterations} "
            f"rounds; the Viterbi cut of {config.valid_words} validation words spread over the alphabet (`cmudict.spread`)"
        ),
        (
            f"models: {models}; and the first one again on reversed spellings; {config.words or 'all'} training words, "
            f"{config.epochs} epochs, batch {config.batch_size}, lr {config.lr}, warm-up {config.warmup_steps}, "
            f"seed {config.seed} (`attnkit.train.Trainer`)"
        ),
        (
            "alignment error: teacher-forced on each checked word's first pronunciation, the share of phonemes whose "
            "largest weight falls outside its unit's letters (RNNs: the decoder's attention; Transformer: the last "
            "layer's cross-attention averaged over heads)"
        ),
    ]


def numbers(doc: dict) -> list[str]:
    a = doc["aligner"]
    lines = [
        (
            f"aligner: {a['units']} units from {a['words']} words; {doc['checked_words']} validation words checked "
            f"({doc['skipped_words']} no cut fits), {doc['phonemes']} phonemes"
        ),
        "",
        "| model | parameters | validation WER | alignment error | one step late |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in doc["kinds"]:
        d = doc[k]
        lines.append(f"| {k} | {d['parameters']:,} | {d['valid_wer']:.2f} | {d['error']:.1%} | {d['late_error']:.1%} |")
    lines.append(f"| diagonal guess | | | {doc['diagonal_error']:.1%} | |")
    ex = doc["example"]
    lines += ["", f"'{ex['word']}' /{' '.join(ex['phones'])}/: reference letters {ex['reference']}"]
    lines += [f"- {k}: argmax {doc[k]['example_argmax']}" for k in doc["kinds"]]
    return lines
