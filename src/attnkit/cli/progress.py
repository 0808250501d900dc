"""Progress on stderr for the commands that can take more than a few seconds: a rich bar for work
counted in items, a spinner for work that is not. Shown only where stderr is a terminal (rich's
``FORCE_COLOR`` forces it), and erased when done, so stdout and logs keep only the results."""

from __future__ import annotations

from contextlib import contextmanager

__all__ = ["bar", "spinner"]


def _console():
    from rich.console import Console

    return Console(stderr=True)


class _Bar:
    def __init__(self, what: str):
        self.what, self.bar = what, None

    def __call__(self, done: int, total: int) -> None:
        """The callback of :func:`attnkit.tasks.g2p.decode_words` and :func:`attnkit.tasks.classify.predict`."""
        if self.bar is not None:
            self.bar.update(self.id, completed=done, total=total)


@contextmanager
def bar(what: str):
    """A callback ``progress(done, total)`` that draws a bar labelled ``what`` while the block runs."""
    console = _console()
    progress = _Bar(what)
    if not console.is_terminal:
        yield progress
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress.bar = Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True
    )
    progress.id = progress.bar.add_task(what, total=None)
    with progress.bar:
        yield progress


@contextmanager
def spinner(what: str):
    """A spinner labelled ``what`` while the block runs."""
    console = _console()
    if not console.is_terminal:
        yield
        return
    with console.status(what):
        yield
