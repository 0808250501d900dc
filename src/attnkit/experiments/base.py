"""What every experiment shares: the verdicts, its description, and the three files it writes.

An experiment tests one claim of the notes. It measures, keeps every number in one JSON document,
draws its picture from that document alone (``figure(doc)``) and decides its verdict from that
document alone (``verdict(doc)``), so the picture, the numbers and the verdict cannot disagree.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from ..bench.train import loadavg, machine
from ..train.checkpoint import write_json
from ..viz.static import Panel, curves

__all__ = ["CONDITIONS", "FAILS", "HOLDS", "VERDICTS", "Experiment", "Notes", "by_share", "numbered"]

HOLDS = "holds"
CONDITIONS = "holds under conditions"
FAILS = "does not hold here"
VERDICTS = (HOLDS, CONDITIONS, FAILS)
_CONSTANTS = ("name", "claim", "notes", "config", "quick")  # module constants, in capitals: NAME, ...


def by_share(passing: list[str], kinds: list[str]) -> tuple[str, str]:
    """The verdict of a claim made of each of ``kinds``: HOLDS if every one is ``passing``,
    CONDITIONS if some are, FAILS if none; and which, in words.

    >>> by_share(["a"], ["a", "b"])
    ('holds under conditions', 'a; not b')
    """
    failing = [k for k in kinds if k not in passing]
    if not failing:
        return HOLDS, "every one"
    if passing:
        return CONDITIONS, f"{', '.join(passing)}; not {', '.join(failing)}"
    return FAILS, "none"


def numbered(names: list[str], per_line: int = 3) -> str:
    """An axis label that says which name each x = 0, 1, ... stands for, ``per_line`` to a line.

    >>> print(numbered(["a", "b", "c", "d"], per_line=2))
    0 = a, 1 = b,
    2 = c, 3 = d
    """
    items = [f"{i} = {n}" for i, n in enumerate(names)]
    return ",\n".join(", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line))


@dataclass(frozen=True)
class Notes:
    """Where the notes make the claim: a file of ``shared/seeds/`` and its words, quoted as written;
    for a claim the notes do not make, ``paper``: the citation of the paper that does (``seed`` empty)."""

    seed: str
    words: str
    paper: str | None = None

    def source(self) -> str:
        """Where the words are from, for the report."""
        return self.paper or f"`seeds/{self.seed}`"


@dataclass(frozen=True)
class Experiment:
    """A claim and the code that tests it: ``measure(config, work)`` returns the JSON document
    (numbers only; ``work``: a folder for its checkpoints, kept until the run ends, so that the same
    command run again after a stop continues each training where its last checkpoint left it), ``figure(doc)`` the panels of its picture,
    ``verdict(doc)`` the verdict and the sentence that says why, ``method(config)`` the lines of the
    report that say how it was measured, ``numbers(doc)`` the report's lines of results."""

    name: str
    claim: str
    notes: tuple[Notes, ...]
    config: type  # the dataclass of its full-size config; ``config()`` is the full run
    quick: Any  # the --quick config: at most 10 minutes on 2 CPU cores
    measure: Callable[[Any, Path], dict]
    figure: Callable[[dict], list[Panel]]
    verdict: Callable[[dict], tuple[str, str]]
    method: Callable[[Any], list[str]]
    numbers: Callable[[dict], list[str]]

    @classmethod
    def of(cls, module: ModuleType) -> Experiment:
        """The experiment a module defines: ``NAME``, ``CLAIM``, ``NOTES``, ``CONFIG``, ``QUICK``
        and the functions named as the fields above."""
        named = {f.name: getattr(module, f.name.upper() if f.name in _CONSTANTS else f.name) for f in fields(cls)}
        return cls(**named)

    def run(self, config, out: Path) -> str:
        """Measure with ``config``, write NAME.json, NAME.png and NAME.md into ``out``; the verdict.
        Checkpoints go to ``out/NAME-work``, removed once the results are written; a run stopped
        before that continues from them when run again with the same config."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        load = loadavg()
        size = "quick" if config == self.quick else "full" if config == self.config() else "custom"
        doc = {"experiment": self.name, "size": size, "config": asdict(config), "machine": machine()}
        doc["load_before"] = load
        work = out / f"{self.name}-work"
        doc |= self.measure(config, work)
        doc["load_after"] = loadavg()
        doc["verdict"], doc["why"] = self.verdict(doc)
        write_json(out / f"{self.name}.json", doc)
        curves(self.figure(doc), out / f"{self.name}.png", title=f"{self.name}: {self.claim}")
        (out / f"{self.name}.md").write_text(self.report(config, doc), encoding="utf-8")
        shutil.rmtree(work, ignore_errors=True)
        return doc["verdict"]

    def report(self, config, doc: dict) -> str:
        """The markdown report: claim, the notes' words, method, numbers, verdict."""
        m = doc["machine"]
        lines = [f"# {self.name}: {self.claim}", "", f"A {doc['size']} run (`attnkit experiment {self.name}"]
        lines[-1] += {"quick": " --quick`).", "full": "`).", "custom": "` with its own config)."}[doc["size"]]
        lines += ["", "**The paper:**" if all(n.paper for n in self.notes) else "**The notes:**", ""]
        lines += [f"> {n.words} ({n.source()})" for n in self.notes]
        lines += ["", "**Method.**", "", *[f"- {line}" for line in self.method(config)]]
        lines += [
            (
                f"- machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, torch {m['torch']}; "
                f"load {doc['load_before']} before, {doc['load_after']} after"
            ),
            "",
            (f"**Numbers** (every number of the picture is in [`{self.name}.json`]({self.name}.json)):"),
            "",
            *self.numbers(doc),
            "",
            f"![{self.name}]({self.name}.png)",
            "",
            f"**Verdict: {doc['verdict']}.** {doc['why']}",
            "",
        ]
        return "\n".join(lines)
