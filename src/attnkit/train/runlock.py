"""One training per run folder: :func:`run_lock`, an exclusive ``flock`` on the folder's
:data:`LOCK` file for as long as a training holds the folder."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from ..errors import AttentionError
from . import distributed

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

__all__ = ["LOCK", "run_lock"]

LOCK = "run.lock"  # in a run folder while a training holds it (:func:`run_lock`); it names that process


@contextlib.contextmanager
def run_lock(out, option: str = "out"):
    """Hold the run folder ``out`` (made if need be) for one training at a time: an exclusive
    ``flock`` on ``out/LOCK``, a file that holds this process's id. Another process that asks for it
    meanwhile gets an AttentionError naming that id (``option`` names the folder's setting in it:
    ``--out`` on the command line). The kernel lets go of the lock when its process ends, SIGKILL
    included, so a file left by a killed run holds nobody up. Re-entrant within a process (the
    command line holds the folder from its first look at it, then :meth:`Trainer.fit` asks again).
    In a process group rank 0 holds it and every process raises the same error. On release the
    file goes, and so do the folders this call made if nothing else was written in them."""
    error, key = None, None
    if distributed.rank() == 0:
        try:
            key = _hold(Path(out), option)
        except AttentionError as err:
            error = str(err)
    if distributed.world_size() > 1:  # every process raises, or none
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise AttentionError(error)
    try:
        yield
    finally:
        if key is not None:
            _let_go(key)


_HELD: dict[str, list] = {}  # folder (real path) -> [lock's file descriptor, holders in this process, folders made]


def _hold(out: Path, option: str) -> str:
    key = os.path.realpath(out)
    if key in _HELD:
        _HELD[key][1] += 1
        return key
    made = [p for p in (Path(key), *Path(key).parents) if not p.exists()]  # the folders this call makes, deepest first
    while True:
        out.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder went with a holder that let go just now: again
            continue
        if fcntl is None:  # no flock here (Windows): one training per folder is then the user's care
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            held_by = f" (pid {pid})" if pid.isdigit() else ""
            raise AttentionError(
                f"run folder {str(out)!r} is in use by another training{held_by}; "
                f"wait for it or pick another {option}"
            ) from None
        try:  # the file locked is still the folder's, not one its holder removed as it let go
            if os.path.samestat(os.stat(out / LOCK), os.fstat(fd)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = [fd, 1, made]
    return key


def _let_go(key: str) -> None:
    held = _HELD[key]
    held[1] -= 1
    if held[1]:
        return
    del _HELD[key]
    fd, _, made = held
    try:
        os.unlink(Path(key) / LOCK)  # while still holding it: whoever opened it meanwhile sees it went, and tries again
        for folder in made:
            os.rmdir(folder)  # only if empty: a run that wrote nothing leaves nothing
    except OSError:
        pass
    finally:
        os.close(fd)
