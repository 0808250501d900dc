"""One G2P training step, timed: the Transformer against LSTM + Luong general at equal parameters.

A training step as ``attnkit train g2p`` takes it (``Trainer`` + ``G2PTask.loss``): forward,
label-smoothed cross-entropy (0.1, PAD ignored), backward, gradient clipping at norm 1, AdamW.
Random batches at the G2P sizes: B = 256, S source letters (29 letters + 3 specials), T target
phonemes (84 + 3 specials; ``tgt_in`` and the gold are T long each), no padding.

Models (``attnkit.models``, vocabularies as the G2P task's): ``RNNConfig()`` (luong-general, the
default), ``TransformerConfig()`` (the default, FF 1024) and ``TransformerConfig(ff_dim=512)``, the
Transformer of the README's results table, whose parameter count matches the RNN's (+0.35%).

For each model and length it reports the cold first step of a freshly built model, how many steps
it took to reach steady state (the first step after which no step is more than 10% slower than
the steady-state median: ``attnkit.bench.measure.find_steady(..., settled=True)``), and the median
of the steady-state steps. Then ``torch.profiler`` lists the
Transformer step's top operators (self CPU time) and the share of time in each part of the step.

    flock /tmp/attnkit-cpu.lock python benchmarks/g2p/step_speed.py --out benchmarks/g2p/step_speed.md
"""

from __future__ import annotations

import argparse
import subprocess
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.bench.measure import find_steady, machine
from attnkit.data.vocab import PAD
from attnkit.models import RNNConfig, RNNSeq2Seq, TransformerConfig, TransformerSeq2Seq

SRC_VOCAB, TGT_VOCAB, BATCH = 32, 87, 256  # the G2P task's vocabularies; its batch size
MODELS = {
    "rnn luong-general": lambda: RNNSeq2Seq(RNNConfig(SRC_VOCAB, TGT_VOCAB)),
    "transformer (ff 512)": lambda: TransformerSeq2Seq(TransformerConfig(SRC_VOCAB, TGT_VOCAB, ff_dim=512)),
    "transformer (default)": lambda: TransformerSeq2Seq(TransformerConfig(SRC_VOCAB, TGT_VOCAB)),
    # diagnostics: the share of dropout (CPU dropout draws one random number per element, serially)
    "rnn luong-general, dropout 0": lambda: RNNSeq2Seq(RNNConfig(SRC_VOCAB, TGT_VOCAB, dropout=0.0)),
    "transformer (ff 512), dropout 0": lambda: TransformerSeq2Seq(
        TransformerConfig(SRC_VOCAB, TGT_VOCAB, ff_dim=512, dropout=0.0)
    ),
}


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def batch(s: int, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """src (B, S) and tgt (B, T + 1): BOS, T - 1 phonemes, EOS."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, SRC_VOCAB, (BATCH, s), generator=g)
    tgt = torch.randint(3, TGT_VOCAB, (BATCH, t + 1), generator=g)
    tgt[:, 0], tgt[:, -1] = 1, 2
    return src, tgt


class Stepper:
    """A model, its AdamW and one training step as the Trainer takes it."""

    def __init__(self, model: nn.Module):
        self.model = model.train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def __call__(self, src: torch.Tensor, tgt: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(src, tgt[:, :-1])
        gold = tgt[:, 1:]  # (B, T)
        logits = out.logits.reshape(-1, out.logits.shape[-1])  # (B·T, V)
        loss = F.cross_entropy(logits, gold.reshape(-1), ignore_index=PAD, label_smoothing=0.1)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return float(loss.detach())


def timed_steps(make, s: int, t: int, steps: int) -> dict:
    """Cold first step of a fresh model, steps to steady state, steady-state median (seconds)."""
    torch.manual_seed(0)
    stepper = Stepper(make())
    src, tgt = batch(s, t)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        stepper(src, tgt)
        times.append(time.perf_counter() - start)
    # the second half is steady state; the first step after which no step is more than 10% slower
    # than its median (len(times): never)
    median, settled = find_steady(times, within=1.1, settled=True)
    return {"cold": times[0], "steady_after": settled, "median": median, "times": times}


@contextmanager
def labelled(model: nn.Module, kinds: dict[type, str]):
    """Label every call of the modules of ``kinds`` for the profiler (forward only)."""
    handles, open_ = [], {}

    def pre(module, args):
        ctx = torch.profiler.record_function(kinds[type(module)])
        ctx.__enter__()
        open_.setdefault(id(module), []).append(ctx)

    def post(module, args, out):
        open_[id(module)].pop().__exit__(None, None, None)

    for m in model.modules():
        if type(m) in kinds:
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def profile(make, s: int, t: int, top: int) -> tuple[list, list]:
    """The top operators by self CPU time of a warmed-up step, and the step's time by part."""
    from attnkit.models.transformer import FeedForward
    from attnkit.modules import MultiHeadAttention

    torch.manual_seed(0)
    stepper = Stepper(make())
    src, tgt = batch(s, t)
    for _ in range(3):
        stepper(src, tgt)
    kinds = {MultiHeadAttention: "part: attention", FeedForward: "part: feed-forward", nn.LayerNorm: "part: layer norm"}
    n = 3
    with (
        labelled(stepper.model, kinds),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
    ):
        for _ in range(n):
            stepper.optimizer.zero_grad(set_to_none=True)
            with torch.profiler.record_function("part: forward"):
                out = stepper.model(src, tgt[:, :-1])
            with torch.profiler.record_function("part: output loss"):
                logits = out.logits.reshape(-1, out.logits.shape[-1])
                loss = F.cross_entropy(logits, tgt[:, 1:].reshape(-1), ignore_index=PAD, label_smoothing=0.1)
            with torch.profiler.record_function("part: backward"):
                loss.backward()
            with torch.profiler.record_function("part: clip + AdamW"):
                nn.utils.clip_grad_norm_(stepper.model.parameters(), 1.0)
                stepper.optimizer.step()
    events = prof.key_averages()
    ops = sorted((e for e in events if not e.key.startswith("part:")), key=lambda e: -e.self_cpu_time_total)
    ops = [(e.key, e.count // n, e.self_cpu_time_total / n / 1e3) for e in ops[:top]]
    parts = sorted(
        ((e.key[6:], e.count // n, e.cpu_time_total / n / 1e3) for e in events if e.key.startswith("part:")),
        key=lambda p: -p[2],
    )
    return ops, parts


def load() -> str:
    return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="steps per model at the G2P length")
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 20, 40, 80], help="S = T sweep")
    parser.add_argument("--sweep-steps", type=int, default=6, help="steps per model and length of the sweep")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--label", default="", help="a title for the run (e.g. 'before', 'after')")
    parser.add_argument("--out", help="also write the report (markdown) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    say(f"### G2P training step {args.label}".rstrip())
    say()
    m = machine(model_name=False)
    say(f"torch {m['torch']}, {m['cpu']}, {m['cores']} CPUs, {m['threads']} threads; B = {BATCH}; float32")
    say(f"load before: `{load()}`")
    say()
    counts = {name: parameters(make()) for name, make in MODELS.items() if "dropout 0" not in name}
    say("| model | parameters |")
    say("|---|---:|")
    for name, c in counts.items():
        say(f"| {name} | {c:,} |")
    say()
    say(f"**S = T = 10** (the G2P sizes), {args.steps} steps per model, steady state = the median of the second half")
    say()
    say("| model | cold first step (ms) | steps to steady state | steady-state median (ms) | vs rnn |")
    say("|---|---:|---:|---:|---:|")
    results = {name: timed_steps(make, 10, 10, args.steps) for name, make in MODELS.items()}
    base = results["rnn luong-general"]["median"]
    for name, r in results.items():
        say(
            f"| {name} | {r['cold'] * 1e3:.0f} | {r['steady_after']} | {r['median'] * 1e3:.0f} | "
            f"{r['median'] / base:.2f}x |"
        )
    say()
    say(f"**Length sweep** S = T, {args.sweep_steps} steps each, steady-state median (ms); ratio = transformer / rnn")
    say()
    sweep = {k: MODELS[k] for k in ("rnn luong-general", "transformer (ff 512)")}
    say("| S = T | rnn luong-general | transformer (ff 512) | ratio |")
    say("|---:|---:|---:|---:|")
    for n in args.lengths:
        rs = {name: timed_steps(make, n, n, args.sweep_steps)["median"] for name, make in sweep.items()}
        a, b = rs["rnn luong-general"], rs["transformer (ff 512)"]
        say(f"| {n} | {a * 1e3:.0f} | {b * 1e3:.0f} | {b / a:.2f}x |")
    say()
    ops, parts = profile(MODELS["transformer (ff 512)"], 10, 10, args.top)
    say("**Where the Transformer (ff 512) step's time goes** (torch.profiler, S = T = 10, per step, mean of 3)")
    say()
    say("| part | calls | CPU time (ms, inclusive) |")
    say("|---|---:|---:|")
    for name, calls, ms in parts:
        say(f"| {name} | {calls} | {ms:.1f} |")
    say()
    say("| operator | calls | self CPU (ms) |")
    say("|---|---:|---:|")
    for name, calls, ms in ops:
        say(f"| `{name}` | {calls} | {ms:.1f} |")
    say()
    say(f"load after: `{load()}`")
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
