"""What every Docker API handler shares: the app's keys, errors in Docker's
shape, query parsing, and hijacked (upgraded) connections for attach and exec."""

from __future__ import annotations

import asyncio
import datetime
import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hyper.api.body import read_json_body
from hyper.api.errors import http_status
from hyper.daemon.daemon import Daemon
from hyper.daemon.pods import Pod
from hyper.errors import HyperError, InvalidArgument, NotFound
from hyper.runtime.detach import DetachScanner, parse_detach_keys
from hyper.tenants.scope import ADMIN, Scope
from hyper.tenants.service import TenantService

__all__ = ["DetachScanner", "parse_detach_keys"]  # shared with the CLI, from hyper.runtime.detach

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DAEMON = web.AppKey("docker-daemon", Daemon)
# The tenant service of an app that serves tenants (hyperd --tenant-listen), and
# the Scope its gate gives each request; the local sockets' requests have none:
# they are the admin's, and see everything.
TENANTS = web.AppKey("tenants", TenantService)
SCOPE = web.RequestKey("scope", Scope)

MIN_API_VERSION = "1.41"
API_VERSION = "1.43"
STDIN, STDOUT, STDERR = 0, 1, 2
RAW_STREAM = "application/vnd.docker.raw-stream"
READ_HIGH_WATER = 1 << 20  # bytes of a hijacked client's input held before its socket is paused
READ_LOW_WATER = 256 << 10
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"


def daemon_of(request: web.Request) -> Daemon:
    return request.app[DAEMON]


def scope_of(request: web.Request) -> Scope:
    """Whose objects the request sees: a tenant's own, or (the local sockets) all."""
    scope: Scope = request.get(SCOPE, ADMIN)
    return scope


def tenants_of(request: web.Request) -> TenantService | None:
    """The tenant service, for a request that came through the tenants' door."""
    return request.app.get(TENANTS) if SCOPE in request else None


def visible_pods(request: web.Request) -> list[Pod]:
    scope = scope_of(request)
    return [pod for pod in daemon_of(request).pods.values() if scope.sees(pod.record.owner)]


def find_container(daemon: Daemon, ref: str, scope: Scope = ADMIN) -> Pod:
    try:
        return daemon.find(ref, scope.owner)
    except NotFound:
        # Docker's words: scripts and the docker CLI's users match on them. A
        # tenant is told the same of another tenant's container.
        raise NotFound(f"No such container: {ref}") from None


def container_of(request: web.Request) -> Pod:
    """The container the request's path names (`{id}`: an ID, a prefix of one, or a name)."""
    return find_container(daemon_of(request), request.match_info["id"], scope_of(request))


def docker_error(status: int, message: str) -> web.Response:
    # Exactly application/json, no charset: the docker CLI decodes nothing else.
    body = json.dumps({"message": message}).encode()
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(exc: HyperError) -> web.Response:
    return docker_error(http_status(exc), str(exc))  # the message, and the hint in parentheses


def flag(request: web.Request, name: str, default: bool = False) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    return value.lower() in ("1", "true", "yes")


def integer(request: web.Request, name: str, default: int | None = None) -> int | None:
    value = request.query.get(name)
    if value in (None, ""):
        return default
    assert value is not None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"{name}={value!r} is not an integer") from None


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} for an empty body), at most MAX_JSON_BODY bytes."""
    body = await read_json_body(request)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return body


def filters(request: web.Request) -> dict[str, list[str]]:
    """Docker's `filters` query: {"name": ["x"]} or the old {"name": {"x": true}}."""
    text = request.query.get("filters")
    if not text:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        raise InvalidArgument("the filters parameter is not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("filters must be a JSON object")
    result: dict[str, list[str]] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            result[key] = [str(k) for k, enabled in value.items() if enabled]
        elif isinstance(value, list):
            result[key] = [str(v) for v in value]
        else:
            raise InvalidArgument(f"filter {key!r} must be a list")
    return result


def rfc3339(timestamp: float | None) -> str:
    if not timestamp:
        return "0001-01-01T00:00:00Z"
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond * 1000:09d}Z"


def parse_time(text: str | None) -> float | None:
    """Docker's `since`/`until`: Unix seconds (with fraction) or RFC 3339."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidArgument(
            f"invalid time {text!r}", hint="give Unix seconds or an RFC 3339 time"
        ) from None


def frame(stream: int, data: bytes) -> bytes:
    """One frame of Docker's multiplexed stream (non-TTY attach, exec and logs)."""
    return struct.pack(">BxxxI", stream, len(data)) + data


class _RawReader:
    """Takes over an upgraded connection's input (aiohttp's parser interface).

    What the client sends waits here until the process takes it; past
    READ_HIGH_WATER bytes the socket is no longer read, so a client writing
    faster than the container reads is held back by TCP's own flow control
    instead of growing hyperd's memory.
    """

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.disconnected = asyncio.Event()  # the connection is closed, not merely half-closed
        self.transport: asyncio.Transport | None = None
        self._buffered = 0
        self._paused = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.queue.put_nowait(bytes(data))
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        return False, b""

    def feed_eof(self) -> None:
        self.queue.put_nowait(b"")

    async def get(self) -> bytes:
        data = await self.queue.get()
        self._buffered -= len(data)
        if self._paused and self._buffered < READ_LOW_WATER and self.transport is not None:
            self._paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
        return data


class _HijackProtocol(asyncio.Protocol):
    """Reads an upgraded connection in aiohttp's place.

    The client half-closes when its stdin ends and still reads the output, so
    EOF keeps the transport open (aiohttp's protocol would close it); writing
    and the connection's end still go through aiohttp's.
    """

    def __init__(self, original: asyncio.BaseProtocol, reader: _RawReader) -> None:
        self._original = original
        self._reader = reader

    def data_received(self, data: bytes) -> None:
        self._reader.feed_data(data)

    def eof_received(self) -> bool:
        self._reader.feed_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._reader.feed_eof()
        self._reader.disconnected.set()
        self._original.connection_lost(exc)

    def pause_writing(self) -> None:
        self._original.pause_writing()

    def resume_writing(self) -> None:
        self._original.resume_writing()


class Hijacked:
    """A connection switched from HTTP to a raw byte stream, as Docker's attach and exec use."""

    def __init__(
        self, response: web.StreamResponse, reader: _RawReader, transport: asyncio.Transport | None
    ) -> None:
        self.response = response
        self._reader = reader
        self._transport = transport
        self._closed = False

    @classmethod
    async def accept(cls, request: web.Request, content_type: str) -> Hijacked:
        upgrade = request.headers.get("Upgrade", "").lower() == "tcp"
        headers = {"Content-Type": content_type}
        if upgrade:
            headers.update(Connection="Upgrade", Upgrade="tcp")
        response = web.StreamResponse(status=101 if upgrade else 200, headers=headers)
        if not upgrade:
            response.enable_chunked_encoding()
        await response.prepare(request)
        reader = _RawReader()
        protocol = request.protocol
        transport = request.transport
        if upgrade and protocol is not None and transport is not None:
            reader.transport = transport
            protocol.set_parser(reader)  # type: ignore[arg-type]  # hands over bytes already read
            transport.set_protocol(_HijackProtocol(protocol, reader))
        else:
            reader.feed_eof()
        return cls(response, reader, request.transport)

    async def read(self) -> bytes:
        """The client's next bytes; b"" once it has closed its side."""
        return await self._reader.get()

    async def gone(self) -> None:
        """Returns once the client has closed the connection (or it was lost)."""
        await self._reader.disconnected.wait()

    async def write(self, data: bytes) -> bool:
        if self._closed:
            return False
        try:
            await self.response.write(data)
        except (ConnectionError, RuntimeError):
            self._closed = True
            return False
        return True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if transport.can_write_eof():
                transport.write_eof()
            transport.close()
