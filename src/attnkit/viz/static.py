"""Static pictures of attention with matplotlib (the ``viz`` extra): PNG or SVG by file suffix.

- :func:`heatmap`: one weight matrix (Tq, Tk), tokens on both axes.
- :func:`grid`: every head of every layer (L, H, Tq, Tk), one small heatmap each.
- :func:`alignment`: a decoded output against its input (a heatmap with seq2seq labels).
- :func:`curves`: panels of lines, one line per series (an experiment's measurements).

Long inputs stay readable: at most ``max_tokens`` rows and columns are drawn (the rest is cut,
and the title says so), tick labels are thinned to about 60 per axis, and the figure size is capped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from torch import Tensor

from ..errors import AttentionError, shape_str

__all__ = ["Panel", "alignment", "curves", "grid", "heatmap"]

MAX_LABELS = 60  # tick labels per axis, at most
MAX_INCHES = 24.0


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AttentionError("pictures need matplotlib: pip install 'attnkit[viz]'") from None
    return plt


def _check_path(path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise AttentionError(f"plot file {str(path)!r} must end in .png or .svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _cut(weights: Tensor, queries: list[str], keys: list[str], max_tokens: int):
    """The top-left max_tokens x max_tokens block and a note saying what was cut ('' if nothing)."""
    tq, tk = len(queries), len(keys)
    note = ""
    if tq > max_tokens or tk > max_tokens:
        note = f" (first {min(tq, max_tokens)} of {tq} x first {min(tk, max_tokens)} of {tk} tokens shown)"
    return weights[..., :max_tokens, :max_tokens], queries[:max_tokens], keys[:max_tokens], note


def _ticks(ax, queries: list[str], keys: list[str], fontsize: float) -> None:
    for labels, set_ticks, rotation in ((keys, ax.set_xticks, 90), (queries, ax.set_yticks, 0)):
        step = max(1, math.ceil(len(labels) / MAX_LABELS))  # thin: every step-th label
        idx = list(range(0, len(labels), step))
        set_ticks(idx, [labels[i] for i in idx], fontsize=fontsize, rotation=rotation)


def _check(weights: Tensor, dims: int, queries: list[str], keys: list[str], what: str) -> None:
    if weights.dim() != dims or weights.shape[-2:] != (len(queries), len(keys)):
        raise AttentionError(
            f"weights has shape {shape_str(weights.shape)} but expected {what} with "
            f"(Tq, Tk) = (len(queries), len(keys)) = ({len(queries)}, {len(keys)})"
        )


def heatmap(
    weights: Tensor,
    queries: list[str],
    keys: list[str],
    path: str | Path,
    *,
    title: str | None = None,
    xlabel: str = "key",
    ylabel: str = "query",
    max_tokens: int = 200,
) -> Path:
    """Save the heatmap of ``weights`` (Tq, Tk): row i is what query token i attends to."""
    _check(weights, 2, queries, keys, "(Tq, Tk)")
    path = _check_path(path)
    weights, queries, keys, note = _cut(weights, queries, keys, max_tokens)
    plt = _pyplot()
    cell = 0.32 if max(len(queries), len(keys)) <= 40 else 0.12
    size = (min(MAX_INCHES, 2.0 + cell * len(keys)), min(MAX_INCHES, 1.5 + cell * len(queries)))
    fig, ax = plt.subplots(figsize=size)
    im = ax.imshow(weights.detach().float().cpu().numpy(), cmap="viridis", vmin=0.0, aspect="auto")
    _ticks(ax, queries, keys, fontsize=9 if len(keys) <= 40 else 6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title or note:
        ax.set_title((title or "") + note, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def alignment(
    weights: Tensor,
    source: list[str],
    target: list[str],
    path: str | Path,
    *,
    title: str | None = None,
    xlabel: str = "input",
    ylabel: str = "output",
) -> Path:
    """Save the seq2seq alignment ``weights`` (len(target), len(source)): one row per output
    token, one column per input token."""
    if tuple(weights.shape) != (len(target), len(source)):
        raise AttentionError(
            f"weights has shape {shape_str(weights.shape)} but expected (len(target), len(source)) = "
            f"({len(target)}, {len(source)})"
        )
    return heatmap(weights, target, source, path, title=title, xlabel=xlabel, ylabel=ylabel)


def grid(
    weights: Tensor,
    tokens: list[str],
    path: str | Path,
    *,
    keys: list[str] | None = None,
    layers: list[str] | None = None,
    title: str | None = None,
    max_tokens: int = 64,
) -> Path:
    """Save every head of every layer: ``weights`` (L, H, Tq, Tk), one heatmap per (layer, head),
    layers as rows and heads as columns; tokens label the first column and the last row."""
    keys = tokens if keys is None else keys
    _check(weights, 4, tokens, keys, "(L, H, Tq, Tk)")
    n_layers, n_heads = weights.shape[:2]
    layers = layers or [f"layer {i}" for i in range(n_layers)]
    if len(layers) != n_layers:
        raise AttentionError(f"layers has {len(layers)} names but weights has L = {n_layers}")
    path = _check_path(path)
    weights, tokens, keys, note = _cut(weights, tokens, keys, max_tokens)
    plt = _pyplot()
    side = min(2.2, MAX_INCHES / max(n_heads, n_layers))
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(side * n_heads + 1, side * n_layers + 1), squeeze=False)
    labelled = len(tokens) <= 24  # token labels only where they can be read
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            ax.imshow(weights[layer, head].detach().float().cpu().numpy(), cmap="viridis", vmin=0.0, aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=8)
            if head == 0:
                ax.set_ylabel(layers[layer], fontsize=8)
                if labelled:
                    ax.set_yticks(range(len(tokens)), tokens, fontsize=4)
            if layer == n_layers - 1 and labelled:
                ax.set_xticks(range(len(keys)), keys, fontsize=4, rotation=90)
    fig.suptitle((title or "attention: layers x heads") + note, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def document(
    word_weights: Tensor,
    sentence_weights: Tensor,
    sentences: list[list[str]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Save a hierarchical model's attention: one row per sentence, its words written in cells
    shaded by their word weight (``word_weights`` (S, T), each row over that sentence's words), and
    a first column shaded by the sentence's weight (``sentence_weights`` (S,)). PNG or SVG."""
    s = len(sentences)
    t = max(map(len, sentences), default=0)
    if word_weights.shape[0] != s or word_weights.shape[-1] < t or tuple(sentence_weights.shape) != (s,):
        raise AttentionError(
            f"word_weights has shape {shape_str(word_weights.shape)} and sentence_weights "
            f"{shape_str(sentence_weights.shape)} but expected ({s}, >= {t}) and ({s},) for {s} sentences"
        )
    path = _check_path(path)
    plt = _pyplot()
    import numpy as np  # comes with matplotlib

    grid = np.full((s, t), np.nan)
    for i, words in enumerate(sentences):
        grid[i, : len(words)] = word_weights[i, : len(words)].detach().float().cpu().numpy()
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(2.0 + 1.0 * t, 1.2 + 0.5 * s), gridspec_kw={"width_ratios": [1, max(t, 1)]}
    )
    left.imshow(sentence_weights.detach().float().cpu().numpy()[:, None], cmap="Oranges", vmin=0, vmax=1)
    for i, w in enumerate(sentence_weights.tolist()):
        left.text(0, i, f"{w:.2f}", ha="center", va="center", color="white" if w > 0.6 else "black")
    left.set_xticks([0], ["sentence"])
    left.set_yticks(range(s), [f"{i + 1}" for i in range(s)])
    im = right.imshow(grid, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i, words in enumerate(sentences):
        for j, word in enumerate(words):
            right.text(j, i, word, ha="center", va="center", fontsize=8, color="white" if grid[i, j] > 0.6 else "black")
    right.set_xticks([])
    right.set_yticks([])
    right.set_xlabel("word weights within each sentence")
    fig.colorbar(im, ax=right, fraction=0.05)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass
class Panel:
    """One plot of :func:`curves`: ``series`` maps a line's label to its points ``(xs, ys)``."""

    title: str
    xlabel: str
    ylabel: str
    series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    logx: bool = False  # x on a log scale (sizes that double)
    logy: bool = False  # y on a log scale (quantities spanning decades)


def _scales(ax, panel: Panel) -> None:
    """Log axes labelled with plain numbers (4, 16, 64, not 4 x 10^0); a log x axis ticked at the
    measured x values when they are few and far apart (at its decades otherwise); a linear x axis
    whose values are all whole numbers (epochs, the index of a named kind) at whole numbers only."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis, log, scale in ((ax.xaxis, panel.logx, ax.set_xscale), (ax.yaxis, panel.logy, ax.set_yscale)):
        scale("log" if log else "linear")
        if log:
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(NullFormatter())
    xs = sorted({x for xs, _ in panel.series.values() for x in xs})
    if panel.logx:
        if len(xs) <= 8 and all(b >= 1.5 * a for a, b in pairwise(xs)):  # else the labels would overlap
            ax.set_xticks(xs, [f"{x:.4g}" for x in xs])
    elif xs and all(float(x).is_integer() for x in xs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def curves(panels: list[Panel], path: str | Path, *, title: str | None = None) -> Path:
    """Save ``panels`` side by side, each a line with markers per series. PNG or SVG."""
    if not panels:
        raise AttentionError("curves needs at least one Panel")
    for p in panels:
        for label, (xs, ys) in p.series.items():
            if len(xs) != len(ys):
                raise AttentionError(
                    f"panel {p.title!r}: series {label!r} has {len(xs)} x values and {len(ys)} y values"
                )
    path = _check_path(path)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(min(MAX_INCHES, 4.6 * len(panels)), 3.8), squeeze=False)
    for ax, p in zip(axes[0], panels):
        for label, (xs, ys) in p.series.items():
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        _scales(ax, p)
        ax.set_title(p.title, fontsize=10)
        ax.set_xlabel(p.xlabel)
        ax.set_ylabel(p.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
