"""``attnkit viz bert TEXT`` and ``attnkit viz g2p WORD``: interactive HTML and PNG grids of attention."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import AttentionError

__all__ = ["add_viz_parser", "viz"]


def add_viz_parser(sub) -> None:
    from .options import add_trust_flag

    p = sub.add_parser("viz", help="pictures of a real model's attention: interactive HTML and PNG")
    kinds = p.add_subparsers(dest="model", required=True)
    bert = kinds.add_parser("bert", help="all-MiniLM-L6-v2 (6 layers x 12 heads) on a text")
    bert.add_argument("text")
    g2p = kinds.add_parser(
        "g2p", help="a G2P model on a word: cross-attention (and, for a Transformer, self-attention)"
    )
    g2p.add_argument("word")
    g2p.add_argument("--checkpoint", help="a G2P checkpoint (default: the shipped model)")
    add_trust_flag(g2p)
    for q in (bert, g2p):
        q.add_argument("--out", default="attention", help="folder for the .html and .png files (default ./attention)")


def viz(args) -> int:
    from . import progress
    from .options import check_folder, check_names, check_pictures

    out = check_folder(args.out, "--out")
    check_pictures(f"viz {args.model}")  # the PNG beside the page: before anything is written
    if args.model == "g2p":  # the files are named after the word: their names must fit before it is decoded
        for suffix in (".html", ".png"):
            check_names(out / f"g2p-{args.word.strip().lower()}{suffix}", "viz g2p WORD (its files are named after it)")
    if args.model == "bert":
        with progress.spinner("all-MiniLM-L6-v2: loading, encoding, drawing"):
            written = _bert(args.text, out)
    else:
        with progress.spinner("G2P: loading, decoding, drawing"):
            written = _g2p(args.word, args.checkpoint, out, trust_unchecked=args.trust_unchecked)
    for path in written:
        print(path)
    return 0


def _bert(text: str, out: Path) -> list[Path]:
    from .. import capture
    from ..models.bert import load_minilm
    from ..viz import View, grid, write_html

    model = load_minilm()
    with capture(model) as rec:
        encoded = model.encode(text)
    names = rec.names()
    weights = torch.stack([rec[n][0] for n in names])  # (L, H, T, T)
    layers = [f"layer {i}" for i in range(len(names))]
    tokens = encoded.tokens
    view = View("encoder self-attention", tokens, tokens, weights, layers)
    html = write_html(out / "bert.html", view, title=f"all-MiniLM-L6-v2: {text}")
    png = grid(weights, tokens, out / "bert-heads.png", layers=layers, title="all-MiniLM-L6-v2: layers x heads")
    return [html, png]


def _in_member(name: str) -> str:
    """A module's name inside its ensemble member ("members.0.encoder.x" -> "encoder.x")."""
    return name.split(".", 2)[2] if name.startswith("members.") else name


def _g2p(word: str, checkpoint: str | None, out: Path, *, trust_unchecked: bool = False) -> list[Path]:
    from .. import capture
    from ..tasks.g2p import G2P
    from ..viz import View, alignment, write_html
    from .g2p import pronounced

    g2p = G2P.load(checkpoint, trust_unchecked=trust_unchecked)
    if getattr(g2p.members[0].config, "attention", None) == "none":  # an ensemble: one panel per member
        raise AttentionError("this model has no attention (attention=none): there is nothing to show")
    word = g2p.check_word(word)
    g2p.use_fast = False  # the model's own Attention modules decode, so that their calls are recorded
    with capture(g2p.model) as rec:
        (result,) = pronounced(g2p, [word], [""], beam=1)  # greedy: one decoder call per output step
    letters, phones = list(result.word), list(result.phones)
    outputs = ["<s>"] + phones  # the decoder's inputs: what each step reads
    views = []
    names = rec.names()
    if any(_in_member(n).startswith("encoder.") for n in names):  # a Transformer: its encoder attends too
        enc = [n for n in names if _in_member(n).startswith("encoder.")]
        views.append(View("encoder self-attention", letters, letters, torch.stack([rec[n][0] for n in enc]), enc))
        # the last step re-read the whole prefix: its calls hold every step's rows
        last = {n: rec[n][0, :, : len(outputs)] for n in names if n not in enc}  # (H, T, Tk)
        outputs = outputs[: next(iter(last.values())).shape[1]]
        dec = [n for n in last if n.endswith("self_attn")]
        cross = [n for n in last if n.endswith("cross_attn")]
        views.append(
            View(
                "decoder self-attention",
                outputs,
                outputs,
                torch.stack([last[n][:, :, : len(outputs)] for n in dec]),
                dec,
            )
        )
        views.append(View("cross-attention", outputs, letters, torch.stack([last[n] for n in cross]), cross))
    else:  # an RNN decoder: one attention (one per member of an ensemble), one step per call
        rows = torch.stack([torch.stack([w[0] for w in rec.calls(n)])[: len(outputs)] for n in names])  # (N, T, S)
        outputs = outputs[: rows.shape[1]]  # stopped at the length limit: no step reads the last phoneme
        views.append(View("cross-attention", outputs, letters, rows[:, None], [n or "attention" for n in names]))
    html = write_html(out / f"g2p-{result.word}.html", views, title=f"{result.word} -> {' '.join(phones)}")
    png = alignment(
        result.weights,
        letters,
        phones + ["</s>"][: result.weights.shape[0] - len(phones)],
        out / f"g2p-{result.word}.png",
    )
    return [html, png]
