"""Processes started inside running containers (`exec`), as hyperd tracks them.

Docker's two steps are kept: an exec is created (recorded, nothing runs),
then started once; its exit code stays readable until the container goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets
from collections.abc import AsyncIterator

from hyper.agent.host import AgentConnectionLost, ProcessChannel
from hyper.agent.protocol import FrameKind
from hyper.daemon.events import Event
from hyper.daemon.pods import Pod
from hyper.errors import FailedPrecondition, HyperError
from hyper.runtime import spec as specs
from hyper.runtime.run import ContainerExit

EXIT_LOST = 137  # the VM went away under the exec


class ExecState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"


class ExecSession:
    def __init__(self, pod: Pod, process: specs.ProcessSpec) -> None:
        self.id = secrets.token_hex(32)
        self.pod = pod
        self.process = process
        self.state = ExecState.CREATED
        self.exit_code: int | None = None
        self.channel: ProcessChannel | None = None
        self.done = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self.detach_keys = ""  # Docker's DetachKeys for this exec; empty means the default

    @property
    def stream(self) -> int | None:
        return None if self.channel is None else self.channel.stream

    def _publish(self, action: str) -> None:
        attributes = {"name": self.pod.record.name, "image": self.pod.record.image, "execID": self.id}
        self.pod.events.publish(
            Event("container", action, self.pod.id, attributes, owner=self.pod.record.owner)
        )

    async def start(self, rows: int = 24, cols: int = 80) -> None:
        """Start the process; raises ContainerExit (126/127) when it cannot run."""
        if self.state is not ExecState.CREATED:
            raise FailedPrecondition(f"exec {self.id[:12]} has already been started")
        self.state = ExecState.RUNNING
        try:
            self.channel = await self.pod.exec_process(self.process, rows, cols)
        except ContainerExit as exc:
            self._exit(exc.status)
            raise
        except BaseException:
            self._exit(126)
            raise
        self._publish(f"exec_start: {' '.join(self.process.args)}")

    def _exit(self, code: int) -> None:
        if self.state is not ExecState.EXITED:
            self.state, self.exit_code = ExecState.EXITED, code
            self.done.set()
            self._publish("exec_die")

    async def output(self) -> AsyncIterator[tuple[FrameKind, bytes]]:
        """The process's output until it ends; then its exit code is set."""
        channel = self.channel
        assert channel is not None
        while (item := await channel.output.get()) is not None:
            kind, data, _ = item
            self.pod.consumed()
            yield kind, data
        try:
            self._exit(await channel.exit_status)
        except AgentConnectionLost:
            self._exit(EXIT_LOST)

    def drain_in_background(self) -> None:
        self._drainer = asyncio.create_task(self.drain())

    async def drain(self) -> None:
        """For a detached exec: nobody reads its output, but it must not block the guest."""
        async for _ in self.output():
            pass

    async def write_stdin(self, data: bytes) -> None:
        if self.channel is not None and self.state is ExecState.RUNNING:
            await self.pod.running_agent().write_stdin(self.channel.stream, data)

    async def close_stdin(self) -> None:
        if self.channel is not None and self.state is ExecState.RUNNING:
            with contextlib.suppress(HyperError):
                await self.pod.running_agent().close_stdin(self.channel.stream)

    async def resize(self, rows: int, cols: int) -> None:
        if self.channel is not None and self.state is ExecState.RUNNING:
            await self.pod.resize(rows, cols, self.channel.stream)
