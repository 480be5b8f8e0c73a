"""Docker's hijacked connections, client side: `exec`, `attach` and `start -a`.

The Docker Engine API that hyperd serves under `/docker` streams a process's
stdio by taking over the HTTP connection: the request asks for `Upgrade:
tcp`, the answer is `101 Switching Protocols`, and from then on the socket
carries raw bytes both ways. The client half-closes its side when its stdin
ends and reads the output until the server closes. Without a TTY the output
is multiplexed: frames of an 8-byte header (stream 1 = stdout, 2 = stderr,
three zero bytes, a big-endian length) and their bytes; with one it is the
terminal's raw bytes.

httpx cannot hand over its socket, so this is a small asyncio client over
the unix socket: the request written by hand, the answer's head parsed, then
`relay` pumps the local terminal or pipes to and from the connection.
Whatever hyperd sends is bounded (the head's size, each frame's length).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from hyper.cli.client import docker_error
from hyper.errors import DataLoss, InternalError, PermissionDenied, Unavailable
from hyper.runtime.detach import DetachScanner
from hyper.runtime.stdio import Attachment, start_stdin_reader

STDIN, STDOUT, STDERR, SYSTEM_ERROR = 0, 1, 2, 3
FRAME_HEADER = struct.Struct(">BxxxI")
MAX_FRAME_BYTES = 64 << 20
MAX_HEAD_BYTES = 64 << 10
MAX_ERROR_BODY_BYTES = 1 << 20
HEAD_TIMEOUT = 300.0  # exec start answers once the process runs; attach before start answers at once
DETACH_GRACE_SECONDS = 5.0  # after the detach keys, how long hyperd gets to close the stream
_READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: str
    headers: Mapping[str, str]  # names in lower case


def parse_response_head(data: bytes) -> ResponseHead:
    """An HTTP/1.1 status line and headers, up to and including the blank line."""
    try:
        text = data.decode("latin-1")
        status_line, *lines = text.split("\r\n")
        version, status, *reason = status_line.split(" ", 2)
        if not version.startswith("HTTP/1.") or not status.isdigit() or len(status) != 3:
            raise ValueError(f"bad status line {status_line!r}")
        headers: dict[str, str] = {}
        for line in lines:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise ValueError(f"bad header line {line!r}")
            headers[name.strip().lower()] = value.strip()
    except ValueError as exc:
        raise InternalError(f"hyperd sent a malformed HTTP answer: {exc}") from exc
    return ResponseHead(int(status), reason[0] if reason else "", headers)


class FrameDemultiplexer:
    """Docker's multiplexed stream, fed in whatever pieces it arrives, as (stream, bytes).

    Stream 0 (stdin echoed back) is stdout's, as in Docker's stdcopy; stream 3
    is an error from the server, raised; anything else means the stream is not
    what it claims to be.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        while len(self._buffer) >= FRAME_HEADER.size:
            stream, length = FRAME_HEADER.unpack_from(self._buffer)
            if stream > SYSTEM_ERROR:
                raise DataLoss(f"hyperd sent a frame of unknown stream {stream}: the stream is corrupt")
            if length > MAX_FRAME_BYTES:
                raise DataLoss(f"hyperd sent a frame of {length} bytes, more than any it sends")
            end = FRAME_HEADER.size + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[FRAME_HEADER.size : end])
            del self._buffer[:end]
            if stream == SYSTEM_ERROR:
                message = payload.decode(errors="replace").strip()
                raise InternalError(f"error from hyperd in the stream: {message}")
            frames.append((STDERR if stream == STDERR else STDOUT, payload))
        return frames

    def finish(self) -> None:
        """The stream ended: a partial frame left means it was cut."""
        if self._buffer:
            raise DataLoss(f"the stream from hyperd ended inside a frame ({len(self._buffer)} bytes left)")


class HijackedConnection:
    """One upgraded connection: raw bytes to and from the process. `close` is idempotent."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, multiplexed: bool
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.multiplexed = multiplexed
        self._write_closed = False

    async def read(self) -> bytes:
        """The next bytes from hyperd; b"" once it has closed the stream."""
        try:
            return await self.reader.read(_READ_SIZE)
        except ConnectionError:
            return b""

    async def write(self, data: bytes) -> bool:
        """False when hyperd no longer reads (the process has ended)."""
        if self._write_closed:
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            self._write_closed = True
            return False
        return True

    def close_write(self) -> None:
        """Half-close: the end of stdin, while the output still comes."""
        if self._write_closed:
            return
        self._write_closed = True
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()

    async def close(self) -> None:
        self._write_closed = True
        if self.writer.is_closing():
            return
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


async def open_hijacked(
    socket_path: Path,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: object = None,
    head_timeout: float = HEAD_TIMEOUT,
) -> HijackedConnection:
    """POST `path` asking for the connection; an error answer raises its `hyper.errors` class."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=MAX_HEAD_BYTES)
    except PermissionError as exc:
        raise PermissionDenied(
            f"not allowed to connect to hyperd at {socket_path}",
            hint="run hyper as the user that runs hyperd, or as root",
        ) from exc
    except OSError as exc:
        raise Unavailable(
            f"cannot reach hyperd at {socket_path}: {exc}", hint="start it with `hyperd`"
        ) from exc
    try:
        target = path + ("?" + urlencode(query) if query else "")
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"POST {target} HTTP/1.1\r\n"
            "Host: hyperd\r\n"
            "Connection: Upgrade\r\n"
            "Upgrade: tcp\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        await writer.drain()
        answer = parse_response_head(await asyncio.wait_for(_read_head(reader), head_timeout))
        if answer.status != 101:
            if answer.status < 400:
                raise InternalError(f"hyperd answered {path} with HTTP {answer.status}, not a stream")
            error_body = await _read_error_body(reader, answer)
            raise docker_error(answer.status, error_body, answer.reason)
    except BaseException:
        writer.close()
        raise
    content_type = answer.headers.get("content-type", "")
    return HijackedConnection(reader, writer, multiplexed="multiplexed" in content_type)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise InternalError(f"hyperd's answer head is over {MAX_HEAD_BYTES} bytes") from exc
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise Unavailable("hyperd closed the connection before answering", hint="see hyperd.log") from exc
    except TimeoutError as exc:
        raise InternalError("hyperd did not answer in time") from exc


async def _read_error_body(reader: asyncio.StreamReader, answer: ResponseHead) -> bytes:
    length = answer.headers.get("content-length", "")
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        if length.isdigit():
            return await asyncio.wait_for(reader.readexactly(min(int(length), MAX_ERROR_BODY_BYTES)), 10)
        return await asyncio.wait_for(reader.read(MAX_ERROR_BODY_BYTES), 10)
    return b""


# ---- relaying the local stdio ------------------------------------------------------


def write_all(fd: int, data: bytes) -> None:
    """Write everything; a reader that went away drops the output, as a pipeline would."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BrokenPipeError:
            return
        view = view[written:]


async def _pump_output(conn: HijackedConnection, attachment: Attachment, *, tty: bool) -> None:
    demux = None if tty or not conn.multiplexed else FrameDemultiplexer()
    while data := await conn.read():
        if demux is None:
            await asyncio.to_thread(write_all, attachment.stdout_fd, data)
            continue
        for stream, payload in demux.feed(data):
            fd = attachment.stderr_fd if stream == STDERR else attachment.stdout_fd
            await asyncio.to_thread(write_all, fd, payload)
    if demux is not None:
        demux.finish()


async def _pump_input(
    conn: HijackedConnection, attachment: Attachment, scanner: DetachScanner | None, detached: asyncio.Event
) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue(16)
    start_stdin_reader(attachment.stdin_fd, queue)
    while data := await queue.get():
        # The keys go on to hyperd, which detaches on them; scanning here only
        # tells the end of a detach from the end of the process.
        if scanner is not None and scanner.feed(data)[1]:
            detached.set()
            await conn.write(data)
            return
        if not await conn.write(data):
            return
    conn.close_write()


async def relay(
    conn: HijackedConnection,
    attachment: Attachment,
    *,
    tty: bool,
    stdin: bool,
    detach_keys: bytes | None = None,
) -> bool:
    """Copy stdin to the connection and its output to stdout/stderr until hyperd
    closes it; True when that was a detach (the keys were typed). The
    connection is closed on return."""
    detached = asyncio.Event()
    # hyperd looks for the keys only on a terminal (Docker's rule): without
    # one they are data, and finding them here would end the copy early.
    scanner = DetachScanner(detach_keys) if detach_keys and tty else None
    output = asyncio.create_task(_pump_output(conn, attachment, tty=tty))
    feeder = asyncio.create_task(_pump_input(conn, attachment, scanner, detached)) if stdin else None
    try:
        detach_seen = asyncio.create_task(detached.wait())
        await asyncio.wait({output, detach_seen}, return_when=asyncio.FIRST_COMPLETED)
        if not output.done():
            # Detached: hyperd ends the stream; do not wait on it for long.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(output), DETACH_GRACE_SECONDS)
        detach_seen.cancel()
        if output.done():
            output.result()  # a corrupt stream is an error
        return detached.is_set()
    finally:
        for task in (output, feeder):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await conn.close()
