"""``Vocab``: symbols <-> ids, with the three specials every seq2seq model needs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ..errors import AttentionError

__all__ = ["BOS", "EOS", "PAD", "Vocab"]

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<s>", "</s>")


class Vocab:
    """A fixed symbol list; ids 0, 1, 2 are padding, start and end of sequence.

    >>> v = Vocab("abc", name="letters")
    >>> v.encode("cab"), v.decode([5, 3, 4, 2, 0])
    ([5, 3, 4], ['c', 'a', 'b'])
    """

    def __init__(self, symbols: Iterable[str], *, name: str = "symbols"):
        self.symbols = list(SPECIALS) + list(symbols)
        self.name = name
        self.index = {s: i for i, s in enumerate(self.symbols)}
        if len(self.index) != len(self.symbols):
            raise AttentionError(f"{name} vocabulary has repeated symbols")

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.symbols == other.symbols

    def encode(self, seq: Sequence[str]) -> list[int]:
        """Ids of ``seq``'s symbols; a symbol outside the vocabulary is an error that names it."""
        unknown = sorted({s for s in seq if s not in self.index or self.index[s] < len(SPECIALS)})
        if unknown:
            allowed = "".join(self.symbols[len(SPECIALS) :]) if all(len(s) == 1 for s in self.symbols[3:]) else None
            hint = f"; allowed: {allowed!r}" if allowed else ""
            raise AttentionError(f"{''.join(seq)!r} has {unknown} outside the {self.name} vocabulary{hint}")
        return [self.index[s] for s in seq]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Symbols up to the first end-of-sequence, skipping padding and start."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.symbols[i])
        return out

    def pad(self, seqs: Sequence[Sequence[int]], *, bos: bool = False, eos: bool = False) -> Tensor:
        """(B, T) long tensor of id sequences, padded with PAD, optionally framed by BOS / EOS."""
        framed = [([BOS] if bos else []) + list(s) + ([EOS] if eos else []) for s in seqs]
        out = torch.full((len(framed), max(map(len, framed), default=0)), PAD, dtype=torch.long)
        for i, s in enumerate(framed):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out
