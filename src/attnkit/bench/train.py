"""Training and decoding speed of every G2P model kind, side by side with plain PyTorch and OpenNMT-py.

For each kind (the RNN with each attention, and the Transformer) at the G2P sizes (the default
configs of ``attnkit train g2p``, batches of 256 CMUdict words built as the trainer builds them),
each contender trains on the same batches and decodes the same validation words:

- ``attnkit``: the model ``attnkit train g2p`` trains, with the task's loss;
- ``plain``: the same model written in plain PyTorch (:mod:`attnkit.bench.seq2seq_peers`);
- ``opennmt``: OpenNMT-py's model of the same architecture, where it has one (train step only).

A train step is what the trainer does: forward, label-smoothed cross-entropy, backward, gradient
clipping, AdamW step, and ``loss.item()``. Each contender takes a cold first step, ``warmup``
more, then ``steps`` timed ones; the steady state is the timed steps (tokens/s = their target
tokens / their time), and the time to reach it is the time of the steps before the first one
whose time per padded position (the batches differ in length) is within 1.25x of the steady
median (:func:`steady_state`, :func:`attnkit.bench.measure.find_steady`). Decoding
(greedy and beam) runs twice over the validation words in batches sorted by length: the first
pass is the cold one, the second the steady figure. Every figure is taken quiet and under
:func:`attnkit.bench.contention.competing` (another CPU-bound process on the same cores). Peak
memory is measured quiet, in a fresh process per contender and phase, as
:mod:`attnkit.bench.measure` measures it. Ratios are the other contender's time / attnkit's over
the same work: > 1 means attnkit is faster.

Its command line is ``python -m attnkit.cli.train_bench run|merge|peak`` (:mod:`attnkit.cli.train_bench`); its
report as tables and files, :mod:`attnkit.bench.train_report`.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from ..models import RNNConfig, TransformerConfig
from ..tasks.g2p import MODELS, G2PTask, decode_words
from ..train import TrainConfig
from . import seq2seq_peers as peers
from .contention import competing
from .measure import find_steady, fmt_mib, machine, peak_bytes_here
from .train_report import markdown as markdown  # re-exported: the report of run() and merge()
from .train_report import write as write

__all__ = ["CONTENDERS", "KINDS", "QUICK", "Row", "Settings", "markdown", "ratios", "run"]

KINDS = (
    "none", "bahdanau", "luong-dot", "luong-general", "luong-general-nofeed", "luong-concat", "local-m", "local-p",
    "hard", "transformer",
)  # fmt: skip; NAME-nofeed: Luong without input feeding (teacher forcing in one RNN call)
CONTENDERS = ("attnkit", "plain", "opennmt")
STEADY = 1.25  # a step is steady when its time per padded position is within this factor of the steady median


@dataclass
class Settings:
    batch_size: int = 256  # examples per training step and per decoding batch (the G2P default)
    warmup: int = 3  # untimed steps after the cold first one
    steps: int = 10  # timed steps: the steady-state figures
    decode_words: int = 1000  # validation words decoded, greedy and beam
    decode_steps: int = 10  # decoder steps per word, exactly: untrained models' output lengths vary
    beam: int = 5
    rnn: dict = field(default_factory=dict)  # overrides of RNNConfig's defaults (tests: tiny models)
    transformer: dict = field(default_factory=dict)  # overrides of TransformerConfig's defaults
    limit: int | None = None  # read only the first N training words (tests)
    seed: int = 0  # weights, batch order and dropout
    contended_no_decode: list = field(default_factory=list)  # contenders whose decoding is not timed contended


QUICK = Settings(warmup=1, steps=3, decode_words=256)  # attnkit bench --quick --only train


@dataclass
class Row:
    kind: str
    contender: str
    mode: str  # "quiet" or "contended"
    params: int | None = None
    train: dict | None = None  # see measure_train
    greedy: dict | None = None  # see measure_decode
    beam: dict | None = None
    peak_train: int | None = None  # bytes one train step adds at its peak (quiet rows)
    peak_beam: int | None = None  # bytes one beam-search batch adds at its peak
    load: str = ""  # the load averages when the row started
    note: str = ""


class Data:
    """The G2P batches every contender trains on and the validation words each decodes."""

    def __init__(self, settings: Settings):
        s = settings
        self.task = G2PTask("rnn", limit=s.limit, valid_limit=s.decode_words)
        order = self.task.batches(0, torch.Generator().manual_seed(s.seed), s.batch_size)
        n = 1 + s.warmup + s.steps
        self.batches = [order[i % len(order)] for i in range(n)]  # (src (B, S), tgt (B, T + 2)) each
        self.words = [e.word for e in self.task.valid]
        self.letters, self.phonemes = self.task.letters, self.task.phonemes
        self.train_config = TrainConfig(batch_size=s.batch_size)


class Contender:
    """A model, its optimizer, and its loss on a batch: (loss, target tokens)."""

    def __init__(self, name: str, kind: str, data: Data, settings: Settings):
        torch.manual_seed(settings.seed)
        self.name, self.kind = name, kind
        config = model_config(kind, data, settings)
        ls = data.train_config.label_smoothing
        if name == "attnkit":
            self.model = MODELS["rnn" if kind != "transformer" else "transformer"][1](config)
            self.loss = lambda batch: data.task.loss(self.model, batch, data.train_config)
        elif name == "plain":
            self.model = peers.plain_model(kind, config)
            self.loss = lambda batch: _loss(self.model(batch[0], batch[1][:, :-1]).logits, batch[1], ls)
        elif name == "opennmt":
            self.model = peers.opennmt_model(kind, config)
            self.loss = lambda batch: _loss(self.model(batch[0], batch[1]).logits, batch[1], ls)
        else:
            raise ValueError(f"contender {name!r} is unknown; expected one of {CONTENDERS}")
        self.decodes = name != "opennmt"
        self.params = sum(p.numel() for p in self.model.parameters())
        cfg = data.train_config
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.clip = cfg.clip_norm

    def step(self, batch) -> tuple[float, int]:
        """One training step, as the trainer takes it -> (loss, target tokens)."""
        loss, count = self.loss(batch)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{self.name} {self.kind}: the loss became {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        return loss.item(), count


def _loss(logits: Tensor, tgt: Tensor, label_smoothing: float) -> tuple[Tensor, int]:
    gold = tgt[:, 1:]  # (B, T)
    return peers.cross_entropy(logits, gold, label_smoothing), int(gold.ne(0).sum())


def model_config(kind: str, data: Data, settings: Settings) -> RNNConfig | TransformerConfig:
    sizes = {"src_vocab": len(data.letters), "tgt_vocab": len(data.phonemes)}
    if kind == "transformer":
        return TransformerConfig(**sizes, **settings.transformer)
    nofeed = kind.endswith("-nofeed")
    return RNNConfig(**sizes, attention=kind.removesuffix("-nofeed"), **{"input_feed": not nofeed, **settings.rnn})


def available(name: str, kind: str) -> str | None:
    """None if contender ``name`` has a model of ``kind`` here, else why not."""
    if name == "plain" and kind not in peers.PLAIN_RNN + ("transformer",):
        return "no plain PyTorch model written for this kind"
    if name == "opennmt":
        if peers.OPENNMT.get(kind) is None:
            return "OpenNMT-py has no model of this kind"
        try:
            with warnings.catch_warnings():  # its torch.cuda.amp decorators are deprecated in new torch
                warnings.simplefilter("ignore", FutureWarning)
                import onmt.model_builder  # noqa: F401
        except Exception as err:  # noqa: BLE001 - any failure to import the optional peer is reported, not fatal
            return f"OpenNMT-py not importable ({type(err).__name__}: {str(err)[:80]}); see the README's benchmarks"
    return None


def measure_train(c: Contender, data: Data, settings: Settings) -> dict:
    """Cold step, time to steady state and steady-state speed of ``c``'s training."""
    c.model.train()
    times, tokens, losses = [], [], []
    for batch in data.batches:
        start = time.perf_counter()
        loss, count = c.step(batch)
        times.append(time.perf_counter() - start)
        tokens.append(count)
        losses.append(loss)
    padded = [src.numel() + tgt[:, 1:].numel() for src, tgt in data.batches]  # B x (S + T) of each step
    figures = steady_state(times, padded, settings.steps)
    figures["tokens_per_s"] = sum(tokens[-settings.steps :]) / figures["timed_s"]
    return {**figures, "step_s": times, "tokens": tokens, "padded": padded, "loss": losses}


def steady_state(times: Sequence[float], padded: Sequence[int], steps: int) -> dict:
    """The figures of a run of training steps (seconds ``times`` of steps over ``padded`` source +
    target positions): the last ``steps`` are the steady state; steady speed is their median time
    per padded position; the first steady step is the first whose time per position is within
    ``STEADY`` of it, and the time to steady state is the time of the steps before it; ``cold_x``
    is how many times slower per position than the steady state the cold first step ran."""
    timed = slice(len(times) - steps, None)
    per_position = [t / n for t, n in zip(times, padded)]
    steady, first = find_steady(per_position, last=steps, within=STEADY)
    return {
        "cold_s": times[0],
        "cold_x": per_position[0] / steady,
        "steady_step_s": statistics.median(times[timed]),
        "timed_s": sum(times[timed]),
        "steps_to_steady": first,
        "to_steady_s": sum(times[:first]),
    }


def measure_decode(c: Contender, data: Data, settings: Settings, beam: int) -> dict:
    """Two passes of decoding over the validation words: the cold one and the steady one."""
    c.model.eval()
    passes = []
    for _ in range(2):
        marks = []
        decode_words(c.model, data.words, data.letters, data.phonemes, beam=beam, batch_size=settings.batch_size,
                     steps=settings.decode_steps,
                     progress=lambda done, total, marks=marks: marks.append(time.perf_counter()))  # fmt: skip
        passes.append(marks)
    n = len(data.words)
    (cold, warm) = passes
    return {
        "words": n,
        "cold_pass_s": cold[-1] - cold[0],
        "cold_first_batch_s": cold[1] - cold[0],
        "pass_s": warm[-1] - warm[0],
        "first_batch_s": warm[1] - warm[0],
        "cold_words_per_s": n / (cold[-1] - cold[0]),
        "words_per_s": n / (warm[-1] - warm[0]),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def measure(name: str, kind: str, data: Data, settings: Settings, mode: str) -> Row:
    row = Row(kind, name, mode, load=loadavg())
    why = available(name, kind)
    if why:
        row.note = why
        return row
    c = Contender(name, kind, data, settings)
    row.params = c.params
    row.train = measure_train(c, data, settings)
    if name in settings.contended_no_decode and mode == "contended":
        row.note = "decoding not timed under contention (too slow for the run's time limit)"
    elif c.decodes:
        row.greedy = measure_decode(c, data, settings, 1)
        row.beam = measure_decode(c, data, settings, settings.beam)
    if name == "opennmt":
        row.note = peers.OPENNMT[kind][1]
    return row


def peak(kind: str, name: str, phase: str, settings: Settings, timeout_s: float = 600) -> int | None:
    """Peak memory one train step (``phase="train"``) or one beam-search batch (``"beam"``) adds,
    in a fresh process (None where it could not be measured)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    cmd = [sys.executable, "-m", "attnkit.cli.train_bench", "peak", kind, name, phase, json.dumps(asdict(settings))]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    return int(json.loads(done.stdout.strip().splitlines()[-1]))


def peak_here(kind: str, name: str, phase: str, settings: Settings) -> int:
    """:func:`peak`'s measurement, in this process (``python -m attnkit.bench.train peak``)."""
    data = Data(settings)
    c = Contender(name, kind, data, settings)
    if phase == "train":
        c.model.train()
        return peak_bytes_here(lambda _: c.step(data.batches[0]), True)
    c.model.eval()
    words = data.words[: settings.batch_size]
    return peak_bytes_here(
        lambda _: decode_words(c.model, words, data.letters, data.phonemes, beam=settings.beam,
                               steps=settings.decode_steps), False  # fmt: skip
    )


def profile(kind: str, name: str, data: Data, settings: Settings, top: int = 8) -> list[dict]:
    """Where a steady training step's time goes: the ``top`` operators by self CPU time, per step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    c = Contender(name, kind, data, settings)
    c.model.train()
    for batch in data.batches[:2]:
        c.step(batch)
    steps = data.batches[2:4]
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in steps:
            c.step(batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {
            "op": e.key,
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / len(steps),
            "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / len(steps),
        }
        for e in events[:top]
    ]


def ratios(rows: Sequence[Row]) -> list[dict]:
    """Per kind, mode and other contender: its time / attnkit's for the same training steps and the
    same decoding pass (> 1: attnkit faster)."""
    out = []
    ours = {(r.kind, r.mode): r for r in rows if r.contender == "attnkit" and r.train}
    for r in rows:
        a = ours.get((r.kind, r.mode))
        if r.contender == "attnkit" or a is None or r.train is None:
            continue
        entry = {"kind": r.kind, "mode": r.mode, "versus": r.contender,
                 "train": r.train["timed_s"] / a.train["timed_s"]}  # fmt: skip
        for what in ("greedy", "beam"):
            theirs, mine = getattr(r, what), getattr(a, what)
            entry[what] = theirs["pass_s"] / mine["pass_s"] if theirs and mine else None
        out.append(entry)
    return out


def run(
    kinds: Sequence[str] | None = None,
    contenders: Sequence[str] | None = None,
    settings: Settings | None = None,
    *,
    modes: Sequence[str] = ("quiet", "contended"),
    memory: bool = True,
    profile_contenders: Sequence[str] = (),
    data: Data | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure ``kinds`` x ``contenders`` (default: all) in each of ``modes``; the report (JSON-ready): ``machine``,
    ``settings``, ``rows`` (:class:`Row` as dicts), ``ratios`` and ``profiles`` (top ops of a
    steady train step for ``profile_contenders``, quiet). ``data``: the batches and words, if
    already read with these settings."""
    kinds, contenders = kinds or KINDS, contenders or CONTENDERS
    settings = settings or Settings()
    data = data or Data(settings)
    rows, profiles = [], {}
    for kind in kinds:
        for mode in modes:
            with competing() if mode == "contended" else contextlib.nullcontext():
                for name in contenders:
                    row = measure(name, kind, data, settings, mode)
                    rows.append(row)
                    log(_summary(row))
        if memory:
            for row in rows:
                if row.kind == kind and row.mode == modes[0] and row.train is not None:
                    row.peak_train = peak(kind, row.contender, "train", settings)
                    if row.beam is not None:
                        row.peak_beam = peak(kind, row.contender, "beam", settings)
                    peaks = f"peak train {fmt_mib(row.peak_train)} MB, beam {fmt_mib(row.peak_beam)} MB"
                    log(f"  {kind} {row.contender}: {peaks}")
        for name in profile_contenders:
            if available(name, kind) is None:
                profiles[f"{kind} {name}"] = profile(kind, name, data, settings)
    return {
        "machine": machine(),
        "settings": asdict(settings),
        "rows": [asdict(r) for r in rows],
        "ratios": ratios(rows),
        "profiles": profiles,
    }


def merge(reports: Sequence[dict]) -> dict:
    """One report from several runs' (each of some kinds), ratios recomputed; rows of runs from
    before ``padded`` was recorded get their steady-state figures recomputed from their step times."""
    rows = [r for rep in reports for r in rep["rows"]]
    settings, padded = settings_from(reports[0]["settings"]), None
    for r in rows:
        t = r["train"]
        if t is not None and "padded" not in t:
            padded = padded or [src.numel() + tgt[:, 1:].numel() for src, tgt in Data(settings).batches]
            t["padded"] = padded
            t.update(steady_state(t["step_s"], padded, settings.steps))
    profiles = {k: v for rep in reports for k, v in rep["profiles"].items()}
    return {
        "machine": reports[0]["machine"],
        "settings": reports[0]["settings"],
        "rows": rows,
        "ratios": ratios([Row(**r) for r in rows]),
        "profiles": profiles,
    }


def _summary(r: Row) -> str:
    if r.train is None:
        return f"{r.kind} {r.mode} {r.contender}: {r.note}"
    t = r.train
    text = (f"{r.kind} {r.mode} {r.contender}: train {t['tokens_per_s']:.0f} tok/s, step {t['steady_step_s'] * 1e3:.0f} "
            f"ms, cold {t['cold_s'] * 1e3:.0f} ms, steady after {t['to_steady_s']:.2f} s")  # fmt: skip
    if r.greedy:
        text += f"; greedy {r.greedy['words_per_s']:.0f} w/s, beam {r.beam['words_per_s']:.0f} w/s"
    return text + f" [load {r.load}]"


def settings_from(doc: dict) -> Settings:
    """The :class:`Settings` of a report's ``settings`` (keys it does not know, from older reports, are dropped)."""
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in doc.items() if k in known})
