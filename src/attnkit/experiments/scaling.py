"""Does dividing dot products by √d_k keep the softmax from saturating?

Three measurements:

1. **Random inputs.** q and k with unit-variance entries, d_k from 4 up: the unscaled score qᵀk
   has variance d_k, the scaled one 1. For each, the softmax weights' entropy, the share of rows
   whose largest weight exceeds 0.99 (saturated), and the Frobenius norm of the softmax's Jacobian
   ∂a/∂s = diag(a) - aaᵀ, the factor every gradient through the softmax is multiplied by (0 for a
   one-hot row).
2. **The shipped G2P model** (LSTM + Luong ``general``): the sharpness of its greedy-decoded
   attention on validation words with its score as trained and with the other one at inference
   only (``RNNConfig.scaled``: ÷ √M or not, same weights), with the validation WER of each; the
   document says which of the two it was trained with.
3. **Training.** A Transformer on G2P with ``dot`` against ``scaled_dot`` in every attention
   (``TransformerConfig.score``), same seed and data: validation WER per epoch, and how sharp
   every head of every attention of the two trained models is (:func:`.g2p.attention_sharpness`).

Verdict (:func:`verdict`): the softmax must saturate unscaled at the largest d_k (>= half the rows
one-hot) and not scaled (<= 5% at every d_k), or the claim does not hold here; it holds if, on
top, the scaled Transformer ends at least ``MARGIN`` WER points better than the unscaled one, and
holds under conditions (random inputs, not training) otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from ..backends import attention
from ..core.stats import sharpness
from ..viz.static import Panel
from . import g2p
from .base import CONDITIONS, FAILS, HOLDS, Notes
from .g2p import TrainSize

__all__ = ["CLAIM", "CONFIG", "NAME", "NOTES", "QUICK", "ScalingConfig", "figure", "jacobian_norm", "verdict"]

NAME = "scaling"
CLAIM = "scaling dot products by √d_k keeps the softmax from saturating"
NOTES = (
    Notes("003_19406b024c1182fd.txt", "为什么除以sqrt(dk)? - 防止点击结果值过大, 导致梯度饱和(全为1, 对称性问题)"),
)

SCORES = ("dot", "scaled_dot")  # unscaled, scaled: the two lines of every panel
SATURATED = 0.5  # unscaled: at least this share of one-hot rows at the largest d_k
SPREAD = 0.05  # scaled: at most this share of one-hot rows at any d_k
MARGIN = 1.0  # WER points the scaled Transformer must gain for the claim to hold in training


@dataclass
class ScalingConfig:
    dims: list[int] = field(default_factory=lambda: [4, 16, 64, 256, 1024, 4096])  # d_k of the random inputs
    keys: int = 32  # Tk: keys each random query attends over
    queries: int = 512  # random queries per seed
    seeds: int = 10  # independent draws of q and k; the figures are their mean
    shipped_words: int | None = None  # validation words the shipped model decodes; None: all
    d_model: int = 256  # the Transformer's D (the G2P default)
    heads: int = 4  # H; d_k = D / H = 64 as in the G2P default
    ff_dim: int = 512  # its feed-forward dim
    layers: int = 3  # encoder and decoder layers each
    train_limit: int | None = 40000  # training words; None: the whole training split
    valid_limit: int = 2000  # validation words decoded after each epoch
    epochs: int = 8  # training epochs of each Transformer (no early stopping)
    batch_size: int = 256  # words per step
    lr: float = 2e-3  # peak learning rate (the trainer's default)
    warmup_steps: int = 400  # linear warm-up steps
    seed: int = 0  # random inputs, weights, batch order and dropout


CONFIG = ScalingConfig  # the full run: ScalingConfig()
QUICK = ScalingConfig(
    dims=[4, 16, 64, 256, 1024], queries=256, seeds=3, shipped_words=500,
    d_model=128, heads=2, ff_dim=256, layers=2, train_limit=15000, valid_limit=500, epochs=6, batch_size=64, warmup_steps=100,
)  # fmt: skip


def jacobian_norm(weights: Tensor) -> Tensor:
    """‖diag(a) - aaᵀ‖_F of each row a of ``weights`` (..., Tk) -> (...): the softmax's Jacobian,
    in closed form Σa² - 2Σa³ + (Σa²)², so that no (Tk, Tk) matrix is built."""
    a2 = weights.pow(2).sum(-1)  # (...,)
    return (a2 - 2 * weights.pow(3).sum(-1) + a2.pow(2)).clamp(min=0).sqrt()


def random_inputs(config: ScalingConfig) -> dict:
    """Entropy, saturated share and Jacobian norm of softmax(score(q, k)) per score and d_k: the
    mean over seeds and its spread (standard deviation over seeds)."""
    out: dict = {"dims": config.dims, "keys": config.keys, "uniform_entropy": math.log(config.keys)}
    for score in SCORES:
        per_dim = {"entropy": [], "entropy_sd": [], "saturated": [], "jacobian_norm": [], "jacobian_norm_sd": []}
        for d in config.dims:
            draws = [_draw(score, d, config, seed) for seed in range(config.seed, config.seed + config.seeds)]
            stats = torch.tensor(draws, dtype=torch.float64)  # (seeds, 3): entropy, saturated, jacobian
            mean, sd = stats.mean(0).tolist(), stats.std(0, unbiased=False).tolist()
            per_dim["entropy"].append(mean[0])
            per_dim["entropy_sd"].append(sd[0])
            per_dim["saturated"].append(mean[1])
            per_dim["jacobian_norm"].append(mean[2])
            per_dim["jacobian_norm_sd"].append(sd[2])
        out[score] = per_dim
    return out


def _draw(score: str, d: int, config: ScalingConfig, seed: int) -> tuple[float, float, float]:
    g = torch.Generator().manual_seed(seed * 100_003 + d)
    q = torch.randn(1, config.queries, d, generator=g)  # (1, Tq, d_k)
    k = torch.randn(1, config.keys, d, generator=g)  # (1, Tk, d_k)
    _, weights = attention(q, k, k, score=score, need_weights=True)  # weights (1, Tq, Tk)
    s = sharpness(weights)
    return s["entropy"], s["saturated"], float(jacobian_norm(weights).mean())


def shipped(words: int | None) -> dict:
    """The shipped G2P model's greedy validation WER and attention sharpness with its score
    ``general`` (÷ 1) and ``scaled_general`` (÷ √M), the same weights; ``trained`` names the one it
    was trained with."""
    from ..models import Ensemble, RNNSeq2Seq
    from ..tasks.g2p import G2P

    g2p = G2P.load()
    members = g2p.members  # an ensemble: every member's
    config, memory_dim = members[0].config, members[0].memory_dim
    out = {
        "memory_dim": memory_dim,
        "divisors": [1.0, math.sqrt(memory_dim)],
        "trained": "scaled_general" if config.scaled else "general",
    }
    for name, scaled in (("general", False), ("scaled_general", True)):
        rescored = [RNNSeq2Seq(replace(m.config, scaled=scaled)) for m in members]
        for r, m in zip(rescored, members):
            r.load_state_dict(m.state_dict())  # the same parameters: only the score differs
        model = rescored[0] if len(rescored) == 1 else Ensemble(rescored, g2p.model.combine)
        m = G2P(model, g2p.task_doc, g2p.path).evaluate("valid", beam=1, limit=words)
        sharp = m["attention"]
        out[name] = {
            "words": m["words"],
            "wer": m["wer"],
            "per": m["per"],
            **sharp,
            "saturated_pct": 100 * sharp["saturated"],
        }
    return out


def training(config: ScalingConfig, work: Path) -> dict:
    """Validation WER per epoch of a G2P Transformer with each score, trained in ``work``, and the
    sharpness of every head of the trained model's attention (:func:`.g2p.attention_sharpness`)."""
    model = {"d_model": config.d_model, "heads": config.heads, "ff_dim": config.ff_dim}
    model |= {"encoder_layers": config.layers, "decoder_layers": config.layers}
    size = TrainSize(
        config.train_limit, config.valid_limit, config.epochs, config.batch_size, config.lr, config.warmup_steps,
        config.seed,
    )  # fmt: skip
    out: dict = {"d_k": config.d_model // config.heads}
    for score in SCORES:
        run = g2p.train("transformer", {**model, "score": score}, size, work / score)
        out[score] = {
            "epoch": run.curve("epoch"),
            "wer": run.curve("wer"),
            "train_loss": run.curve("train_loss"),
            "attention": g2p.attention_sharpness(run),
            "train_pairs": len(run.task.pairs),
        }
    return out


def measure(config: ScalingConfig, work: Path) -> dict:
    doc = {"random": random_inputs(config), "shipped": shipped(config.shipped_words)}
    doc["training"] = training(config, work)
    return doc


def figure(doc: dict) -> list[Panel]:
    """Entropy and Jacobian norm against d_k (random inputs), the shipped model's one-hot share and
    WER with its score ÷ 1 and ÷ √M, and the training curves."""
    r, s, t = doc["random"], doc["shipped"], doc["training"]
    uniform = [r["uniform_entropy"]] * len(r["dims"])
    entropy = {k: (r["dims"], r[k]["entropy"]) for k in SCORES} | {"uniform (ln Tk)": (r["dims"], uniform)}
    jacobian = {k: (r["dims"], r[k]["jacobian_norm"]) for k in SCORES}
    both = (s["general"], s["scaled_general"])
    shipped = {
        "one-hot steps (%)": (s["divisors"], [m["saturated_pct"] for m in both]),
        "validation WER (%)": (s["divisors"], [m["wer"] for m in both]),
    }
    curves = {k: (t[k]["epoch"], t[k]["wer"]) for k in SCORES}
    return [
        Panel("softmax entropy, random q, k", "d_k", "entropy (nats)", entropy, logx=True),
        Panel("‖∂softmax/∂scores‖_F, random q, k", "d_k", "Jacobian norm", jacobian, logx=True),
        Panel(
            f"shipped G2P general score ÷ c (M = {s['memory_dim']}; trained: {s.get('trained', 'general')})",
            "c",
            "%",
            shipped,
            logx=True,
        ),
        Panel(f"G2P Transformer (d_k = {t['d_k']})", "epoch", "validation WER (%)", curves),
    ]


def verdict(doc: dict) -> tuple[str, str]:
    """The verdict from the document's numbers (see the module docstring), and why."""
    r, t = doc["random"], doc["training"]
    unscaled, scaled = r["dot"]["saturated"][-1], max(r["scaled_dot"]["saturated"])
    top = r["dims"][-1]
    if unscaled < SATURATED or scaled > SPREAD:
        return FAILS, (
            f"on random unit-variance inputs at d_k = {top}, {unscaled:.0%} of unscaled rows and up to "
            f"{scaled:.0%} of scaled rows are one-hot: the rule needs >= {SATURATED:.0%} and <= {SPREAD:.0%}"
        )
    saturation = (
        f"on random unit-variance inputs the unscaled softmax is one-hot in {unscaled:.0%} of rows at "
        f"d_k = {top} (Jacobian norm {r['dot']['jacobian_norm'][-1]:.2g}, against "
        f"{r['scaled_dot']['jacobian_norm'][-1]:.2g} scaled), the scaled one in at most {scaled:.0%} at any d_k"
    )
    gain = t["dot"]["wer"][-1] - t["scaled_dot"]["wer"][-1]
    trained = f"after {t['dot']['epoch'][-1]} epochs the scaled Transformer's validation WER is {gain:+.1f} points"
    if gain >= MARGIN:
        return HOLDS, f"{saturation}; {trained} better than the unscaled one's (>= {MARGIN} needed)"
    return CONDITIONS, (
        f"{saturation}; but in training it did not pay: {trained} better than the unscaled one's "
        f"(< {MARGIN}): at d_k = {t['d_k']} the unscaled Transformer trained as well or better"
    )


def method(config: ScalingConfig) -> list[str]:
    return [
        (
            f"random inputs: q ({config.queries} queries) and k ({config.keys} keys) with N(0, 1) entries, "
            f"d_k in {config.dims}, {config.seeds} seeds; `attnkit.attention(score='dot' | 'scaled_dot')`; "
            "entropy and share of rows with max weight > 0.99 (`attnkit.core.stats.sharpness`), "
            "‖diag(a) - aaᵀ‖_F (the softmax's Jacobian), mean over rows, then over seeds"
        ),
        (
            f"the shipped G2P model (LSTM + Luong `general`), greedy on {config.shipped_words or 'all'} validation "
            "words, with its score ÷ 1 and ÷ √M (`RNNConfig(scaled=False | True)`, the same weights): the score it was "
            "not trained with is an inference-time change only, so its WER is expected to suffer"
        ),
        (
            f"training: G2P Transformer D = {config.d_model}, H = {config.heads} (d_k = {config.d_model // config.heads}), "
            f"FF {config.ff_dim}, {config.layers} + {config.layers} layers, `score='dot'` vs `'scaled_dot'`, "
            f"{config.train_limit or 'all'} training words, {config.epochs} epochs, batch {config.batch_size}, "
            f"lr {config.lr}, warm-up {config.warmup_steps}, seed {config.seed}; greedy WER on "
            f"{config.valid_limit} validation words after each epoch (`attnkit.train.Trainer`, `G2PTask`); then the "
            "sharpness of every head of every attention of the trained model, teacher-forced on those words one at a time"
        ),
    ]


def numbers(doc: dict) -> list[str]:
    r, s, t = doc["random"], doc["shipped"], doc["training"]
    lines = ["| d_k | entropy dot | entropy scaled_dot | one-hot dot | one-hot scaled_dot | ‖J‖ dot | ‖J‖ scaled_dot |"]
    lines.append("|---:|---:|---:|---:|---:|---:|---:|")
    for i, d in enumerate(r["dims"]):
        a, b = r["dot"], r["scaled_dot"]
        lines.append(
            f"| {d} | {a['entropy'][i]:.3f} | {b['entropy'][i]:.3f} | {a['saturated'][i]:.1%} | "
            f"{b['saturated'][i]:.1%} | {a['jacobian_norm'][i]:.3g} | {b['jacobian_norm'][i]:.3g} |"
        )
    lines += ["", f"uniform weights over {r['keys']} keys: entropy {r['uniform_entropy']:.3f}", ""]
    lines += ["| shipped G2P, greedy | words | WER | PER | one-hot steps | mean max weight | entropy |"]
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("general", "scaled_general"):
        m = s[name]
        trained = " (trained with it)" if s.get("trained", "general") == name else ""
        lines.append(
            f"| `{name}`{trained} | {m['words']} | {m['wer']:.2f} | {m['per']:.2f} | {m['saturated']:.1%} | "
            f"{m['max']:.3f} | {m['entropy']:.3f} |"
        )
    lines += [
        "",
        "| Transformer | "
        + " | ".join(f"epoch {e}" for e in t["dot"]["epoch"])
        + " | trained: one-hot rows | entropy |",
    ]
    lines.append("|---|" + "---:|" * (len(t["dot"]["epoch"]) + 2))
    for score in SCORES:
        wer = " | ".join(f"{w:.2f}" for w in t[score]["wer"])
        a = t[score]["attention"]
        lines.append(f"| `{score}` WER | {wer} | {a['saturated']:.1%} | {a['entropy']:.3f} |")
    return lines
