"""The requests a running container of hyperd's answers (hyper.daemon.pods):
signals, stop, pause, stdin and terminal size, execs, file copies, waits.

A mixin of Pod, which owns the state these requests work on (its record, VM,
agent and run) and how a run ends; split from it so that each file keeps to
one concern: pods.py a container's runs from start to exit, this one what
users ask of a container while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

from hyper.agent.host import AgentClient, ProcessChannel
from hyper.daemon.requests import parse_signal
from hyper.daemon.state import ContainerRecord, StateStore
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument
from hyper.paths import HyperPaths
from hyper.runtime import spec as specs
from hyper.runtime.run import ContainerRun, start_process
from hyper.runtime.settings import Settings
from hyper.vm.qemu import QemuDriver

State = specs.ContainerState
SHUTDOWN_SECONDS = 10.0
KILL_GRACE_SECONDS = 10.0
SIGNAL_SECONDS = 5.0  # for the guest to take a signal; a stalled one gets its VM's plug pulled
DEFAULT_STOP_SECONDS = 10.0


class PodRequests:
    """Requests into a container; Pod sets the state and implements the hooks."""

    paths: HyperPaths
    settings: Settings
    state: StateStore
    record: ContainerRecord
    vm: QemuDriver | None
    agent: AgentClient | None
    exited: asyncio.Event
    removed: asyncio.Event
    _lock: asyncio.Lock
    _changed: asyncio.Condition
    _exits: int
    _restart_task: asyncio.Task[None] | None
    _publish: Callable[..., None]

    @property
    def id(self) -> str:
        raise NotImplementedError

    @property
    def status(self) -> specs.ContainerState:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    @property
    def options(self) -> specs.RunOptions:
        raise NotImplementedError

    @property
    def main_stream(self) -> int:
        raise NotImplementedError

    def new_stream(self) -> int:
        raise NotImplementedError

    def _move(self, new: specs.ContainerState, **changes: Any) -> None:
        raise NotImplementedError

    async def _pull_plug(self) -> None:
        raise NotImplementedError

    async def start(self) -> bool:
        raise NotImplementedError

    def running_agent(self) -> AgentClient:
        """The agent of a running, unpaused container, for requests into it."""
        if self.exited.is_set() or self.agent is None:
            raise FailedPrecondition(f"container {self.record.name} is not running", hint="start it first")
        if self.status is State.PAUSED:
            raise FailedPrecondition(f"container {self.record.name} is paused", hint="unpause it first")
        return self.agent

    @contextlib.asynccontextmanager
    async def files_agent(self) -> AsyncIterator[AgentClient]:
        """An agent with the container's root mounted: the running VM's, or for a
        stopped container a VM booted for the purpose and powered off after
        (Docker's `cp` works on stopped containers). No start runs meanwhile."""
        if self.running:
            yield self.running_agent()
            return
        async with self._lock:
            if self.running:
                yield self.running_agent()
                return
            run = ContainerRun(self.options, self.paths, self.settings, container_id=self.id)
            vm, agent = await run.launch_for_files(await run.prepare())
            try:
                yield agent
            finally:
                with contextlib.suppress(HyperError):
                    await agent.request("shutdown", timeout=SHUTDOWN_SECONDS)  # the disk unmounted cleanly
                await vm.stop(SHUTDOWN_SECONDS)
                await vm.close()
                await agent.close()
                run.release_files(remove=False)

    async def kill(self, signum: int) -> None:
        if self.status is State.PAUSED and self.vm is not None:
            await self.unpause()  # a frozen guest cannot deliver a signal
        agent = self.running_agent()
        if signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self.record = self.state.update(self.record, manually_stopped=True)
        self._publish("kill", signal=str(signum))
        if signum != signal.SIGKILL:
            await agent.request("signal", process=self.main_stream, signal=signum, timeout=SIGNAL_SECONDS)
            return
        # Docker's kill with SIGKILL returns once the container is dead, so that
        # `docker kill X && docker rm X` works: wait for the power-off, and pull
        # the plug of a guest that does not answer.
        if await self._signal_main(signum):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exited.wait(), KILL_GRACE_SECONDS)
        if not self.exited.is_set():
            await self._pull_plug()
        await self.exited.wait()

    async def _signal_main(self, signum: int) -> bool:
        """Signal the main process; False when the guest cannot be reached (a
        stalled channel does not hold a stop up for the agent's own timeouts)."""
        try:
            await self.running_agent().request(
                "signal", process=self.main_stream, signal=signum, timeout=SIGNAL_SECONDS
            )
        except HyperError:
            return False
        return True

    def stop_signal(self) -> int:
        """The signal `stop` sends first: the container's (or its image's) StopSignal, else SIGTERM."""
        text = self.options.stop_signal
        return parse_signal(text) if text else int(signal.SIGTERM)

    def stop_timeout(self, timeout: float | None) -> float | None:
        """Seconds `stop` waits before SIGKILL: the request's, else the container's
        StopTimeout, else 10; None (Docker's -1) waits as long as it takes."""
        if timeout is None:
            timeout = self.options.stop_timeout
        if timeout is None:
            return DEFAULT_STOP_SECONDS
        return None if timeout < 0 else float(timeout)

    async def stop(self, timeout: float | None = None, signum: int | None = None) -> None:
        """The stop signal, then SIGKILL after the stop timeout, then pull the VM's plug."""
        first = self.stop_signal() if signum is None else signum
        grace = self.stop_timeout(timeout)
        self.record = self.state.update(self.record, manually_stopped=True)
        if self._restart_task is not None:
            self._restart_task.cancel()
        if self.status is State.RESTARTING:
            self._move(State.EXITED)
        if self.exited.is_set():
            return
        if self.status is State.PAUSED:
            with contextlib.suppress(HyperError):
                await self.unpause()
        await self._signal_main(first)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), grace)
        if not self.exited.is_set() and await self._signal_main(int(signal.SIGKILL)):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exited.wait(), KILL_GRACE_SECONDS)
        if not self.exited.is_set():
            await self._pull_plug()
        await self.exited.wait()
        self._publish("stop")

    async def restart(self, timeout: float | None = None, signum: int | None = None) -> None:
        await self.stop(timeout, signum)
        await self.start()
        self._publish("restart")

    async def pause(self) -> None:
        async with self._lock:
            if self.status is not State.RUNNING or self.vm is None:
                raise FailedPrecondition(f"container {self.record.name} is not running")
            if self.agent is not None:
                await self._keep_figures(self.agent)
            await self.vm.pause()
            self._move(State.PAUSED)
        self._publish("pause")

    async def _keep_figures(self, agent: AgentClient) -> None:
        """The guest's figures, kept (in the record, for a later hyperd too) for
        `stats` while the paused guest cannot answer; with them QEMU's CPU time
        at the pause, which is the container's while it is frozen (QEMU's own
        main loop still ticks, answering `stats` itself, as a cgroup freezer's
        bookkeeping is not charged to a paused Docker container)."""
        try:
            figures = await agent.request("stats", timeout=10)
        except HyperError:
            figures = {}
        figures["qemu_cpu_ns"] = list(process_cpu_ns(self.record.qemu_pid))
        self.record = self.state.update(self.record, paused_stats=figures)

    @property
    def figures_at_pause(self) -> dict[str, Any]:
        return self.record.paused_stats or {}

    async def unpause(self) -> None:
        async with self._lock:
            if self.status is not State.PAUSED or self.vm is None:
                raise FailedPrecondition(f"container {self.record.name} is not paused")
            await self.vm.resume()
            self._move(State.RUNNING)
        self._publish("unpause")

    def rename(self, name: str) -> None:
        old = self.record.name
        self.record = self.state.rename(self.record, name)
        self._publish("rename", oldName=old)

    async def write_stdin(self, data: bytes) -> None:
        await self.running_agent().write_stdin(self.main_stream, data)

    async def close_stdin(self) -> None:
        await self.running_agent().close_stdin(self.main_stream)

    async def resize(self, rows: int, cols: int, process: int | None = None) -> None:
        if rows < 1 or cols < 1:
            raise InvalidArgument(f"invalid terminal size {rows}x{cols}")
        stream = self.main_stream if process is None else process
        await self.running_agent().request("resize", process=stream, rows=rows, cols=cols)

    async def signal_process(self, stream: int, signum: int) -> None:
        """Signal a process started by `exec_process` (its stream)."""
        await self.running_agent().request("signal", process=stream, signal=signum)

    async def exec_process(self, process: specs.ProcessSpec, rows: int, cols: int) -> ProcessChannel:
        """Start `process` inside the running container; its output and status
        come on the returned channel (call `consumed` after each item)."""
        agent = self.running_agent()
        return await start_process(
            agent,
            "exec",
            container=self.id[:12],
            stream=self.new_stream(),
            process=process,
            size=(rows, cols),
        )

    async def wait(self, condition: str = "not-running") -> int:
        """Docker's wait conditions: not-running, next-exit, removed."""
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(
                f"unknown wait condition {condition!r}", hint="use not-running, next-exit or removed"
            )
        if condition == "removed":
            await self.removed.wait()
        elif condition == "next-exit" or self.running or self.status is State.RESTARTING:
            async with self._changed:
                seen = self._exits
                await self._changed.wait_for(lambda: self._exits > seen or self.removed.is_set())
        return self.record.exit_code if self.record.exit_code is not None else 0


def process_cpu_ns(pid: int | None) -> tuple[int, int]:
    """User and system CPU time of process `pid` (a VM's QEMU), in ns; 0, 0 if it is gone."""
    if pid is None:
        return 0, 0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0, 0
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * tick, int(fields[12]) * tick
