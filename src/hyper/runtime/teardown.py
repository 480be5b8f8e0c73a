"""Stopping a foreground `hyper run` however stuck its guest is.

SIGINT and SIGTERM sent to `hyper run` are the container's, as in Docker: the
first one is forwarded to the container's process. But a guest that stopped
talking (a stalled channel, a half-sent frame, a paused VM) would then hold
`hyper run` forever. So, as `docker stop` does with its grace period:

- a second SIGINT or SIGTERM tears the run down here: QEMU is killed at once,
  everything is cleaned up, and `hyper run` exits 128+signal (130, 143);
- a forwarded signal that has not ended the container after
  FORCE_STOP_SECONDS does the same, with 137 (the container was killed);
- before the container runs (boot) and after it exited (power-off), the first
  signal cancels the run and the second kills QEMU so that the cancellation
  cannot wait on it.

And should `hyper run` itself be killed (SIGKILL), its QEMU gets SIGKILL from
the kernel: the jailer set a parent-death signal on it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

FORCE_STOP_SECONDS = 10.0  # docker stop's default grace period
EXIT_KILLED = 128 + signal.SIGKILL
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ForegroundStop:
    """The SIGINT/SIGTERM handler of one foreground run (see the module's docstring)."""

    def __init__(self, task: asyncio.Task[int], *, grace: float = FORCE_STOP_SECONDS) -> None:
        self.task = task
        self.grace = grace
        self.kill_vm: Callable[[], None] | None = None  # set once the VM's process exists
        self._forward: Callable[[int], bool] | None = None
        self._signals = 0
        self._first: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._cancelled = False
        self.torn_down: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.on_signal, signum)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        self._disarm()

    def attached(self, forward: Callable[[int], bool] | None) -> None:
        """While the container runs, `forward(signum)` passes a signal on to it
        (and says whether it did); None when it no longer runs."""
        self._forward = forward
        if forward is None:
            self._disarm()
        elif self._cancelled and self._first is not None:
            # Cancelled while booting, yet the container started: the cancellation
            # was lost (asyncio.wait_for can drop one before Python 3.12). End it now.
            self.tear_down(128 + self._first)

    @property
    def status(self) -> int | None:
        """The exit status of a run torn down here, else None."""
        return self.torn_down.result() if self.torn_down.done() else None

    def on_signal(self, signum: int) -> None:
        self._signals += 1
        self._first = self._first or signum
        if self._signals > 1:
            self.tear_down(128 + signum)
        elif self._forward is not None and self._forward(signum):
            self._timer = asyncio.get_running_loop().call_later(self.grace, self.tear_down, EXIT_KILLED)
        else:
            self._cancel()

    def tear_down(self, status: int) -> None:
        """Kill the VM now and end the run with `status`."""
        if not self.torn_down.done():
            self.torn_down.set_result(status)
        self._disarm()
        if self.kill_vm is not None:
            self.kill_vm()
        if self._forward is None:
            self._cancel()  # not attached: nothing waits on torn_down

    def _cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self.task.cancel()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
