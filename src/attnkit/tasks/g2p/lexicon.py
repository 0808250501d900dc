"""Known pronunciations that win over the model (:meth:`~attnkit.tasks.g2p.G2P.pronounce`'s
``lexicon=`` and ``cmudict=``): a user's lexicon file, in the CMU dictionary's format (``word PH1
PH2 ...`` a line, ``#`` comments, ``word(2)`` variants: the first pronunciation of a word is used),
and the CMU dictionary itself (the ``cmudict`` package, the ``g2p`` extra)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path

from ...data import cmudict
from ...errors import AttentionError

__all__ = ["check", "cmu", "entries", "read"]


def read(path: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """word -> its first pronunciation, from a lexicon file in cmudict format; a line that is not
    ``word PH1 PH2 ...`` is an error naming the file and the line."""
    return {e.word: e.pronunciations[0] for e in entries(path)}


def entries(path: str | os.PathLike) -> list[cmudict.Entry]:
    """Every word of a lexicon file in cmudict format with all its pronunciations, as :func:`read`
    reads it."""
    path = Path(path)
    if not path.is_file():
        raise AttentionError(f"lexicon {str(path)!r} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise AttentionError(f"lexicon {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        found = cmudict.parse(text)
    except AttentionError as err:
        raise AttentionError(f"lexicon {str(path)!r}: {str(err).removeprefix('cmudict ')}") from None
    if not found:
        raise AttentionError(f"lexicon {str(path)!r} holds no pronunciations")
    return found


@cache
def cmu() -> Mapping[str, tuple[str, ...]]:
    """word -> its first pronunciation in the CMU dictionary (all of it, every split)."""
    return {e.word: e.pronunciations[0] for e in cmudict.load()}


def check(lexicon: Mapping[str, Sequence[str]], phonemes: Iterable[str], what: str = "lexicon") -> None:
    """Raise unless every pronunciation of ``lexicon`` is a non-empty sequence of ``phonemes`` (with
    or without their stress digits): a typo in an override is an error, not an output."""
    known = set(phonemes)
    known |= {p.rstrip("012") for p in known}
    for word, phones in lexicon.items():
        if not isinstance(word, str) or isinstance(phones, str) or not phones:
            raise AttentionError(f"{what} maps {word!r} to {phones!r}; expected a word and a sequence of phonemes")
        unknown = [p for p in phones if p not in known]
        if unknown:
            raise AttentionError(
                f"{what} gives {word!r} the phonemes {unknown}, which the model does not have (e.g. AH0, B, EY1)"
            )
