"""Kubernetes' port-forward protocol over WebSocket, for the CRI's PortForward.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from cri_api.v1 import api_pb2
from google.protobuf.message import Message

from hyper.agent.host import AgentClient, ProcessChannel
from hyper.agent.protocol import FrameKind
from hyper.daemon.pods import Pod
from hyper.errors import FailedPrecondition, HyperError
from hyper.runtime import spec as specs

if TYPE_CHECKING:
    from hyper.cri.streaming import StreamingServer

PROTOCOLS = ("portforward.k8s.io", "v4.channel.k8s.io")
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

    async def pump(self, ws: web.WebSocketResponse, sandbox: str) -> None:
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
                with contextlib.suppress(ConnectionError):
                    await ws.send_bytes(bytes([self.data_channel]) + data)
            else:
                self.errors += data[: max(0, 4096 - len(self.errors))]
        try:
            code = await self.channel.exit_status
        except HyperError as exc:
            code, self.errors[:] = 1, str(exc).encode()
        if code != 0:
            reason = self.errors.decode(errors="replace").strip() or f"exit status {code}"
            await self.error(ws, f"error forwarding port {self.port} to pod {sandbox}: {reason}")

    async def error(self, ws: web.WebSocketResponse, message: str) -> None:
        with contextlib.suppress(ConnectionError):
            await ws.send_bytes(bytes([self.data_channel + 1]) + message.encode())

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
            await forward.error(ws, f"error forwarding port {forward.port} to pod {sandbox}: {exc}")
            if not forward.channel.exit_status.done():
                forward.channel.exit_status.set_result(1)
            continue
        pumps.append(asyncio.create_task(forward.pump(ws, sandbox)))
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
