"""Helpers of the G2P benchmark scripts that run the established G2P tools, Phonetisaurus and
Sequitur (``benchmarks/g2p/peers.py`` trains and scores them, ``benchmarks/g2p/inference.py``
times their decoding): the data files they read, the commands that run them, a timed run of one
command, and the record of the machine they ran on.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..data import cmudict
from .measure import cpu_model

__all__ = ["decoding_name", "host", "phonetisaurus_env", "sequitur_g2p", "timed", "valid_scores", "write_data"]


def write_data(folder: Path) -> dict[str, list[cmudict.Entry]]:
    """The three splits, written once as the tools read them: ``SPLIT.lex`` (``word<TAB>P1 P2 ...``,
    one line per pronunciation) and ``SPLIT.words`` (one word a line)."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {split: cmudict.load(split) for split in cmudict.SPLITS}
    for split, entries in splits.items():
        lex, words = folder / f"{split}.lex", folder / f"{split}.words"
        if not lex.exists():
            lines = [f"{e.word}\t{' '.join(p)}\n" for e in entries for p in e.pronunciations]
            lex.write_text("".join(lines))
        if not words.exists():
            words.write_text("".join(f"{e.word}\n" for e in entries))
    return splits


def timed(command: list[str], *, cwd: Path, log: Path, stdout: Path | None = None, env=None) -> dict:
    """Runs ``command`` in ``cwd``; its stdout goes to ``stdout`` (or the log), its stderr to ``log``.
    Returns the command, its wall time and the CPU time (user + sys) of it and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(log, "w") as err, open(stdout, "w") if stdout else err as out:
        done = subprocess.run(command, check=False, cwd=cwd, stdout=out, stderr=err, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"command": " ".join(command), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def phonetisaurus_env() -> dict:
    """The environment that puts the phonetisaurus wheel's bundled binaries and libraries first."""
    import phonetisaurus

    env = phonetisaurus.guess_environment()
    return {**os.environ, "PATH": env["PATH"], "LD_LIBRARY_PATH": env["LD_LIBRARY_PATH"]}


def sequitur_g2p() -> list[str]:
    """The command that runs Sequitur's g2p.py with this interpreter."""
    script = shutil.which("g2p.py", path=str(Path(sys.executable).parent))
    if script is None:
        sys.exit("sequitur's g2p.py is not installed in this venv: run benchmarks/g2p/install-peers.sh")
    return [sys.executable, script]


def valid_scores(g2p, beam: int) -> dict:
    """``g2p`` (a :class:`~attnkit.tasks.g2p.G2P`) on the whole validation split at ``beam``: WER / PER
    with and without stress, and the words decoded per second, rounded to 2 places; its ``beam``
    and whether it decoded with int8 products."""
    m = g2p.evaluate("valid", beam=beam)
    scores = {k: round(m[k], 2) for k in ("wer", "per", "wer_nostress", "per_nostress", "words_per_s")}
    return {"beam": beam, "int8": g2p.int8, **scores}


def decoding_name(beam: int, int8: bool | None = None) -> str:
    """How a table row decoded: ``greedy`` or ``beam K``, then ``, int8`` or ``, fp32`` unless None."""
    search = "greedy" if beam == 1 else f"beam {beam}"
    return search if int8 is None else f"{search}, {'int8' if int8 else 'fp32'}"


def host() -> dict:
    """The machine as peers.json and inference.json record it: ``processor`` (the platform's name),
    ``cpu`` (the model name, :func:`attnkit.bench.measure.cpu_model`; None where unknown) and
    ``cores``; no torch fields, the tools are not torch (:func:`attnkit.bench.measure.machine` has them)."""
    return {"processor": platform.processor(), "cpu": cpu_model(), "cores": os.cpu_count()}
