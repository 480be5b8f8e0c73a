"""The wire protocol between the host and the guest agent, shared by both sides.

Standard library only: the guest imports this module as it is.

A frame is a fixed header followed by a payload:

    kind: u8 | stream: u32 | length: u32 | payload: length bytes

`kind` is CONTROL (payload: one JSON object with a string "type") or one of
the stdio kinds (payload: raw bytes of process `stream`; an empty payload is
end-of-file). Every frame is bounded by MAX_PAYLOAD, and the decoder rejects
anything malformed with ProtocolError: the host treats the guest as hostile
and closes the channel on the first bad frame.

The first exchange is a hello in each direction carrying PROTOCOL_VERSION;
a mismatch ends the connection.

Stdin is flow-controlled per process: the host may have at most
STDIN_WINDOW bytes of a process's stdin sent and not yet taken off the
agent's hands; the agent answers with `stdin_credit` messages (process,
bytes) as it writes them into the process's pipe or terminal (or drops them,
when nobody reads any more). So a fast writer and a slow reader cost the
guest a bounded buffer, and the writer waits instead.

Nothing the guest sends is lost when the host goes away (hyperd restarting,
say): the agent keeps every byte it sent until the host acknowledges it
(`ack` with an absolute offset into the guest's stream), and a host that
connects again says in its hello where to resume. Bytes of the old
connection may still sit in QEMU's buffers when a new one opens, so the
agent first answers a hello with a SYNC frame carrying the hello's random
nonce; the host discards everything before that frame. The guest's stream
then continues from the offset the hello asked for.
"""

from __future__ import annotations

import enum
import json
import struct

# Not `from typing import TYPE_CHECKING`: importing typing costs the guest
# a tenth of a second under TCG. Type checkers treat this name as true.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 3
PORT_NAME = "org.hyper.agent.0"
HEADER = struct.Struct(">BII")
MAX_PAYLOAD = 1 << 20
# Stdio payloads are cut well under the bound so that control frames are never
# stuck behind a very long data frame.
MAX_DATA_CHUNK = 64 * 1024
# Stdin bytes a host may have in flight per process (see the module docstring).
STDIN_WINDOW = 256 * 1024


class FrameKind(enum.IntEnum):
    CONTROL = 1
    STDIN = 2
    STDOUT = 3
    STDERR = 4
    SYNC = 5  # payload: the nonce of the hello it answers; marks where a connection's stream begins


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow."""


class Frame:
    __slots__ = ("kind", "payload", "stream")

    def __init__(self, kind: FrameKind, stream: int, payload: bytes) -> None:
        self.kind = kind
        self.stream = stream
        self.payload = payload

    def __repr__(self) -> str:
        return f"Frame({self.kind.name}, stream={self.stream}, {len(self.payload)} bytes)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frame) and (self.kind, self.stream, self.payload) == (
            other.kind,
            other.stream,
            other.payload,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.stream, self.payload))


def encode_frame(kind: FrameKind, stream: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    if not 0 <= stream <= 0xFFFFFFFF:
        raise ProtocolError(f"stream id {stream} out of range")
    return HEADER.pack(int(kind), stream, len(payload)) + payload


def encode_message(message: dict[str, Any], stream: int = 0) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    return encode_frame(FrameKind.CONTROL, stream, payload)


def sync_frame(nonce: bytes) -> bytes:
    return encode_frame(FrameKind.SYNC, 0, nonce)


def decode_message(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"control frame is not valid JSON: {type(exc).__name__}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("control frame is not an object with a string 'type'")
    return message


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, take whole frames out."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._max_payload = max_payload

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= HEADER.size:
            kind_value, stream, length = HEADER.unpack_from(self._buffer)
            try:
                kind = FrameKind(kind_value)
            except ValueError:
                raise ProtocolError(f"unknown frame kind {kind_value}") from None
            if length > self._max_payload:
                raise ProtocolError(f"frame of {length} bytes exceeds {self._max_payload}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append(Frame(kind, stream, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buffer)


def require(message: dict[str, Any], key: str, kind: type) -> Any:
    """Fetch a field of a decoded message, checking its type (bool is not int)."""
    value = message.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"message {message.get('type')!r} needs {key!r} of type {kind.__name__}")
    return value
