"""``attnkit tour``: every kind of attention on one small built-in example, weights as tables.

The example is deterministic (fixed seeds): a five-word sentence for self-attention, and a tiny
"translation" (the black cat . -> le chat noir .) whose decoder states point at their source
words, for cross attention. Modules are freshly initialised, not trained: their weights show what
each kind computes and where it may look, not what a trained model learns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import Tensor

from .. import NORMALIZERS, SCORES, Attention, AttentionPooling, HierarchicalAttention, MultiHeadAttention, masks
from ..backends import attention

SENTENCE = ["thinking", "machines", "learn", "to", "attend"]
SOURCE = ["the", "black", "cat", "."]
TARGET = ["le", "chat", "noir", "."]
ALIGNED = [0, 2, 1, 3]  # TARGET[t] translates SOURCE[ALIGNED[t]]
DIM = 8


def _embed(words: Sequence[str], dim: int = DIM, seed: int = 0) -> Tensor:
    """A fixed random vector per word: (1, T, dim)."""
    vocab = sorted(set(SENTENCE + SOURCE + TARGET + list(words)))
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(len(vocab), dim, generator=gen)
    return table[[vocab.index(w) for w in words]].unsqueeze(0)


class _Printer:
    def __init__(self, console: Console, plot_dir: Path | None = None):
        self.console, self.plot_dir = console, plot_dir
        self.plots: list[Path] = []

    def section(self, title: str, text: str) -> None:
        self.console.rule(f"[bold]{escape(title)}")
        self.console.print(escape(text))

    def weights(self, title: str, rows: Sequence[str], cols: Sequence[str], w: Tensor) -> None:
        """One weight matrix (len(rows), len(cols)); the largest weight of each row in bold, 0 as '·'."""
        self.console.print(f"[bold]{escape(title)}")
        table = Table(show_edge=False, pad_edge=False)
        table.add_column("query \\ key", style="italic")
        for c in cols:
            table.add_column(escape(c), justify="right")
        for name, row in zip(map(escape, rows), w.tolist()):
            best = max(row)
            cells = ["·" if x == 0 else (f"[bold]{x:.2f}[/bold]" if x == best else f"{x:.2f}") for x in row]
            table.add_row(name, *cells)
        self.console.print(table)
        self.console.print()
        if self.plot_dir is not None:  # the same matrix as a heatmap
            from ..viz import heatmap

            slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60]
            path = self.plot_dir / f"{len(self.plots) + 1:02d}-{slug}.png"
            self.plots.append(heatmap(w, list(rows), list(cols), path, title=title))


def _scores(p: _Printer) -> None:
    """Every score function, on a sentence attending to itself."""
    p.section("1. Score functions", "Self-attention of a sentence over itself; softmax; one table per score.")
    x = _embed(SENTENCE)
    torch.manual_seed(0)
    for name, score in SCORES.items():
        params = score.init_params(DIM, DIM, DIM)
        _, w = attention(x, x, x, score=name, score_params=params, need_weights=True)
        p.weights(f"{name}: {score.formula}", SENTENCE, SENTENCE, w[0])


def _normalizers(p: _Printer) -> None:
    """Soft, sparse and hard normalizers turning the same scores into weights."""
    p.section(
        "2. Normalizers: soft, sparse, hard",
        "The same scaled-dot scores turned into weights by each normalizer (· = exactly 0).",
    )
    x = _embed(SENTENCE)
    gen = torch.Generator().manual_seed(0)
    configured = {
        "softmax": NORMALIZERS["softmax"](),
        "sparsemax": NORMALIZERS["sparsemax"](),
        "entmax15": NORMALIZERS["entmax15"](),
        "hard (argmax)": NORMALIZERS["hard"](),
        "topk k=2": NORMALIZERS["topk"](k=2),
        "sample k=8 (REINFORCE)": NORMALIZERS["sample"](k=8, generator=gen),
        "gumbel tau=0.5 (straight-through)": NORMALIZERS["gumbel"](temperature=0.5, generator=gen),
    }
    for title, normalizer in configured.items():
        _, w = attention(x, x, x, normalize=normalizer, need_weights=True)
        p.weights(title, SENTENCE, SENTENCE, w[0])


def _regions(p: _Printer) -> None:
    """Masks: causal, sliding window, padding, and a combination."""
    p.section(
        "3. Masks and regions: causal, sliding window, padding",
        "True = may attend. A decoder sees only the past; local attention a window; padding nothing.",
    )
    x = _embed(SENTENCE)
    cases: dict[str, Callable[[], masks.Mask]] = {
        "causal (decoder self-attention)": lambda: masks.causal(),
        "sliding window (left=1, right=1)": lambda: masks.sliding_window(1, 1),
        "key padding: the last two words are padding": lambda: masks.padding([3], max_len=5),
        "causal & window (left=1): a local decoder": lambda: masks.causal() & masks.sliding_window(1, 0),
    }
    for title, make in cases.items():
        _, w = attention(x, x, x, mask=make(), need_weights=True)
        p.weights(f"{title}   mask = {make()!r}", SENTENCE, SENTENCE, w[0])


def _cross(p: _Printer) -> None:
    """A decoder attending an encoder: global and local alignments."""
    p.section(
        "4. Cross attention: an encoder-decoder alignment",
        "Decoder states (le chat noir .) attend encoder states (the black cat .). Each decoder state "
        "is built near the encoder state of the word it translates, so the alignment crosses where "
        "French puts the adjective after the noun.",
    )
    src = _embed(SOURCE, dim=16)  # (1, S, 16), encoder states
    gen = torch.Generator().manual_seed(1)
    dec = src[:, ALIGNED] + 0.3 * torch.randn(1, len(TARGET), 16, generator=gen)  # (1, T, 16)
    for name in ("dot", "scaled_dot", "cosine"):
        att = Attention(16, score=name)
        _, w = att(dec, src, need_weights=True)
        p.weights(f"global, score={name}", TARGET, SOURCE, w[0].detach())
    torch.manual_seed(0)
    local_m = Attention(16, score="dot", region="local-m", window=1)
    _, w = local_m(dec, src, need_weights=True)
    p.weights("local-m, window D=1: step t sees source t-1..t+1", TARGET, SOURCE, w[0].detach())
    local_p = Attention(16, score="dot", region="local-p", window=1)
    _, w = local_p(dec, src, need_weights=True)
    p.weights(
        "local-p, D=1: predicted centre, Gaussian sigma=D/2 (untrained predictor; rows sum to <= 1)",
        TARGET,
        SOURCE,
        w[0].detach(),
    )


def _multihead(p: _Printer) -> None:
    """Two heads with their own score functions, and their average."""
    p.section(
        "5. Multi-head self-attention",
        "Two heads, each with its own projections (freshly initialised) and its own score function, and their average.",
    )
    torch.manual_seed(0)
    x = _embed(SENTENCE, dim=16)
    scores = ["scaled_dot", "additive"]
    mha = MultiHeadAttention(16, 2, score=scores)
    _, w = mha(x, need_weights=True, average_weights=False)  # (1, H, T, T)
    for h in range(2):
        p.weights(f"head {h}: score={scores[h]}", SENTENCE, SENTENCE, w[0, h].detach())
    p.weights("average over heads", SENTENCE, SENTENCE, w[0].mean(0).detach())


def _structure(p: _Printer) -> None:
    """Attention pooling, and hierarchical attention (words, then sentences)."""
    p.section(
        "6. Pooling and hierarchy",
        "A learned query pools a sequence into one vector (LSTM + attention); two levels of it pool "
        "words into sentence vectors and sentences into a document vector.",
    )
    torch.manual_seed(0)
    x = _embed(SENTENCE)
    pool = AttentionPooling(DIM)
    _, w = pool(x, need_weights=True)
    p.weights("attention pooling (additive score, learned query)", ["pooled"], SENTENCE, w.detach())
    doc = [["thinking", "machines", "learn"], ["to", "attend", "."]]
    words = torch.cat([_embed(s) for s in doc]).unsqueeze(0)  # (1, S=2, T=3, D)
    han = HierarchicalAttention(DIM)
    r = han(words)
    for i, sentence in enumerate(doc):
        p.weights(f"word weights, sentence {i}", [f"s{i}"], sentence, r.word_weights[0, i : i + 1].detach())
    p.weights("sentence weights", ["document"], ["s0", "s1"], r.sentence_weights.detach())


SECTIONS: dict[str, Callable[[_Printer], None]] = {
    "scores": _scores,
    "normalizers": _normalizers,
    "regions": _regions,
    "cross": _cross,
    "multihead": _multihead,
    "structure": _structure,
}


def _check_plot_dir(path: Path) -> Path:
    """``--plot DIR`` is a folder: not an existing file, not a picture's name (one PNG per table)."""
    from ..errors import AttentionError
    from .options import IMAGE_SUFFIXES, check_folder, check_pictures

    check_folder(path, "--plot")
    if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir():
        raise AttentionError(
            f"--plot takes a folder (the tour saves one picture per table), not a file name like {str(path)!r}; "
            f"e.g. --plot {str(path.with_suffix(''))!r}"
        )
    check_pictures("--plot")
    return path


def run(
    sections: Sequence[str] | None = None,
    list_only: bool = False,
    console: Console | None = None,
    plot_dir: str | Path | None = None,
) -> int:
    console = console or Console()
    if list_only:
        width = max(map(len, SECTIONS))
        for name, show in SECTIONS.items():  # the name, and the first line of what the section shows
            line = f"{name:<{width}}  {show.__doc__.splitlines()[0]}"
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        return 0
    unknown = [s for s in sections or [] if s not in SECTIONS]
    if unknown:
        from ..errors import AttentionError

        raise AttentionError(f"--section {unknown[0]!r} is unknown; expected one of {list(SECTIONS)}")
    if plot_dir is not None:
        plot_dir = _check_plot_dir(Path(plot_dir))
    printer = _Printer(console, plot_dir)
    with torch.no_grad():
        for name in sections or SECTIONS:
            SECTIONS[name](printer)
    if printer.plots:
        console.print(f"{len(printer.plots)} heatmaps in {plot_dir}")
    return 0
