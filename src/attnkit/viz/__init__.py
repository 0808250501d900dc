"""Pictures of attention (matplotlib, from the ``viz`` extra: pip install 'attnkit[viz]')."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..errors import AttentionError, shape_str

__all__ = ["alignment"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AttentionError("pictures need matplotlib: pip install 'attnkit[viz]'") from None
    return plt


def alignment(
    weights: Tensor, source: list[str], target: list[str], path: str | Path, *, title: str | None = None
) -> Path:
    """Save the heatmap of ``weights`` (len(target), len(source)): one row per output token, one
    column per input token, both labelled. PNG or SVG, by ``path``'s suffix."""
    if tuple(weights.shape) != (len(target), len(source)):
        raise AttentionError(
            f"weights has shape {shape_str(weights.shape)} but expected (len(target), len(source)) = ({len(target)}, {len(source)})"
        )
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise AttentionError(f"plot file {str(path)!r} must end in .png or .svg")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(source), 1.0 + 0.4 * len(target)))
    im = ax.imshow(weights.detach().float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source)), source)
    ax.set_yticks(range(len(target)), target)
    ax.set_xlabel("input")
    ax.set_ylabel("output")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
