"""SPDY/3.1 on an aiohttp connection: the streaming server's second transport.

A request with `Upgrade: SPDY/3.1` and the protocol versions it speaks in
`X-Stream-Protocol-Version` headers (what client-go's SPDY executor, crictl
by default and a kubelet's API server send) is answered 101 with the version
chosen (the first of the client's that the server has), and the connection
becomes a SPDY session: hyper.cri.spdy parses it, this module moves its
bytes. The client opens the streams (each with a `streamtype` header); the
server replies to each and reads and writes them as the remotecommand and
port-forward handlers ask.

What the server buffers from the client is bounded: past MAX_BUFFERED
unread bytes it stops reading the socket until the handlers catch up, so a
client that ignores SPDY's windows (Go's spdystream does) is slowed by TCP.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import hdrs, web

from hyper.cri import spdy

HEADER_PROTOCOL = "X-Stream-Protocol-Version"
MAX_BUFFERED = 1024 * 1024
# SPDY/3's HTTP layer wants them in a reply (spdy-transport resets a stream without);
# spdystream sends none and reads none.
REPLY_HEADERS = ((":status", "200"), (":version", "HTTP/1.1"))
CLOSE_SECONDS = 5.0  # after the server's GOAWAY: how long the client may take to close
STREAM_SECONDS = 30.0  # the kubelet's wait for a client's streams to be created


def negotiate(request: web.Request, supported: tuple[str, ...]) -> str | web.Response:
    """The protocol version both speak, or the refusal (403, as the kubelet's)."""
    offered = [p.strip() for h in request.headers.getall(HEADER_PROTOCOL, []) for p in h.split(",")]
    for protocol in offered:
        if protocol in supported:
            return protocol
    return web.Response(
        status=403,
        text=f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
        f"server supports {list(supported)}; send {HEADER_PROTOCOL} with one of these\n",
    )


class Stream:
    """One client-opened stream: its headers, what came on it, and writing to it."""

    def __init__(self, session: Session, opened: spdy.StreamOpened) -> None:
        self.session, self.id, self.headers = session, opened.stream_id, opened.headers
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.window = asyncio.Event()
        self.closed = False  # reset, or the session ended
        self.inbox: asyncio.Queue[tuple[int, bytes | None]] | None = None
        self.tag = 0
        if opened.fin:
            self.incoming.put_nowait(None)

    def deliver(self, data: bytes | None) -> None:
        if self.inbox is not None:
            self.inbox.put_nowait((self.tag, data))
        else:
            self.incoming.put_nowait(data)

    def merge_into(self, inbox: asyncio.Queue[tuple[int, bytes | None]], tag: int) -> None:
        """From now on what comes on this stream goes to `inbox` as (tag, bytes), None at its
        end: several streams in one queue, in the order the session received them (a
        terminal's size before the input that follows it). The reader calls taken()."""
        while not self.incoming.empty():
            inbox.put_nowait((tag, self.incoming.get_nowait()))
        self.inbox, self.tag = inbox, tag

    def taken(self, count: int) -> None:
        self.session.taken(self.id, count)

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name), "")

    async def read(self) -> bytes | None:
        """The next bytes the client sent; None at its end (FIN, reset or the session's end)."""
        data = await self.incoming.get()
        if data:
            self.session.taken(self.id, len(data))
        return data

    async def write(self, data: bytes) -> bool:
        """All of `data`, as the windows let it go; False if the stream or session is gone."""
        view = memoryview(data)
        while view:
            if self.closed:
                return False
            room = self.session.connection.sendable(self.id)
            if room == 0:
                self.window.clear()
                if self.session.connection.sendable(self.id) == 0:
                    await self.window.wait()
                continue
            self.session.connection.send(self.id, bytes(view[:room]))
            view = view[room:]
            await self.session.flush()
        return not self.closed

    async def finish(self) -> None:
        """Nothing more from the server on this stream."""
        if not self.closed:
            self.session.connection.finish(self.id)
            await self.session.flush()


class Session:
    """A SPDY session on an upgraded HTTP connection."""

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request, self.response = request, response
        self.protocol = request.protocol
        self.connection = spdy.Connection()
        self.streams: dict[int, Stream] = {}
        self.opened: asyncio.Queue[Stream | None] = asyncio.Queue()  # None: the session ended
        self.buffered = 0
        self.paused = False
        self.ended = asyncio.Event()

    # -- the parser aiohttp feeds once the connection is upgraded ----------------
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        try:
            events = self.connection.receive(data)
        except spdy.ProtocolError:
            events = []
            self._end()
        for event in events:
            self._dispatch(event)
        self._write_now()
        return False, b""

    def feed_eof(self) -> None:
        self._end()

    def _dispatch(self, event: spdy.Event) -> None:
        if isinstance(event, spdy.StreamOpened):
            stream = Stream(self, event)
            self.streams[event.stream_id] = stream
            self.connection.reply(event.stream_id, REPLY_HEADERS)
            self.opened.put_nowait(stream)
        elif isinstance(event, spdy.DataReceived):
            stream = self.streams[event.stream_id]
            if event.data:
                stream.deliver(event.data)
                self.buffered += len(event.data)
                if self.buffered > MAX_BUFFERED and not self.paused:
                    self.paused = True
                    self._transport_call("pause_reading")
            if event.fin:
                stream.deliver(None)
        elif isinstance(event, spdy.StreamReset):
            self._close_stream(event.stream_id)
        elif isinstance(event, spdy.WindowOpened):
            targets = self.streams.values() if event.stream_id == 0 else [self.streams.get(event.stream_id)]
            for target in targets:
                if target is not None:
                    target.window.set()
        elif isinstance(event, spdy.GoneAway):
            self._end()

    def _close_stream(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.closed = True
            stream.window.set()
            stream.deliver(None)

    def _end(self) -> None:
        for stream_id in list(self.streams):
            self._close_stream(stream_id)
        if not self.ended.is_set():
            self.ended.set()
            self.opened.put_nowait(None)

    def taken(self, stream_id: int, count: int) -> None:
        """A handler read `count` bytes: the client may send more."""
        self.buffered -= count
        self.connection.consumed(stream_id, count)
        if self.paused and self.buffered < MAX_BUFFERED // 2:
            self.paused = False
            self._transport_call("resume_reading")
        self._write_now()

    def _transport_call(self, name: str) -> None:
        transport = self.request.transport
        if transport is not None:
            with contextlib.suppress(RuntimeError, NotImplementedError):
                getattr(transport, name)()

    def _write_now(self) -> None:
        out = self.connection.data_to_send()
        transport = self.request.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out)

    async def flush(self) -> None:
        """What the session has to send, and wait while the socket's buffer is full."""
        self._write_now()
        if self.request.transport is None:
            self._end()
            return
        with contextlib.suppress(ConnectionError):
            await self.protocol._drain_helper()

    async def close(self) -> None:
        """GOAWAY, then the connection's end: the server's side first, so that the
        client reads everything before it closes its own (or CLOSE_SECONDS pass)."""
        self.connection.go_away()
        await self.flush()
        transport = self.request.transport
        if transport is not None and transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), CLOSE_SECONDS)
        self._end()
        transport = self.request.transport
        if transport is not None:
            transport.close()


async def upgrade(request: web.Request, protocol: str) -> Session:
    """Answer 101 and make the connection a SPDY session; the client's streams come in `opened`."""
    response = web.StreamResponse(
        status=101,
        headers={hdrs.CONNECTION: "Upgrade", hdrs.UPGRADE: "SPDY/3.1", HEADER_PROTOCOL: protocol},
    )
    response.force_close()
    await response.prepare(request)
    session = Session(request, response)
    request.protocol.set_parser(session)  # type: ignore[arg-type]  # aiohttp's parser interface
    request.protocol.keep_alive(False)
    return session


def is_spdy(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "spdy/3.1"


async def expect_streams(
    session: Session, wanted: set[str], seconds: float = STREAM_SECONDS
) -> dict[str, Stream]:
    """The client's streams by `streamtype` once each type `wanted` came; {} at the deadline or the end."""
    streams: dict[str, Stream] = {}

    async def arrive() -> None:
        while not wanted <= streams.keys():
            stream = await session.opened.get()
            if stream is None:
                return
            streams[stream.header("streamtype")] = stream

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(arrive(), seconds)
    return streams if wanted <= streams.keys() else {}
