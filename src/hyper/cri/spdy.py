"""SPDY/3.1 framing, sans I/O: bytes in, events and bytes out.

What a kubelet's API server proxies exec, attach and port-forward with, and
what crictl speaks by default, is SPDY/3.1 after an HTTP/1.1 Upgrade (Go's
moby/spdystream on the client's side). This module is the wire format and a
server's connection state, with no sockets, so that it can be tested frame
by frame: `Connection.receive(data)` parses what the peer sent and answers
with events (a stream opened, data, a stream's end, a reset); what the
server has to send (replies, data, WINDOW_UPDATEs, PING answers, RST_STREAMs
for frames it refuses) collects in `Connection.data_to_send()`.

Header blocks are zlib streams primed with the dictionary the SPDY/3
specification fixes (section 2.6.10.1), one stream per direction per
connection.

Flow control is SPDY/3.1's: every stream's window and the session's start at
64 KiB; the server sends WINDOW_UPDATEs for what it consumed, per stream and
on stream 0. Its own sending keeps to the peer's windows once the peer shows
that it keeps them (it sent SETTINGS or a WINDOW_UPDATE). Go's spdystream,
which every kubelet client uses, does neither: it never sends WINDOW_UPDATE
and ignores those it gets; holding it to a window would stall any output
past 64 KiB, so for such a peer nothing is held back, as spdystream itself
(the kubelet's own streaming server) does. What the peer sends beyond the
server's window is not refused for the same reason; the glue bounds what
it buffers by reading no further from the socket.

Hostile input is bounded: frames over MAX_FRAME, header blocks that inflate
past MAX_HEADER_BLOCK (a decompression bomb), too many headers, stream IDs
that are even, not increasing or zero, and unknown versions end the session
with GOAWAY (ProtocolError) or reset the one stream.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from hyper.errors import HyperError, InvalidArgument

VERSION = 3
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
INITIAL_WINDOW = 64 * 1024
MAX_WINDOW = 0x7FFFFFFF
MAX_FRAME = 1024 * 1024  # far above what peers send (spdystream: one read buffer); the field allows 16 MiB
MAX_DATA_CHUNK = 16 * 1024  # the server's DATA frames
MAX_HEADER_BLOCK = 64 * 1024  # inflated
MAX_HEADERS = 256
SETTINGS_INITIAL_WINDOW_SIZE = 7


class Type(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class Status(enum.IntEnum):
    """RST_STREAM status codes."""

    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


GOAWAY_OK, GOAWAY_PROTOCOL_ERROR = 0, 1

# The SPDY/3 header dictionary (draft 3, 2.6.10.1): HTTP header names and words,
# each after its length as 4 bytes big-endian, then status lines, dates and
# media types as they are.
_WORDS = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
]
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


class ProtocolError(HyperError):
    """The peer broke SPDY: the session ends with GOAWAY."""


Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class StreamOpened:
    stream_id: int
    headers: Headers
    fin: bool  # the peer sends nothing on it

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name), "")


@dataclass(frozen=True)
class DataReceived:
    stream_id: int
    data: bytes
    fin: bool


@dataclass(frozen=True)
class StreamReset:
    stream_id: int
    status: int


@dataclass(frozen=True)
class GoneAway:
    last_stream_id: int


@dataclass(frozen=True)
class WindowOpened:
    """The peer gave more window: a stream's (or, with 0, the session's) sending may resume."""

    stream_id: int


Event = StreamOpened | DataReceived | StreamReset | GoneAway | WindowOpened


def encode_header_block(headers: Headers) -> bytes:
    out = [struct.pack(">I", len(headers))]
    for name, value in headers:
        raw_name, raw_value = name.lower().encode(), value.encode()
        out += [struct.pack(">I", len(raw_name)), raw_name, struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(out)


def decode_header_block(block: bytes) -> Headers:
    """Name/value pairs; ValueError when the block is malformed."""

    def take(at: int, count: int) -> tuple[bytes, int]:
        if at + count > len(block):
            raise ValueError("header block ends early")
        return block[at : at + count], at + count

    raw, at = take(0, 4)
    (count,) = struct.unpack(">I", raw)
    if count > MAX_HEADERS:
        raise ValueError(f"{count} headers (at most {MAX_HEADERS})")
    pairs = []
    for _ in range(count):
        raw, at = take(at, 4)
        name, at = take(at, struct.unpack(">I", raw)[0])
        raw, at = take(at, 4)
        value, at = take(at, struct.unpack(">I", raw)[0])
        if not name or name != name.lower():
            raise ValueError("a header name is empty or not lower case")
        pairs.append((name.decode("latin-1"), value.decode("latin-1")))
    if at != len(block):
        raise ValueError("bytes after the header block")
    return tuple(pairs)


def control(kind: Type, flags: int, payload: bytes) -> bytes:
    if len(payload) >= 1 << 24:
        raise InvalidArgument(f"a SPDY frame of {len(payload)} bytes is too large")
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, fin: bool) -> bytes:
    return struct.pack(">II", stream_id, ((FLAG_FIN if fin else 0) << 24) | len(data)) + data


class Connection:
    """The server's side of one SPDY/3.1 session."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._out = bytearray()
        self._deflate = zlib.compressobj(zdict=DICTIONARY)
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.last_peer_stream = 0
        self.open: set[int] = set()  # streams not yet closed both ways
        self.local_closed: set[int] = set()
        self.remote_closed: set[int] = set()
        self.peer_keeps_windows = False
        self.peer_initial_window = INITIAL_WINDOW
        self.send_windows: dict[int, int] = {0: INITIAL_WINDOW}
        self.unacknowledged: dict[int, int] = {0: 0}  # received, not yet given back with WINDOW_UPDATE
        self.gone = False

    # -- input ------------------------------------------------------------------
    def receive(self, data: bytes) -> list[Event]:
        """The events in `data` (and whatever came before it incomplete); ProtocolError ends the session."""
        if self.gone:
            return []
        self._buffer += data
        events: list[Event] = []
        try:
            while len(self._buffer) >= 8:
                word, flags_length = struct.unpack_from(">II", self._buffer)
                length = flags_length & 0xFFFFFF
                if length > MAX_FRAME:
                    raise ProtocolError(f"a frame of {length} bytes (at most {MAX_FRAME})")
                if len(self._buffer) < 8 + length:
                    break
                payload = bytes(self._buffer[8 : 8 + length])
                del self._buffer[: 8 + length]
                flags = flags_length >> 24
                if word & 0x80000000:
                    version, kind = (word >> 16) & 0x7FFF, word & 0xFFFF
                    if version != VERSION:
                        raise ProtocolError(f"SPDY version {version} (this server speaks 3.1)")
                    events += self._control(kind, flags, payload)
                else:
                    events += self._data(word & 0x7FFFFFFF, flags, payload)
        except ProtocolError:
            self.go_away(GOAWAY_PROTOCOL_ERROR)
            raise
        return events

    def _control(self, kind: int, flags: int, payload: bytes) -> list[Event]:
        if kind == Type.SYN_STREAM:
            return self._syn_stream(flags, payload)
        if kind == Type.RST_STREAM:
            stream_id, status = self._ints(payload, 2)
            stream_id &= 0x7FFFFFFF
            self._forget(stream_id)
            return [StreamReset(stream_id, status)]
        if kind == Type.SETTINGS:
            return self._settings(payload)
        if kind == Type.PING:
            (ping_id,) = self._ints(payload, 1)
            if ping_id % 2 == 1:  # the peer's: echoed; even ones would be the server's own
                self._out += control(Type.PING, 0, payload)
            return []
        if kind == Type.GOAWAY:
            (last, *_) = self._ints(payload, 2)
            self.gone = True
            return [GoneAway(last & 0x7FFFFFFF)]
        if kind == Type.WINDOW_UPDATE:
            stream_id, delta = self._ints(payload, 2)
            stream_id, delta = stream_id & 0x7FFFFFFF, delta & 0x7FFFFFFF
            if delta == 0:
                raise ProtocolError("a WINDOW_UPDATE of 0")
            self.peer_keeps_windows = True
            if stream_id != 0 and stream_id not in self.send_windows:
                return []  # a stream already closed
            # Past 2^31-1 is the peer's error; spdy-transport makes it on the session's
            # window (its first update is of 2^31-1): the window is held at the maximum.
            self.send_windows[stream_id] = min(self.send_windows[stream_id] + delta, MAX_WINDOW)
            return [WindowOpened(stream_id)]
        if kind in (Type.HEADERS, Type.SYN_REPLY):
            stream_id = self._ints(payload[:4], 1)[0] & 0x7FFFFFFF
            self._headers(payload[4:])  # kept in step with the peer's compressor; nothing here needs them
            if flags & FLAG_FIN and stream_id in self.open:
                return self._remote_fin(stream_id, b"")
            return []
        return []  # unknown control frames are ignored, as the specification asks

    def _syn_stream(self, flags: int, payload: bytes) -> list[Event]:
        if len(payload) < 10:
            raise ProtocolError("a SYN_STREAM shorter than 10 bytes")
        stream_id = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
        headers = self._headers(payload[10:])  # first: the compression state must follow every block
        if stream_id == 0 or stream_id % 2 == 0 or stream_id <= self.last_peer_stream:
            raise ProtocolError(f"stream ID {stream_id} after {self.last_peer_stream} (odd, increasing)")
        self.last_peer_stream = stream_id
        fin = bool(flags & (FLAG_FIN | FLAG_UNIDIRECTIONAL))
        self.open.add(stream_id)
        self.send_windows[stream_id] = self.peer_initial_window
        self.unacknowledged[stream_id] = 0
        if fin:
            self.remote_closed.add(stream_id)
        return [StreamOpened(stream_id, headers, fin)]

    def _data(self, stream_id: int, flags: int, payload: bytes) -> list[Event]:
        if stream_id not in self.open or stream_id in self.remote_closed:
            known = 0 < stream_id <= self.last_peer_stream
            self.reset(stream_id, Status.STREAM_ALREADY_CLOSED if known else Status.INVALID_STREAM)
            self.consumed(0, len(payload))
            return []
        if flags & FLAG_FIN:
            return self._remote_fin(stream_id, payload)
        return [DataReceived(stream_id, payload, False)]

    def _remote_fin(self, stream_id: int, payload: bytes) -> list[Event]:
        self.remote_closed.add(stream_id)
        event = DataReceived(stream_id, payload, True)
        if stream_id in self.local_closed:
            self._forget(stream_id)
        return [event]

    def _settings(self, payload: bytes) -> list[Event]:
        (count,) = self._ints(payload[:4], 1)
        if len(payload) != 4 + 8 * count:
            raise ProtocolError("a SETTINGS frame of the wrong length")
        self.peer_keeps_windows = True
        events: list[Event] = []
        for index in range(count):
            id_flags, value = struct.unpack_from(">II", payload, 4 + 8 * index)
            if id_flags & 0xFFFFFF == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(f"an initial window of {value}")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream_id in list(self.send_windows):
                    if stream_id:
                        self.send_windows[stream_id] += delta
                        events.append(WindowOpened(stream_id))
        return events

    def _headers(self, compressed: bytes) -> Headers:
        try:
            block = self._inflate.decompress(compressed, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise ProtocolError(f"a header block that does not inflate: {exc}") from None
        if self._inflate.unconsumed_tail:
            raise ProtocolError(f"a header block over {MAX_HEADER_BLOCK} bytes inflated")
        try:
            return decode_header_block(block)
        except ValueError as exc:
            raise ProtocolError(f"a bad header block: {exc}") from None

    @staticmethod
    def _ints(payload: bytes, count: int) -> tuple[int, ...]:
        if len(payload) < 4 * count:
            raise ProtocolError("a control frame too short for its fields")
        return struct.unpack_from(f">{count}I", payload)

    def _forget(self, stream_id: int) -> None:
        self.open.discard(stream_id)
        self.local_closed.discard(stream_id)
        self.remote_closed.discard(stream_id)
        self.send_windows.pop(stream_id, None)
        self.unacknowledged.pop(stream_id, None)

    # -- output -----------------------------------------------------------------
    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def reply(self, stream_id: int, headers: Headers = (), fin: bool = False) -> None:
        block = self._deflate.compress(encode_header_block(headers)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self._out += control(Type.SYN_REPLY, FLAG_FIN if fin else 0, struct.pack(">I", stream_id) + block)
        if fin:
            self._local_fin(stream_id)

    def sendable(self, stream_id: int) -> int:
        """How many bytes may go on `stream_id` now (0: wait for WindowOpened)."""
        if stream_id not in self.send_windows or stream_id in self.local_closed or self.gone:
            return 0
        if not self.peer_keeps_windows:
            return MAX_DATA_CHUNK
        return max(0, min(self.send_windows[stream_id], self.send_windows[0], MAX_DATA_CHUNK))

    def send(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        """DATA on a stream; at most sendable(stream_id) bytes."""
        if len(data) > self.sendable(stream_id):
            raise InvalidArgument(f"{len(data)} bytes exceed stream {stream_id}'s window")
        if self.peer_keeps_windows:
            self.send_windows[stream_id] -= len(data)
            self.send_windows[0] -= len(data)
        self._out += data_frame(stream_id, data, fin)
        if fin:
            self._local_fin(stream_id)

    def finish(self, stream_id: int) -> None:
        """The server sends nothing more on `stream_id` (an empty DATA with FLAG_FIN)."""
        if stream_id in self.open and stream_id not in self.local_closed:
            self._out += data_frame(stream_id, b"", True)
            self._local_fin(stream_id)

    def _local_fin(self, stream_id: int) -> None:
        self.local_closed.add(stream_id)
        if stream_id in self.remote_closed:
            self._forget(stream_id)

    def consumed(self, stream_id: int, count: int) -> None:
        """The server used `count` bytes it received: give them back once half a window is due."""
        for target in (stream_id, 0) if stream_id else (0,):
            if target not in self.unacknowledged:
                continue
            due = self.unacknowledged[target] + count
            if due >= INITIAL_WINDOW // 2:
                self._out += control(Type.WINDOW_UPDATE, 0, struct.pack(">II", target, due))
                due = 0
            self.unacknowledged[target] = due

    def reset(self, stream_id: int, status: int) -> None:
        self._out += control(Type.RST_STREAM, 0, struct.pack(">II", stream_id, status))
        self._forget(stream_id)

    def go_away(self, status: int = GOAWAY_OK) -> None:
        if not self.gone:
            self._out += control(Type.GOAWAY, 0, struct.pack(">II", self.last_peer_stream, status))
            self.gone = True
