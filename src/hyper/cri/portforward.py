"""Kubernetes' port-forward protocol over WebSocket and SPDY/3.1, for the CRI's PortForward.

The ports are the query's (`?port=8080&port=9090`, as the kubelet reads
them; without any, the PortForward request's). Port i has two channels, data
2i and error 2i+1; the server's first message on each is the port, two bytes
little-endian. What the client sends on a data channel goes to a TCP
connection to that port inside the pod's VM, and what comes back returns on
it. The connection is made by the guest agent (`port_forward`: a relay on
the VM's loopback, where the pod's containers listen, since they share the
VM's network), so it works for a VM where a runtime that enters a network
namespace on the host cannot. A refused connection is a message on the
error channel. The WebSocket closes when every port's connection has ended;
the client closing it half-closes the connections, which then end.

Over SPDY/3.1 (`portforward.k8s.io`, the kubelet's) the ports are not in the
URL: the client opens, per connection it wants, an error and a data stream
with the same `requestID` header and the `port`; each pair is one connection
inside the VM, the data stream its bytes both ways (the client's FIN
half-closes it), the error stream its failure as text. The session lasts
until the client ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import WSMsgType, web
from cri_api.v1 import api_pb2
from google.protobuf.message import Message

from hyper.agent.host import AgentClient, ProcessChannel
from hyper.agent.protocol import FrameKind
from hyper.cri import spdystreams
from hyper.daemon.pods import Pod
from hyper.errors import FailedPrecondition, HyperError
from hyper.runtime import spec as specs

if TYPE_CHECKING:
    from hyper.cri.streaming import StreamingServer

PROTOCOLS = ("portforward.k8s.io", "v4.channel.k8s.io")
SPDY_PROTOCOL = "portforward.k8s.io"
MAX_MESSAGE = 4 * 1024 * 1024
CLOSE_SECONDS = 10.0  # after the client left: how long a connection may take to end before it is cut


def query_ports(request: web.Request, fallback: list[int]) -> list[int]:
    """The ports to forward; ValueError with the reason when one is not a port."""
    texts = request.query.getall("port", [])
    ports = [int(t) if t.isdigit() else 0 for t in texts] if texts else fallback
    if not ports:
        raise ValueError('query parameter "port" is required')
    for port in ports:
        if not 0 < port < 65536:
            raise ValueError(f"invalid port in {texts or ports}")
    return ports


class Sink(Protocol):
    """Where a forwarded connection's bytes and errors go to the client."""

    async def data(self, payload: bytes) -> None: ...

    async def error(self, message: str) -> None: ...


class WebSocketSink:
    """Port i's channels of a WebSocket: data 2i, error 2i+1."""

    def __init__(self, ws: web.WebSocketResponse, index: int) -> None:
        self.ws, self.channel = ws, 2 * index

    async def data(self, payload: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            await self.ws.send_bytes(bytes([self.channel]) + payload)

    async def error(self, message: str) -> None:
        with contextlib.suppress(ConnectionError):
            await self.ws.send_bytes(bytes([self.channel + 1]) + message.encode())


class Forward:
    """One port's connection inside the VM, through the agent."""

    def __init__(self, index: int, port: int, pod: Pod, agent: AgentClient) -> None:
        self.index, self.port, self.pod, self.agent = index, port, pod, agent
        self.stream = pod.new_stream()
        self.channel: ProcessChannel = agent.open_process(self.stream)
        self.errors = bytearray()

    @property
    def data_channel(self) -> int:
        return 2 * self.index

    async def start(self) -> None:
        await self.agent.request("port_forward", process=self.stream, port=self.port)

    async def pump(self, sink: Sink, sandbox: str) -> None:
        """The connection's bytes to the client, until it ends; then any error."""
        while True:
            if self.channel.output.empty() and self.channel.exit_status.done():
                break
            item = await self.channel.output.get()
            if item is None:
                break
            kind, data, _ = item
            self.pod.consumed()
            if kind is FrameKind.STDOUT:
                await sink.data(data)
            else:
                self.errors += data[: max(0, 4096 - len(self.errors))]
        try:
            code = await self.channel.exit_status
        except HyperError as exc:
            code, self.errors[:] = 1, str(exc).encode()
        if code != 0:
            reason = self.errors.decode(errors="replace").strip() or f"exit status {code}"
            await sink.error(f"error forwarding port {self.port} to pod {sandbox}: {reason}")

    async def write(self, data: bytes) -> None:
        if not self.channel.exit_status.done():
            with contextlib.suppress(HyperError):
                await self.agent.write_stdin(self.stream, data)

    async def close(self) -> None:
        if not self.channel.exit_status.done():
            with contextlib.suppress(HyperError):
                await self.agent.close_stdin(self.stream)

    async def kill(self) -> None:
        if not self.channel.exit_status.done():
            with contextlib.suppress(HyperError):
                await self.agent.request("signal", timeout=5, process=self.stream, signal=9)


def _running_member(server: StreamingServer, sandbox_id: str) -> Pod:
    """A running container of the sandbox: the way to its VM's agent."""
    runtime = server.runtime
    sandbox = runtime._sandbox(sandbox_id)
    for record in runtime._in(sandbox):
        pod = runtime.daemon.pods.get(record.id)
        if pod is not None and pod.status is specs.ContainerState.RUNNING and pod.agent is not None:
            return pod
    raise FailedPrecondition(
        f"pod sandbox {sandbox.id[:12]} has no running container, so no VM to forward to"
    )


async def serve_port_forward(
    server: StreamingServer, request: web.Request, pending: Message
) -> web.StreamResponse:
    assert isinstance(pending, api_pb2.PortForwardRequest)
    if spdystreams.is_spdy(request):
        return await serve_spdy(server, request, pending)
    try:
        ports = query_ports(request, list(pending.port))
    except ValueError as exc:
        return web.Response(status=400, text=f"{exc}\n")
    ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    forwards: list[Forward] = []
    try:
        pod = _running_member(server, pending.pod_sandbox_id)
        agent = pod.running_agent()
        forwards = [Forward(index, port, pod, agent) for index, port in enumerate(ports)]
    except HyperError as exc:
        failure = str(exc)
    else:
        failure = ""
    for index, port in enumerate(ports):
        prefix = struct.pack("<H", port)
        await ws.send_bytes(bytes([2 * index]) + prefix)
        await ws.send_bytes(bytes([2 * index + 1]) + prefix)
    if failure:
        for index, port in enumerate(ports):
            error = f"error forwarding port {port} to pod {pending.pod_sandbox_id}: {failure}"
            await ws.send_bytes(bytes([2 * index + 1]) + error.encode())
        await ws.close()
        return ws
    await _forward(ws, forwards, pending.pod_sandbox_id)
    return ws


async def _forward(ws: web.WebSocketResponse, forwards: list[Forward], sandbox: str) -> None:
    pumps = []
    for forward in forwards:
        try:
            await forward.start()
        except HyperError as exc:
            await WebSocketSink(ws, forward.index).error(
                f"error forwarding port {forward.port} to pod {sandbox}: {exc}"
            )
            if not forward.channel.exit_status.done():
                forward.channel.exit_status.set_result(1)
            continue
        pumps.append(asyncio.create_task(forward.pump(WebSocketSink(ws, forward.index), sandbox)))
    by_channel = {f.data_channel: f for f in forwards}
    reading = asyncio.create_task(_client(ws, by_channel))
    try:
        if pumps:
            done = asyncio.gather(*pumps)
            waiters: set[asyncio.Future[Any]] = {done, reading}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():  # the client left: the connections end, or are cut
                try:
                    await asyncio.wait_for(asyncio.shield(done), CLOSE_SECONDS)
                except TimeoutError:
                    for forward in forwards:
                        await forward.kill()
                    await done
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        with contextlib.suppress(ConnectionError):
            await ws.close()


async def _client(ws: web.WebSocketResponse, by_channel: dict[int, Forward]) -> None:
    """The client's bytes to their connections; its leaving half-closes them all."""
    try:
        async for message in ws:
            if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                continue
            data = message.data if isinstance(message.data, bytes) else message.data.encode()
            forward = by_channel.get(data[0]) if data else None
            if forward is not None and len(data) > 1:
                await forward.write(data[1:])
    finally:
        for forward in by_channel.values():
            await forward.close()


# -- over SPDY/3.1 --------------------------------------------------------------------
class SpdySink:
    """A forwarded connection's pair of SPDY streams."""

    def __init__(self, data_stream: spdystreams.Stream, error_stream: spdystreams.Stream) -> None:
        self.data_stream, self.error_stream = data_stream, error_stream

    async def data(self, payload: bytes) -> None:
        await self.data_stream.write(payload)

    async def error(self, message: str) -> None:
        await self.error_stream.write(message.encode())

    async def finish(self) -> None:
        await self.data_stream.finish()
        await self.error_stream.finish()


def _request_id(stream: spdystreams.Stream) -> str:
    """Which pair a stream is of: its requestID, or (older clients) its error stream's ID."""
    given = stream.header("requestid")
    if given:
        return given
    return str(stream.id - 2 if stream.header("streamtype") == "data" else stream.id)


async def serve_spdy(server: StreamingServer, request: web.Request, pending: Message) -> web.StreamResponse:
    """The kubelet's SPDY port-forward: for each connection the client wants, a data and
    an error stream with the same `requestID` and the `port`; a new connection inside the
    VM per pair, as long as the session lasts."""
    assert isinstance(pending, api_pb2.PortForwardRequest)
    version = spdystreams.negotiate(request, (SPDY_PROTOCOL,))
    if isinstance(version, web.Response):
        return version
    try:
        pod: Pod | None = _running_member(server, pending.pod_sandbox_id)
        assert pod is not None
        agent: AgentClient | None = pod.running_agent()
        failure = ""
    except HyperError as exc:
        pod, agent, failure = None, None, str(exc)
    session = await spdystreams.upgrade(request, version)
    pairs: dict[str, dict[str, spdystreams.Stream]] = {}
    forwards: dict[asyncio.Task[None], list[Forward]] = {}
    try:
        while (stream := await session.opened.get()) is not None:
            pair = pairs.setdefault(_request_id(stream), {})
            pair[stream.header("streamtype")] = stream
            if "data" in pair and "error" in pair:
                del pairs[_request_id(stream)]
                sink = SpdySink(pair["data"], pair["error"])
                held: list[Forward] = []
                task = asyncio.create_task(
                    _forward_pair(
                        sink,
                        stream.header("port"),
                        pod=pod,
                        agent=agent,
                        failure=failure,
                        sandbox=pending.pod_sandbox_id,
                        held=held,
                    )
                )
                forwards[task] = held
    finally:
        await _end_forwards(forwards)
        await session.close()
    return session.response


async def _forward_pair(
    sink: SpdySink,
    port_text: str,
    *,
    pod: Pod | None,
    agent: AgentClient | None,
    failure: str,
    sandbox: str,
    held: list[Forward],
) -> None:
    port = int(port_text) if port_text.isdigit() else 0
    try:
        if not 0 < port < 65536:
            await sink.error(f"invalid port {port_text!r}: give the port header a number from 1 to 65535")
            return
        if pod is None or agent is None:
            await sink.error(f"error forwarding port {port} to pod {sandbox}: {failure}")
            return
        forward = Forward(0, port, pod, agent)
        held.append(forward)
        try:
            await forward.start()
        except HyperError as exc:
            if not forward.channel.exit_status.done():
                forward.channel.exit_status.set_result(1)
            await sink.error(f"error forwarding port {port} to pod {sandbox}: {exc}")
            return

        async def client() -> None:
            while (data := await sink.data_stream.read()) is not None:
                await forward.write(data)
            await forward.close()

        reading = asyncio.create_task(client())
        try:
            await forward.pump(sink, sandbox)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    finally:
        await sink.finish()


async def _end_forwards(forwards: dict[asyncio.Task[None], list[Forward]]) -> None:
    """The session ended: the connections were half-closed; they end, or are cut."""
    if not forwards:
        return
    _, late = await asyncio.wait(forwards, timeout=CLOSE_SECONDS)
    for task in late:
        for forward in forwards[task]:
            await forward.kill()
    if late:
        await asyncio.wait(late)
