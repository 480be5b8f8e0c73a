"""A misbehaving guest for hyperd's copy endpoints, and a hyperd that talks to it.

The honest agent cannot be made to send a crafted tar, and a compromised
one is what the host must survive; so `FakeArchiveGuest` stands in for it on
the guest's end of a socketpair. It speaks the real protocol
(hyper.agent.protocol: the hello and its SYNC frame, responses, stdout
frames, `exited`), answers `archive_stat` with a stat and `archive_get` with
whatever tar the test gives it, and can stop answering part way, as a guest
whose QEMU was killed does.

`FakeGuestHyperd` is hyperd's real API apps (its own, with the Docker API
under /docker, and the Docker API on a socket of its own, as `hyperd
--docker-socket` serves them) over a real Daemon, holding one running
container whose agent is the fake guest: the real docker CLI and the hyper
CLI's client can be pointed at it. It runs on the event loop of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from hyper.agent.host import AgentClient
from hyper.agent.protocol import (
    MAX_DATA_CHUNK,
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameKind,
    decode_message,
    encode_frame,
    encode_message,
    sync_frame,
)
from hyper.api.docker.server import make_docker_app
from hyper.api.server import make_app
from hyper.daemon.daemon import Daemon
from hyper.daemon.pods import Pod
from hyper.daemon.state import ContainerRecord
from hyper.paths import HyperPaths
from hyper.runtime.settings import Settings

FILE_STAT = {"name": "ignored", "size": 0, "mode": 0o100644, "mtime": 1_600_000_000.0, "link_target": ""}
DIR_STAT = {**FILE_STAT, "mode": 0o040755}


class FakeArchiveGuest:
    """The guest's end of the agent channel, answering copies with `tar`.

    `status` is the exit status the copy reports; `vanish_after` closes the
    channel once that many bytes of the tar were sent (a killed VM); `stat`
    is the archive_stat answer. `requests` keeps every request's type.
    """

    def __init__(
        self,
        tar: bytes,
        *,
        stat: dict[str, Any] | None = None,
        status: int = 0,
        vanish_after: int | None = None,
    ) -> None:
        self.tar = tar
        self.stat = DIR_STAT if stat is None else stat
        self.status = status
        self.vanish_after = vanish_after
        self.requests: list[str] = []
        self.killed = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        decoder = FrameDecoder()
        try:
            while data := await reader.read(1 << 16):
                for frame in decoder.feed(data):
                    if frame.kind is FrameKind.CONTROL:
                        await self._answer(decode_message(frame.payload))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for task in self._tasks:
                task.cancel()
            writer.close()

    async def _send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def _reply(self, request: dict[str, Any], **fields: Any) -> None:
        await self._send(encode_message({"type": "response", "id": request["id"], **fields}))

    async def _answer(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        self.requests.append(kind)
        if kind == "ack":
            return
        if kind == "hello":
            await self._send(sync_frame(bytes.fromhex(message["nonce"])))
            await self._reply(message, ok=True, version=PROTOCOL_VERSION, resume_from=0)
        elif kind == "archive_stat":
            await self._reply(message, ok=True, **self.stat)
        elif kind == "archive_get":
            await self._reply(message, ok=True)
            task = asyncio.create_task(self._send_archive(message["process"]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == "signal":
            self.killed.set()
            await self._reply(message, ok=True)
        else:
            await self._reply(message, ok=False, error=f"the fake guest does not do {kind}")

    async def _send_archive(self, stream: int) -> None:
        sent = 0
        for start in range(0, len(self.tar), MAX_DATA_CHUNK):
            if self.killed.is_set():
                break
            chunk = self.tar[start : start + MAX_DATA_CHUNK]
            if self.vanish_after is not None and sent + len(chunk) > self.vanish_after:
                await self._send(encode_frame(FrameKind.STDOUT, stream, chunk[: self.vanish_after - sent]))
                assert self._writer is not None
                self._writer.close()  # the VM is gone: no exit, no more frames
                return
            await self._send(encode_frame(FrameKind.STDOUT, stream, chunk))
            sent += len(chunk)
        status = 137 if self.killed.is_set() else self.status
        await self._send(encode_message({"type": "exited", "process": stream, "status": status}))


async def connect_fake_guest(guest: FakeArchiveGuest) -> tuple[AgentClient, asyncio.Task[None]]:
    """An AgentClient whose guest is `guest`, over a socketpair, after the hello."""
    host_sock, guest_sock = socket.socketpair()
    host_reader, host_writer = await asyncio.open_unix_connection(sock=host_sock)
    guest_reader, guest_writer = await asyncio.open_unix_connection(sock=guest_sock)
    serving = asyncio.create_task(guest.serve(guest_reader, guest_writer))
    client = AgentClient(host_reader, host_writer)
    await client.hello(10)
    return client, serving


class FakeGuestHyperd:
    """hyperd's API over a real Daemon with one running container, `name`,
    whose agent is a FakeArchiveGuest. An async context manager."""

    def __init__(self, root: Path, guest: FakeArchiveGuest, *, name: str = "hostile") -> None:
        self.root = root
        self.guest = guest
        self.name = name
        self.socket = root / "hyperd.sock"
        self.docker_socket = root / "docker.sock"
        self.paths = HyperPaths(state=root / "state", cache=root / "cache", runtime=root / "run")
        self._runners: list[web.AppRunner] = []
        self._agent: AgentClient | None = None
        self._serving: asyncio.Task[None] | None = None
        self.daemon: Daemon | None = None

    async def __aenter__(self) -> FakeGuestHyperd:
        daemon = Daemon(self.paths, Settings())
        self.daemon = daemon
        record = ContainerRecord(
            id=secrets.token_hex(32),
            name=self.name,
            image="fake-guest",
            image_id="sha256:" + "0" * 64,
            command=["sh"],
            created=time.time(),
            state="running",
            options={},
            started_at=time.time(),
        )
        daemon.state.insert(record)
        pod = Pod(self.paths, daemon.settings, daemon.state, record, daemon.events)
        self._agent, self._serving = await connect_fake_guest(self.guest)
        pod.agent = self._agent  # a running container's agent: the fake guest's end
        pod.exited.clear()
        daemon.pods[record.id] = pod
        app = make_app(daemon)
        app.add_subapp("/docker", make_docker_app(daemon))
        for served, path in ((app, self.socket), (make_docker_app(daemon), self.docker_socket)):
            runner = web.AppRunner(served)
            await runner.setup()
            await web.UnixSite(runner, str(path)).start()
            self._runners.append(runner)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for runner in self._runners:
            await runner.cleanup()
        if self._agent is not None:
            await self._agent.close()
        if self._serving is not None:
            self._serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
        if self.daemon is not None:
            self.daemon.state.close()
