"""Kubernetes' remotecommand protocol over WebSocket and SPDY/3.1, for the CRI's Exec and Attach.

Subprotocols `v5.channel.k8s.io` and `v4.channel.k8s.io`: every binary
message starts with its channel, 0 stdin, 1 stdout, 2 stderr, 3 the status
(a metav1.Status as JSON once the command ends: Success, or Failure with
reason NonZeroExitCode and the exit code as an ExitCode cause), 4 a terminal
size ({"Width", "Height"}); v5 adds 255, a client closing one of its
channels (stdin: the process reads EOF). As the kubelet's server does, the
first message is an empty one on the lowest channel the server writes, so
that the client knows the streams are up.

Over SPDY/3.1 (hyper.cri.spdystreams; versions v4, v3 and v2.channel.k8s.io
in `X-Stream-Protocol-Version`, as the kubelet negotiates them) the client
opens one stream per channel, named by its `streamtype` header (error,
stdin, stdout, stderr, resize: a stream of JSON sizes, v3 on), and the
server waits for those the request has; stdin's FIN closes stdin. v4's
error stream carries the metav1.Status; v2 and v3 carry only a failure's
message, as the kubelet's.

An exec is hyperd's (hyper.daemon.execs) with the container's environment,
working directory and user; an attach joins the container's main process:
its input, its window size, and its output from now on (hyperd's log of it),
until it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from aiohttp import WSMsgType, web
from cri_api.v1 import api_pb2
from google.protobuf.message import Message

from hyper.agent.protocol import FrameKind
from hyper.cri import spdystreams, translate
from hyper.daemon.execs import ExecSession
from hyper.daemon.pods import Pod
from hyper.errors import HyperError
from hyper.runtime.run import ContainerExit

if TYPE_CHECKING:
    from hyper.cri.streaming import StreamingServer

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V2 = "v2.channel.k8s.io"
PROTOCOLS = (V5, V4)  # over WebSocket
SPDY_PROTOCOLS = (V4, V3, V2)  # over SPDY/3.1, as the kubelet negotiates them
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
FOLLOW_SECONDS = 0.5  # a bound on each wait for the attached container's output
MAX_MESSAGE = 4 * 1024 * 1024
MAX_RESIZE = 4096  # a terminal size not yet whole, at most
STREAM_TYPES = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR, "error": ERROR, "resize": RESIZE}


def status(exit_code: int, command: list[str] | None = None) -> bytes:
    """The error channel's last word: a metav1.Status, as the kubelet writes it."""
    if exit_code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    what = f"command {command}" if command else "the process"
    document = {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {what} exited with code {exit_code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }
    return json.dumps(document).encode()


def internal_error(message: str) -> bytes:
    document = {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }
    return json.dumps(document).encode()


def terminal_size(payload: bytes) -> tuple[int, int] | None:
    """A resize message's (rows, columns); None when it is not one."""
    try:
        size = json.loads(payload)
        rows, cols = int(size["Height"]), int(size["Width"])
    except (ValueError, KeyError, TypeError):
        return None
    return (rows, cols) if rows > 0 and cols > 0 else None


class WebSocketTransport:
    """The channels of one WebSocket: each message's first byte is its channel."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.response: web.StreamResponse = ws
        self.closes = ws.ws_protocol == V5  # the client can close stdin alone

    async def send(self, channel: int, data: bytes) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError):
            await self.ws.send_bytes(bytes([channel]) + data)

    async def finish(self, document: bytes) -> None:
        await self.send(ERROR, document)
        with contextlib.suppress(ConnectionError):
            await self.ws.close()

    async def messages(self) -> AsyncIterator[tuple[int, bytes]]:
        """(channel, payload) of what the client sends, until it closes the connection."""
        async for message in self.ws:
            if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                continue
            data = message.data if isinstance(message.data, bytes) else message.data.encode()
            if data:
                yield data[0], data[1:]


class Transport(Protocol):
    closes: bool
    response: web.StreamResponse

    async def send(self, channel: int, data: bytes) -> None: ...

    async def finish(self, document: bytes) -> None: ...

    def messages(self) -> AsyncIterator[tuple[int, bytes]]: ...


class Streams:
    """One remotecommand connection: which streams are open, and writing to them."""

    def __init__(self, transport: Transport, *, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.transport = transport
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    async def send(self, channel: int, data: bytes) -> None:
        await self.transport.send(channel, data)

    async def open(self) -> None:
        """WebSocket: an empty message on the first channel, so that the client knows the
        streams are up (SPDY's replies to the client's streams say so)."""
        if isinstance(self.transport, WebSocketTransport):
            await self.send(STDOUT if self.stdout else STDERR if self.stderr else ERROR, b"")

    async def output(self, kind: str, data: bytes) -> None:
        if kind == "stdout" and self.stdout:
            await self.send(STDOUT, data)
        elif kind == "stderr" and self.stderr:
            await self.send(STDERR, data)

    async def finish(self, document: bytes) -> None:
        await self.transport.finish(document)


class SpdyTransport:
    """The streams of one SPDY session, each of a type (`streamtype`: stdin, stdout, ...)."""

    closes = True  # the client's FIN on its stdin stream

    def __init__(
        self, session: spdystreams.Session, streams: dict[str, spdystreams.Stream], version: str
    ) -> None:
        self.session, self.version, self.response = session, version, session.response
        self.streams = {
            STREAM_TYPES[kind]: stream for kind, stream in streams.items() if kind in STREAM_TYPES
        }

    async def send(self, channel: int, data: bytes) -> None:
        stream = self.streams.get(channel)
        if stream is not None and data:
            await stream.write(data)

    async def finish(self, document: bytes) -> None:
        """The status on the error stream (v4: the metav1.Status; before: its message on
        failure only, as the kubelet writes them), every stream's end, and the session's."""
        if self.version != V4:
            status = json.loads(document)
            document = b"" if status.get("status") == "Success" else str(status.get("message", "")).encode()
        await self.send(ERROR, document)
        for stream in self.streams.values():
            await stream.finish()
        await self.session.close()

    async def messages(self) -> AsyncIterator[tuple[int, bytes]]:
        """stdin's bytes, its end (as v5's close of channel 0), each terminal size; to the session's end."""
        inbox: asyncio.Queue[tuple[int, bytes | None]] = asyncio.Queue()
        for channel in (STDIN, RESIZE):
            if channel in self.streams:
                self.streams[channel].merge_into(inbox, channel)

        async def end() -> None:
            await self.session.ended.wait()
            inbox.put_nowait((-1, None))

        ending = asyncio.create_task(end())
        sizes, decoder = "", json.JSONDecoder()
        try:
            while (item := await inbox.get())[0] >= 0:
                channel, data = item
                if data is None:
                    if channel == STDIN:
                        yield CLOSE, bytes([STDIN])
                    continue
                self.streams[channel].taken(len(data))
                if channel == STDIN:
                    yield STDIN, data
                    continue
                # A stream of JSON documents, cut anywhere by frames.
                sizes = (sizes + data.decode(errors="replace")).lstrip()
                while sizes:
                    try:
                        size, end_at = decoder.raw_decode(sizes)
                    except ValueError:
                        break
                    yield RESIZE, json.dumps(size).encode()
                    sizes = sizes[end_at:].lstrip()
                sizes = sizes[-MAX_RESIZE:]
        finally:
            ending.cancel()


async def spdy_transport(
    request: web.Request, *, tty: bool, stdin: bool, stdout: bool, stderr: bool
) -> SpdyTransport | web.StreamResponse:
    """The SPDY session's streams once the client opened those the request has (the kubelet's wait)."""
    version = spdystreams.negotiate(request, SPDY_PROTOCOLS)
    if isinstance(version, web.Response):
        return version
    session = await spdystreams.upgrade(request, version)
    wanted = {"error"} | {
        kind for kind, on in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)) if on
    }
    if tty and version != V2:
        wanted.add("resize")
    streams = await spdystreams.expect_streams(session, wanted)
    if not streams:
        await session.close()
        return session.response
    return SpdyTransport(session, streams, version)


async def _accept(
    request: web.Request, pending: api_pb2.ExecRequest | api_pb2.AttachRequest
) -> Streams | web.StreamResponse:
    """The client's connection, WebSocket or SPDY, as the request's streams."""
    tty = bool(pending.tty)
    flags = {"stdin": pending.stdin, "stdout": pending.stdout, "stderr": pending.stderr and not tty}
    if spdystreams.is_spdy(request):
        transport = await spdy_transport(request, tty=tty, **flags)
        return transport if isinstance(transport, web.StreamResponse) else Streams(transport, **flags)
    ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=MAX_MESSAGE)
    if ws.can_prepare(request).protocol not in PROTOCOLS:
        return web.Response(
            status=400,
            text=f"remotecommand needs a WebSocket subprotocol of {', '.join(PROTOCOLS)}, "
            f"or SPDY/3.1 with {spdystreams.HEADER_PROTOCOL} one of {', '.join(SPDY_PROTOCOLS)}\n",
        )
    await ws.prepare(request)
    return Streams(WebSocketTransport(ws), **flags)


class Input:
    """What the client sends: stdin, terminal sizes and (v5) closes, to callbacks."""

    def __init__(
        self,
        streams: Streams,
        write: Callable[[bytes], Awaitable[None]],
        close: Callable[[], Awaitable[None]],
        resize: Callable[[int, int], Awaitable[None]],
    ) -> None:
        self.streams, self.write, self.close, self.resize = streams, write, close, resize
        self.stdin_closed = False

    async def _close_stdin(self) -> None:
        if self.streams.stdin and not self.stdin_closed:
            self.stdin_closed = True
            with contextlib.suppress(HyperError):
                await self.close()

    async def run(self) -> None:
        """Until the client closes the connection (which closes stdin too)."""
        async for channel, payload in self.streams.transport.messages():
            if channel == STDIN and self.streams.stdin and not self.stdin_closed and payload:
                with contextlib.suppress(HyperError):
                    await self.write(payload)
            elif channel == RESIZE and (size := terminal_size(payload)) is not None:
                with contextlib.suppress(HyperError):
                    await self.resize(*size)
            elif channel == CLOSE and self.streams.transport.closes and payload[:1] == bytes([STDIN]):
                await self._close_stdin()
        if self.streams.stdin:
            await self._close_stdin()


async def serve_exec(server: StreamingServer, request: web.Request, pending: Message) -> web.StreamResponse:
    assert isinstance(pending, api_pb2.ExecRequest)
    streams = await _accept(request, pending)
    if isinstance(streams, web.StreamResponse):
        return streams
    runtime = server.runtime
    try:
        pod = runtime._pod(runtime._container(pending.container_id))
        main = pod.record.process or {}
        process = translate.exec_process(main, list(pending.cmd), tty=pending.tty, stdin=pending.stdin)
        session = runtime.daemon.exec_create(pod, process)
    except HyperError as exc:
        await streams.finish(internal_error(str(exc)))
        return streams.transport.response
    try:
        await _run_exec(streams, session, list(pending.cmd))
    finally:
        runtime.daemon.execs.pop(session.id, None)
    return streams.transport.response


async def _run_exec(streams: Streams, session: ExecSession, command: list[str]) -> None:
    await streams.open()
    try:
        await session.start()
    except ContainerExit as exc:  # the command cannot run (126) or is not there (127)
        await streams.output("stderr", exc.message.encode() + b"\n")
        await streams.finish(status(exc.status, command))
        return
    except HyperError as exc:
        await streams.finish(internal_error(str(exc)))
        return
    client = Input(streams, session.write_stdin, session.close_stdin, session.resize)
    reading = asyncio.create_task(client.run())
    try:
        async for kind, data in session.output():
            await streams.output("stdout" if kind == FrameKind.STDOUT else "stderr", data)
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
    code = session.exit_code if session.exit_code is not None else 0
    await streams.finish(status(code, command))


async def serve_attach(server: StreamingServer, request: web.Request, pending: Message) -> web.StreamResponse:
    assert isinstance(pending, api_pb2.AttachRequest)
    streams = await _accept(request, pending)
    if isinstance(streams, web.StreamResponse):
        return streams
    runtime = server.runtime
    try:
        pod = runtime._pod(runtime._container(pending.container_id))
    except HyperError as exc:
        await streams.finish(internal_error(str(exc)))
        return streams.transport.response
    await streams.open()

    async def close() -> None:
        if pod.record.stdin_once:  # as containerd: the attached client's EOF is the container's
            await pod.close_stdin()

    client = Input(streams, pod.write_stdin, close, pod.resize)
    reading = asyncio.create_task(client.run())
    try:
        async for kind, data in _follow(pod, reading):
            await streams.output(kind, data)
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
    await streams.finish(status(0))
    return streams.transport.response


async def _follow(pod: Pod, client: asyncio.Task[None]) -> AsyncIterator[tuple[str, bytes]]:
    """The container's output from now on, until its run ends or the client goes."""
    log = pod.log
    if log is None:
        return
    position = log.size()
    exits = pod.exit_count
    while True:
        records, position = log.read_from(position)
        for record in records:
            yield record.stream, record.data
        if pod.exit_count > exits or pod.removed.is_set() or not pod.running or client.done():
            records, position = log.read_from(position)
            for record in records:
                yield record.stream, record.data
            return
        await log.wait_for_more(FOLLOW_SECONDS)
