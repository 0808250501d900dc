"""``Vocab``: symbols <-> ids, with the three specials every seq2seq model needs, and optionally a
symbol that stands for every unknown one (word vocabularies built from a training split)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ..errors import AttentionError

__all__ = ["BOS", "EOS", "PAD", "UNK", "Vocab"]

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<s>", "</s>")
UNK = "<unk>"  # the unknown-word symbol of vocabularies built by Vocab.build


class Vocab:
    """A fixed symbol list; ids 0, 1, 2 are padding, start and end of sequence.

    >>> v = Vocab("abc", name="letters")
    >>> v.encode("cab"), v.decode([5, 3, 4, 2, 0])
    ([5, 3, 4], ['c', 'a', 'b'])

    With ``unk``, a symbol outside the vocabulary encodes as ``unk`` instead of raising:

    >>> words = Vocab.build([["a", "cat"], ["a", "dog"]], min_count=2)
    >>> words.symbols[3:], words.encode(["a", "bird"])
    (['<unk>', 'a'], [4, 3])
    """

    def __init__(self, symbols: Iterable[str], *, name: str = "symbols", unk: str | None = None):
        self.symbols = list(SPECIALS) + list(symbols)
        self.name = name
        self.index = {s: i for i, s in enumerate(self.symbols)}
        if len(self.index) != len(self.symbols):
            raise AttentionError(f"{name} vocabulary has repeated symbols")
        if unk is not None and self.index.get(unk, 0) < len(SPECIALS):
            raise AttentionError(f"unk={unk!r} is not one of the {name} symbols; put it in symbols")
        self.unk = unk

    @classmethod
    def build(cls, sequences: Iterable[Sequence[str]], *, min_count: int = 1, name: str = "words") -> Vocab:
        """The symbols seen at least ``min_count`` times in ``sequences``, most frequent first (ties
        in alphabetical order), after :data:`UNK`, which stands for all the others."""
        if min_count < 1:
            raise AttentionError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(s for seq in sequences for s in seq)
        kept = sorted((s for s, n in counts.items() if n >= min_count and s != UNK), key=lambda s: (-counts[s], s))
        return cls([UNK, *kept], name=name, unk=UNK)

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.symbols == other.symbols and self.unk == other.unk

    def encode(self, seq: Sequence[str]) -> list[int]:
        """Ids of ``seq``'s symbols; a symbol outside the vocabulary (or a special) is an error that
        names it, or the id of ``unk`` when the vocabulary has one."""
        if self.unk is not None:
            unk = self.index[self.unk]
            return [i if (i := self.index.get(s, unk)) >= len(SPECIALS) else unk for s in seq]
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
