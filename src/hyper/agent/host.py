"""The host's side of the agent channel.

Everything that arrives from the guest is treated as hostile: frames are
bounded by the decoder, messages are type-checked, every wait has a timeout,
and the first malformed frame closes the channel and fails whatever was
waiting on it with AgentConnectionLost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyper.agent.protocol import (
    HEADER,
    MAX_DATA_CHUNK,
    PROTOCOL_VERSION,
    STDIN_WINDOW,
    FrameDecoder,
    FrameKind,
    ProtocolError,
    decode_message,
    encode_frame,
    encode_message,
    require,
    sync_frame,
)
from hyper.errors import DeadlineExceeded, FailedPrecondition, Unavailable

OUTPUT_QUEUE_FRAMES = 256
# The agent keeps what it sent until acknowledged; ack often enough that its
# buffer (8 MiB) never fills while the host keeps up.
ACK_EVERY = 256 * 1024
# Bytes of an old connection that may precede this one's SYNC frame.
MAX_BYTES_BEFORE_SYNC = 16 << 20


class AgentConnectionLost(Unavailable):
    """The channel to the guest closed, or the guest broke the protocol."""


class AgentRequestError(FailedPrecondition):
    """The agent refused or failed a request; `stage` and `errno` say where and why."""

    def __init__(self, message: str, *, stage: str | None, errno: int | None) -> None:
        super().__init__(message)
        self.stage = stage
        self.errno = errno


@dataclass
class ProcessChannel:
    """Output and exit status of one process in the guest."""

    stream: int
    # (kind, data, offset): `offset` is where the guest's stream stands after
    # this frame (None before the hello is answered), for hosts that record it.
    output: asyncio.Queue[tuple[FrameKind, bytes, int | None] | None] = field(
        default_factory=lambda: asyncio.Queue(OUTPUT_QUEUE_FRAMES)
    )
    exit_status: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Stdin bytes the agent will still take (protocol.STDIN_WINDOW); writers
    # wait on `credit_changed` when it is spent.
    stdin_credit: int = STDIN_WINDOW
    credit_changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Set with the exit status of a container's main process that an OOM
    # killer ended (the kernel counted a kill in its cgroup during the run).
    oom_killed: bool = False


class AgentClient:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, auto_ack: bool = True
    ) -> None:
        """With `auto_ack` off the owner calls `acknowledge` once it has kept what it read."""
        self._auto_ack = auto_ack
        self._reader = reader
        self._writer = writer
        # Request ids start anywhere: a replay may hold an earlier connection's
        # answers, and this connection's hello answer must not be mistaken for one.
        self._next_id = 1 + secrets.randbelow(1 << 40)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._processes: dict[int, ProcessChannel] = {}
        self._failure: AgentConnectionLost | None = None
        self._sync: bytes | None = None  # the SYNC frame answering our hello
        self._consumed = 0  # bytes of whole frames received after the SYNC frame
        self._base: int | None = None  # the guest's stream offset of the first of them
        self._acked = 0
        self._background: set[asyncio.Task[None]] = set()
        self._hello_id: int | None = None
        self.greeting: dict[str, Any] = {}  # the agent's answer to the last hello
        # Where each owner's output not yet kept begins (a frame's start): several
        # containers in one VM share the stream, and none may acknowledge what
        # another still has to keep.
        self.holds: dict[int, int] = {}  # by stream
        self._kept: set[int] = set()  # the streams whose output is held until kept
        # Frames of the replay (kind, stream, payload, end counted from its start).
        self._replay: list[tuple[FrameKind, int, bytes, int]] = []
        self._read_task = asyncio.create_task(self._read_loop(), name="agent-reader")
        self._write_lock = asyncio.Lock()

    @classmethod
    async def connect(cls, socket_path: Path, timeout: float, *, auto_ack: bool = True) -> AgentClient:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(socket_path), limit=4 * MAX_DATA_CHUNK), timeout
            )
        except (TimeoutError, OSError) as exc:
            raise AgentConnectionLost(f"cannot connect to the agent socket {socket_path}: {exc}") from exc
        return cls(reader, writer, auto_ack=auto_ack)

    @classmethod
    async def reconnect(cls, socket_path: Path, timeout: float, *, auto_ack: bool = True) -> AgentClient:
        """Connect to the agent of a VM whose earlier host is gone (hyperd adopting
        its pods after a crash).

        A host that died while its VM was paused can leave QEMU 7.2's agent port
        without a close: QEMU takes the next connection as the same one, so the
        port keeps what the dead connection left (a port throttled by a write
        that failed stays throttled), and the guest, never told that its host
        left, misses the new host's hello (seen about once in ten adoptions of a
        paused VM under load). So a first connection is made and closed at once:
        QEMU accepts connections one at a time, so that one is taken after the
        dead one is gone, and its end is a real close, which resets the port and
        tells the guest; the second connection is then a fresh open.
        """
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), timeout)
            writer.close()
            await writer.wait_closed()
        except (TimeoutError, OSError) as exc:
            raise AgentConnectionLost(f"cannot connect to the agent socket {socket_path}: {exc}") from exc
        return await cls.connect(socket_path, timeout, auto_ack=auto_ack)

    # -- receiving ------------------------------------------------------------
    async def _read_loop(self) -> None:
        decoder = FrameDecoder()
        before_sync: bytearray | None = bytearray()
        try:
            while True:
                data = await self._reader.read(4 * MAX_DATA_CHUNK)
                if not data:
                    raise AgentConnectionLost("the guest closed the agent channel")
                if before_sync is not None:
                    # Skip what an earlier connection left in QEMU's buffers.
                    before_sync += data
                    found = before_sync.find(self._sync) if self._sync else -1
                    if found < 0:
                        if len(before_sync) > MAX_BYTES_BEFORE_SYNC:
                            raise ProtocolError("the guest never answered the hello with its sync frame")
                        continue
                    data = bytes(before_sync[found + len(self._sync or b"") :])
                    before_sync = None
                for frame in decoder.feed(data):
                    size = HEADER.size + len(frame.payload)
                    if self._base is None and not self._answers_hello(frame.kind, frame.payload):
                        # The replay, before the hello's answer says where it began:
                        # held (it is bounded by the guest's buffer) and delivered
                        # in order, with its offsets, once the answer came.
                        self._replay.append((frame.kind, frame.stream, frame.payload, self._consumed + size))
                        self._consumed += size
                        continue
                    after = None if self._base is None else self._base + self._consumed + size
                    await self._dispatch(frame.kind, frame.stream, frame.payload, after)
                    if self._replay and self._base is not None:
                        replay, self._replay = self._replay, []
                        for kind, stream, payload, end in replay:
                            await self._dispatch(kind, stream, payload, self._base + end, replayed=True)
                    # Counted once delivered: a frame cut off by close() is resent on resume.
                    self._consumed += size
                    if self._auto_ack:
                        self._maybe_acknowledge()
        except ProtocolError as exc:
            self._fail(AgentConnectionLost(f"the guest agent broke the protocol: {exc}"))
        except AgentConnectionLost as exc:
            self._fail(exc)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._fail(AgentConnectionLost(f"the agent channel failed: {exc}"))
        except Exception as exc:
            # Anything else the guest provoked must still fail the waiters at once.
            self._fail(AgentConnectionLost(f"the agent channel failed: {type(exc).__name__}: {exc}"))
            raise
        finally:
            self._writer.close()

    def _answers_hello(self, kind: FrameKind, payload: bytes) -> bool:
        if kind is not FrameKind.CONTROL or self._hello_id is None:
            return False
        try:
            message = decode_message(payload)
        except ProtocolError:
            return False
        return message.get("type") == "response" and message.get("id") == self._hello_id

    async def _dispatch(
        self, kind: FrameKind, stream: int, payload: bytes, after: int | None, *, replayed: bool = False
    ) -> None:
        if kind in (FrameKind.STDOUT, FrameKind.STDERR):
            process = self._processes.get(stream)
            if process is not None and payload:
                if stream in self._kept and after is not None:
                    self.holds.setdefault(stream, after - HEADER.size - len(payload))
                await process.output.put((kind, payload, after))
            return
        if kind is not FrameKind.CONTROL:
            raise ProtocolError(f"the guest sent a {kind.name} frame")
        message = decode_message(payload)
        if message["type"] == "response":
            request_id = require(message, "id", int)
            if request_id == self._hello_id and not replayed:
                start = message.get("resume_from")
                if isinstance(start, int) and not isinstance(start, bool) and start >= 0:
                    self._base = start  # the held replay's offsets count from here
            future = self._pending.pop(request_id, None)
            if future is None:
                if replayed or (self._base is None and request_id != self._hello_id):
                    return  # replayed from an earlier connection: its asker is gone
                raise ProtocolError(f"response to unknown request {request_id}")
            if not future.done():
                future.set_result(message)
        elif message["type"] == "exited":
            stream = require(message, "process", int)
            status = require(message, "status", int)
            if not 0 <= status <= 255:
                raise ProtocolError(f"exit status {status} out of range")
            exited = self._processes.pop(stream, None)
            self._kept.discard(stream)
            if self._auto_ack:
                self._maybe_acknowledge(force=True)
            if exited is not None:
                exited.oom_killed = message.get("oom_killed") is True
                exited.credit_changed.set()  # a waiting stdin writer learns nobody reads any more
                await exited.output.put(None)
                if not exited.exit_status.done():
                    exited.exit_status.set_result(status)
        elif message["type"] == "stdin_credit":
            taken = require(message, "bytes", int)
            if not 0 < taken <= STDIN_WINDOW:
                raise ProtocolError(f"stdin credit of {taken} bytes is out of range")
            channel = self._processes.get(require(message, "process", int))
            if channel is not None:
                # Never above the window, whatever the guest says: it only hurts itself.
                channel.stdin_credit = min(STDIN_WINDOW, channel.stdin_credit + taken)
                channel.credit_changed.set()
        else:
            raise ProtocolError(f"unexpected message {message['type']!r}")

    @property
    def received_offset(self) -> int | None:
        """How far into the guest's stream this host has read whole frames; a
        later connection resumes from here. None until the hello is answered."""
        return None if self._base is None else self._base + self._consumed

    def acknowledge(self, offset: int) -> None:
        """Let the guest forget its stream up to `offset` (for owners without
        auto_ack), or up to the first output an owner still holds."""
        if self.holds:
            offset = min(offset, *self.holds.values())
        if offset > self._acked and self._failure is None:
            self._acked = offset
            task = asyncio.create_task(self._send_quietly(encode_message({"type": "ack", "offset": offset})))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _maybe_acknowledge(self, *, force: bool = False) -> None:
        offset = self.received_offset
        if offset is None or self._failure is not None:
            return
        if offset - self._acked >= ACK_EVERY or (force and offset > self._acked):
            self._acked = offset
            task = asyncio.create_task(self._send_quietly(encode_message({"type": "ack", "offset": offset})))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(AgentConnectionLost):
            await self._send(data)

    def _fail(self, error: AgentConnectionLost) -> None:
        if self._failure is None:
            self._failure = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        for process in self._processes.values():
            process.credit_changed.set()
            with contextlib.suppress(asyncio.QueueFull):
                process.output.put_nowait(None)
            if not process.exit_status.done():
                process.exit_status.set_exception(error)
                process.exit_status.exception()  # retrieved: the runtime reports the cause once
        self._processes.clear()

    # -- sending --------------------------------------------------------------
    async def _send(self, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        async with self._write_lock:
            try:
                self._writer.write(data)
                await asyncio.wait_for(self._writer.drain(), 30)
            except (TimeoutError, OSError) as exc:
                error = AgentConnectionLost(f"cannot write to the agent: {exc}")
                self._fail(error)
                raise error from exc

    async def request(self, kind: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Send a request and wait for its response; raise AgentRequestError on refusal."""
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send(encode_message({"type": kind, "id": request_id, **fields}))
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"the guest agent did not answer {kind!r} within {timeout:.0f}s") from None
        finally:
            self._pending.pop(request_id, None)
        if reply.get("ok") is not True:
            stage, errno = reply.get("stage"), reply.get("errno")
            raise AgentRequestError(
                str(reply.get("error") or f"{kind} failed")[:2000],
                stage=stage if isinstance(stage, str) else None,
                errno=errno if isinstance(errno, int) else None,
            )
        return reply

    async def hello(self, timeout: float, resume: int | None = None) -> dict[str, Any]:
        """The first exchange of a connection.

        `resume` is the `received_offset` of an earlier connection to continue
        from; without it the stream starts after whatever the guest sent before.
        The replay arrives before the answer: open the processes' channels and
        start reading them before awaiting this, or their bounded queues fill.
        """
        nonce = os.urandom(16)
        self._sync = sync_frame(nonce)
        self._hello_id = self._next_id
        reply = await self.request(
            "hello", timeout, version=PROTOCOL_VERSION, nonce=nonce.hex(), resume=resume
        )
        if reply.get("version") != PROTOCOL_VERSION:
            raise AgentConnectionLost(
                f"the guest agent speaks protocol {reply.get('version')!r}, the host {PROTOCOL_VERSION}",
                hint="the appliance is stale; remove Hyper's cache directory to rebuild it",
            )
        start = reply.get("resume_from")
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            error = AgentConnectionLost("the guest agent's hello has no valid resume_from")
            self._fail(error)
            raise error
        self._base = start
        self._acked = start
        self.greeting = reply
        if self._auto_ack:
            self._maybe_acknowledge(force=True)
        return reply

    def open_process(self, stream: int, *, keep: bool = False) -> ProcessChannel:
        """Register a process before it is started, so no output can be missed.
        With `keep` (a container's main process, whose output goes to its log)
        its output is held back from acknowledgements until `kept`."""
        channel = ProcessChannel(stream)
        self._processes[stream] = channel
        if keep and not self._auto_ack:
            self._kept.add(stream)
        return channel

    def kept(self, stream: int, offset: int | None) -> None:
        """The owner of `stream` has kept its output up to `offset` (a frame's
        end), or with None all of it received so far."""
        if offset is None:
            self.holds.pop(stream, None)
        else:
            self.holds[stream] = offset

    def forget(self, stream: int) -> None:
        """Nobody keeps `stream`'s output any more."""
        self._kept.discard(stream)
        self.holds.pop(stream, None)

    async def write_stdin(self, stream: int, data: bytes) -> None:
        """Send `data` to the process's stdin as the agent takes it (a slow
        reader makes this wait, as a pipe would); once the process has ended
        nobody reads its stdin, and what is left is dropped."""
        view = memoryview(data)
        while view:
            if self._failure is not None:
                raise self._failure
            channel = self._processes.get(stream)
            if channel is None:
                return
            if channel.stdin_credit <= 0:
                channel.credit_changed.clear()
                await channel.credit_changed.wait()
                continue
            size = min(len(view), MAX_DATA_CHUNK, channel.stdin_credit)
            channel.stdin_credit -= size
            await self._send(encode_frame(FrameKind.STDIN, stream, bytes(view[:size])))
            view = view[size:]

    async def close_stdin(self, stream: int) -> None:
        await self._send(encode_frame(FrameKind.STDIN, stream, b""))

    @property
    def failure(self) -> AgentConnectionLost | None:
        return self._failure

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._read_task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
