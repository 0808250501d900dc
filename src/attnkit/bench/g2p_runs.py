"""The G2P models that ``benchmarks/g2p/compare.py`` trains side by side and
``benchmarks/g2p/speed.py`` times: their flags, and the folders their runs are kept in.
"""

from __future__ import annotations

__all__ = ["MODELS", "RECIPE", "SHIPPED", "slug"]

MODELS = {
    "rnn, no attention": ["--attention", "none"],
    "rnn, Bahdanau": ["--attention", "bahdanau"],
    "rnn, Luong general": ["--attention", "luong-general"],
    "rnn, Luong general, scaled": ["--attention", "luong-general", "--scaled"],
    "rnn, Luong local-p": ["--attention", "local-p"],
    "transformer": ["--model", "transformer", "--ff-dim", "512", "--lr", "1e-3"],
}
# the shipped model: its recipe (README), its folder, the checkpoint it ships (average.py's choice on valid)
RECIPE = "--scaled --no-input-feed --layers 2 --embed-dim 128 --hidden-dim 256 --dropout 0.3 --epochs 40 --patience 8"
RECIPE += " --keep-epochs 5 --precision bf16 --checkpoint-every 200"
SHIPPED = {
    "rnn, 2 layers, Luong scaled general, no input feeding (one run, shipped before the ensemble)": (
        RECIPE.split(),
        "runs/g2p-ship2",
        "chosen.safetensors",
    )
}


def slug(name: str) -> str:
    """A model's run folder name under ``--out``: ``"rnn, Luong general"`` -> ``"rnn-luong-general"``.

    >>> slug("rnn, Luong general, scaled")
    'rnn-luong-general-scaled'
    """
    return name.replace(", ", "-").replace(" ", "-").lower()
