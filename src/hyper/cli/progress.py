"""Showing pull and push progress: per-layer bars on a terminal, plain lines elsewhere.

On a terminal each layer gets a `rich` progress bar labelled like Docker's
(`3f4a1b2c5d6e: Downloading`); when output goes to a file or pipe only status
changes are printed, one line each, so logs stay readable. Events may come
from several download threads, hence the lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

from hyper.image.registry.progress import ProgressCallback, ProgressEvent

# rich is imported only when bars are drawn: a pull into a pipe or a log
# starts faster without it.
if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

_TRANSFER_STATUSES = frozenset({"Downloading", "Pushing"})


def event_line(event: ProgressEvent) -> str:
    return f"{event.id}: {event.status}" if event.id else event.status


class PlainProgress:
    """One line per status change; transfer progress is not repeated."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._last: dict[str, str] = {}

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if event.id and self._last.get(event.id) == event.status:
                return
            if event.id:
                self._last[event.id] = event.status
            if event.status in _TRANSFER_STATUSES and event.current and event.id:
                return
            print(event_line(event), file=self._stream, flush=True)


class BarProgress:
    """rich bars, one per layer; messages without a layer print above them."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if not event.id:
                self._progress.console.print(event.status, highlight=False)
                return
            task = self._tasks.get(event.id)
            description = f"{event.id}: {event.status}"
            if task is None:
                task = self._progress.add_task(description, total=event.total or None)
                self._tasks[event.id] = task
            self._progress.update(
                task, description=description, completed=event.current, total=event.total or None
            )


def _quiet(event: ProgressEvent) -> None:
    del event


@contextlib.contextmanager
def progress_display(stream: TextIO, *, quiet: bool = False) -> Iterator[ProgressCallback]:
    """The display for `stream`: nothing when quiet, bars on a terminal, else plain lines."""
    if quiet:
        yield _quiet
        return
    if not stream.isatty():
        yield PlainProgress(stream)
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    console = Console(file=stream)
    columns = (TextColumn("{task.description:<32}"), BarColumn(), DownloadColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        yield BarProgress(bars)
