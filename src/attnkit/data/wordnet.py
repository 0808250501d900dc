"""WordNet 3.0 glosses, read from the Debian package ``wordnet-base``, as three classification sets.

The files are ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv`` of the folder named by
the environment variable ``ATTNKIT_WORDNET_DIR``, else ``/usr/share/wordnet``. Nothing is
downloaded.

How a line becomes a :class:`Synset` (``man 5 wndb``): lines starting with two spaces are the
licence and are skipped; a synset line reads ``offset lex_filenum ss_type w_cnt word lex_id ...
p_cnt [ptr...] [frames...] | gloss``. ``lex_filenum`` indexes :data:`LEXNAMES` (the supersense,
e.g. ``noun.animal``). Words are lower-cased, with adjective markers such as ``(p)`` dropped and
``_`` kept. The gloss is the definition, then example sentences in double quotes: the definition
is the text before the first ``; "`` (or ``: "``), and every quoted string after that point is an
example (attributions such as ``--Thomas Paine`` outside the quotes are dropped).

The three datasets, each a list of records in file order (noun, verb, adj, adv):

- :func:`glosses`: a synset's definition -> its supersense (every synset).
- :func:`documents`: the definition followed by every example, one sentence each -> the
  supersense (only synsets with at least one example).
- :func:`pairs`: (definition, example) -> match. For every example of a synset S, one positive
  (S's definition, that example) and one hard negative (S's definition, an example of another
  synset that shares a word with S and lies in the same split); a synset without such a neighbour
  in its split gives no pairs. The negative is picked by :func:`pick`, a hash of S and the
  example's number, so the set is the same on every run.

The split is by synset, for all three sets alike: ``zlib.crc32`` of the synset id (``offset-ss_type``,
e.g. ``00001740-v``) mod 10 is 0 for "test", 1 for "valid", else "train" (10% / 10% / 80%). A synset
lies in exactly one split, and a pair's two synsets in the same one, so no synset's text reaches
two splits.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import AttentionError

__all__ = [
    "ENV",
    "LEXNAMES",
    "SPLITS",
    "Document",
    "Gloss",
    "Pair",
    "Synset",
    "documents",
    "glosses",
    "pairs",
    "parse_line",
    "pick",
    "split_of",
    "synsets",
    "tokenize",
    "wordnet_dir",
]

ENV = "ATTNKIT_WORDNET_DIR"
DEFAULT_DIR = "/usr/share/wordnet"
FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
SPLITS = ("train", "valid", "test")
# the 45 lexicographer files in lex_filenum order (man 5 lexnames)
# fmt: off
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)
# fmt: on

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_EXAMPLES_START = re.compile(r'[;:]\s*"')
_QUOTED = re.compile(r'"([^"]*)"')
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective position markers: (p), (a), (ip)


def tokenize(text: str) -> list[str]:
    """Lower-cased words: runs of letters and digits, joined by inner ``'`` or ``-``.

    >>> tokenize("The cat's well-known toy; 3 times!")
    ['the', "cat's", 'well-known', 'toy', '3', 'times']
    """
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Synset:
    """One synset: ``id`` (``offset-ss_type``), its supersense ``lexname``, its ``words`` and gloss."""

    id: str
    lexname: str
    words: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Gloss:
    """A definition and its synset's supersense."""

    synset: str
    text: str
    label: str


@dataclass(frozen=True)
class Document:
    """The definition then each example, one sentence each, and the synset's supersense."""

    synset: str
    sentences: tuple[str, ...]
    label: str


@dataclass(frozen=True)
class Pair:
    """``first`` is ``synset``'s definition; ``second`` an example of ``source``; ``match`` when
    ``source == synset``."""

    synset: str
    first: str
    second: str
    match: bool
    source: str


def split_of(synset_id: str) -> str:
    """The split of a synset: crc32 of its id mod 10 is 0 -> test, 1 -> valid, else train.

    >>> split_of("00001740-n"), split_of("00001930-n"), split_of("00006400-n")
    ('train', 'valid', 'test')
    """
    r = zlib.crc32(synset_id.encode()) % 10
    return "test" if r == 0 else "valid" if r == 1 else "train"


def pick(key: str, n: int) -> int:
    """A deterministic index in 0..n-1 for ``key`` (crc32 mod n)."""
    return zlib.crc32(key.encode()) % n


def parse_line(line: str) -> Synset:
    """The :class:`Synset` of one data-file line (see the module docstring for the rules).

    >>> s = parse_line('00002325 29 v 01 respire 1 000 01 + 02 00 | undergo respiration; "we respire"; "dogs pant"')
    >>> s.id, s.lexname, s.words, s.definition, s.examples
    ('00002325-v', 'verb.body', ('respire',), 'undergo respiration', ('we respire', 'dogs pant'))
    """
    head, sep, gloss = line.partition("|")
    fields = head.split()
    try:
        offset, lex_filenum, ss_type, w_cnt = fields[0], int(fields[1]), fields[2], int(fields[3], 16)
        words = tuple(_MARKER.sub("", fields[4 + 2 * i].lower()) for i in range(w_cnt))
        lexname = LEXNAMES[lex_filenum]
    except (IndexError, ValueError) as e:
        raise AttentionError(f"WordNet line {line[:60]!r}... is not a synset line ({e})") from None
    if not sep:
        raise AttentionError(f"WordNet line {line[:60]!r}... has no gloss after '|'")
    gloss = gloss.strip()
    start = _EXAMPLES_START.search(gloss)
    definition = (gloss[: start.start()] if start else gloss).strip(" ;:")
    examples = tuple(e.strip() for e in _QUOTED.findall(gloss[start.start() :])) if start else ()
    return Synset(f"{offset}-{ss_type}", lexname, words, definition, tuple(e for e in examples if e))


def wordnet_dir() -> Path:
    """The folder holding the data files: ``$ATTNKIT_WORDNET_DIR``, else /usr/share/wordnet."""
    folder = Path(os.environ.get(ENV) or DEFAULT_DIR)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise AttentionError(
            f"WordNet data not found: {str(folder)!r} has no {', '.join(missing)}; "
            f"install it with `apt-get install wordnet-base`, or set {ENV} to a folder holding {', '.join(FILES)}"
        )
    return folder


@cache
def _synsets(folder: Path) -> tuple[Synset, ...]:
    out = []
    for name in FILES:
        with open(folder / name, encoding="utf-8", errors="replace") as f:
            out += [parse_line(line) for line in f if not line.startswith("  ") and line.strip()]
    return tuple(out)


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise AttentionError(f"split={split!r} is unknown; expected one of {SPLITS}")


def synsets(split: str | None = None) -> list[Synset]:
    """Every synset with a definition, in file order, or one split's ("train", "valid", "test")."""
    _check_split(split)
    found = [s for s in _synsets(wordnet_dir()) if s.definition]
    return found if split is None else [s for s in found if split_of(s.id) == split]


def glosses(split: str | None = None) -> list[Gloss]:
    """Definition -> supersense, one per synset."""
    return [Gloss(s.id, s.definition, s.lexname) for s in synsets(split)]


def documents(split: str | None = None) -> list[Document]:
    """[definition, example, ...] -> supersense, for synsets with at least one example."""
    return [Document(s.id, (s.definition, *s.examples), s.lexname) for s in synsets(split) if s.examples]


def pairs(split: str | None = None) -> list[Pair]:
    """(definition, example) -> match, balanced: per example one positive and one hard negative
    (see the module docstring). ``split=None`` joins the three splits' pairs."""
    _check_split(split)
    if split is None:
        return [p for s in SPLITS for p in pairs(s)]
    return list(_pairs(wordnet_dir(), split))


@cache
def _pairs(folder: Path, split: str) -> tuple[Pair, ...]:
    with_examples = [s for s in _synsets(folder) if s.definition and s.examples and split_of(s.id) == split]
    by_word: dict[str, list[Synset]] = {}
    for s in with_examples:
        for w in s.words:
            by_word.setdefault(w, []).append(s)
    out = []
    for s in with_examples:
        neighbours = sorted({n.id: n for w in s.words for n in by_word[w] if n.id != s.id}.values(), key=lambda n: n.id)
        candidates = [(n.id, e) for n in neighbours for e in n.examples if e not in s.examples]
        if not candidates:
            continue
        for k, example in enumerate(s.examples):
            source, negative = candidates[pick(f"{s.id}/{k}", len(candidates))]
            out.append(Pair(s.id, s.definition, example, True, s.id))
            out.append(Pair(s.id, s.definition, negative, False, source))
    return tuple(out)
