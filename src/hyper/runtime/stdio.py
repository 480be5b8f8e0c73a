"""The host's end of a container's stdio: the user's terminal or pipes.

Output is written in a worker thread so a slow reader never blocks the event
loop; stdin is read in a thread because a regular file or a terminal cannot
always be watched by epoll.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import termios
import threading
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hyper.agent.protocol import FrameKind

if TYPE_CHECKING:
    # Only a type here: the CLI's thin client of hyperd imports this module, and
    # the agent's host side (only the direct path uses it) is not cheap.
    from hyper.agent.host import ProcessChannel

# Signals an attached client passes on to the container (Docker's list, less
# the terminal's own: SIGWINCH is a resize, SIGCHLD and SIGPIPE are local).
FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


@dataclass(frozen=True)
class Attachment:
    stdin_fd: int = 0
    stdout_fd: int = 1
    stderr_fd: int = 2

    def terminal_size(self) -> tuple[int, int]:
        for fd in (self.stdout_fd, self.stdin_fd, self.stderr_fd):
            with contextlib.suppress(OSError):
                size = os.get_terminal_size(fd)
                return size.lines, size.columns
        return 24, 80

    def stdin_is_tty(self) -> bool:
        return os.isatty(self.stdin_fd)


@contextlib.contextmanager
def raw_terminal(fd: int, enabled: bool) -> Iterator[None]:
    """Put the terminal in raw mode so keys (Ctrl-C too) go to the container; restore it always."""
    if not enabled or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BrokenPipeError:
            return  # the reader went away: drop output, as a pipeline would
        view = view[written:]


async def pump_output(channel: ProcessChannel, attachment: Attachment) -> None:
    while (item := await channel.output.get()) is not None:
        kind, data, _ = item
        fd = attachment.stdout_fd if kind == FrameKind.STDOUT else attachment.stderr_fd
        await asyncio.to_thread(_write_all, fd, data)


def start_stdin_reader(fd: int, queue: asyncio.Queue[bytes]) -> threading.Thread:
    """Read `fd` in a daemon thread into `queue`; b"" marks end of input."""
    loop = asyncio.get_running_loop()

    def read_loop() -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
            except (RuntimeError, concurrent.futures.CancelledError):
                return  # the loop is gone, or going: the run has ended
            if not data:
                return

    thread = threading.Thread(target=read_loop, name="stdin-reader", daemon=True)
    thread.start()
    return thread
