"""Pictures of attention (matplotlib, from the ``viz`` extra: pip install 'attnkit[viz]')."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..errors import AttentionError, shape_str

__all__ = ["alignment", "document"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AttentionError("pictures need matplotlib: pip install 'attnkit[viz]'") from None
    return plt


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise AttentionError(f"plot file {str(path)!r} must end in .png or .svg")
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
    """Save the heatmap of ``weights`` (len(target), len(source)): one row per output token, one
    column per input token, both labelled. PNG or SVG, by ``path``'s suffix."""
    if tuple(weights.shape) != (len(target), len(source)):
        raise AttentionError(
            f"weights has shape {shape_str(weights.shape)} but expected (len(target), len(source)) = ({len(target)}, {len(source)})"
        )
    path = _check_path(path)
    plt = _pyplot()
    wide = max(map(len, source), default=0) > 2  # words, not letters: turn the column labels
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(source), (2.0 if wide else 1.0) + 0.4 * len(target)))
    im = ax.imshow(weights.detach().float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source)), source, rotation=90 if wide else 0)
    ax.set_yticks(range(len(target)), target)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
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
    import numpy as np

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
