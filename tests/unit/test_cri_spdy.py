"""SPDY/3.1 framing (hyper.cri.spdy), frame by frame: what a client sends, what the server answers.

The client frames here are built from the specification's layout; the
integration tests (test_cri_running.py) drive the server with npm's
spdy-transport, an implementation of its own.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from hyper.cri import spdy
from hyper.cri.spdy import (
    DICTIONARY,
    FLAG_FIN,
    INITIAL_WINDOW,
    Connection,
    DataReceived,
    GoneAway,
    ProtocolError,
    StreamOpened,
    StreamReset,
    Type,
    WindowOpened,
)


class Client:
    """Frames as a client writes them, with its own header compressor."""

    def __init__(self) -> None:
        self.deflate = zlib.compressobj(zdict=DICTIONARY)
        self.inflate = zlib.decompressobj(zdict=DICTIONARY)

    def syn_stream(self, stream_id: int, headers: dict[str, str], fin: bool = False) -> bytes:
        block = spdy.encode_header_block(tuple(headers.items()))
        packed = self.deflate.compress(block) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + packed
        return spdy.control(Type.SYN_STREAM, FLAG_FIN if fin else 0, payload)

    def frames(self, data: bytes) -> list[tuple[str, int, int, bytes]]:
        """(kind, stream or type, flags, payload) of each frame the server sent."""
        out = []
        while data:
            word, flags_length = struct.unpack_from(">II", data)
            length = flags_length & 0xFFFFFF
            payload, data = data[8 : 8 + length], data[8 + length :]
            if word & 0x80000000:
                out.append((Type(word & 0xFFFF).name, word & 0xFFFF, flags_length >> 24, payload))
            else:
                out.append(("DATA", word, flags_length >> 24, payload))
        return out

    def reply_headers(self, payload: bytes) -> spdy.Headers:
        return spdy.decode_header_block(self.inflate.decompress(payload[4:]))


def test_the_dictionary_is_the_specifications() -> None:
    assert len(DICTIONARY) == 1423
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")
    # The words part: each after its length, up to "origin", where the raw tail starts.
    at, words = 0, list[bytes]()
    while not words or words[-1] != b"origin":
        (length,) = struct.unpack_from(">I", DICTIONARY, at)
        words.append(DICTIONARY[at + 4 : at + 4 + length])
        at += 4 + length
    assert len(words) == 65 and DICTIONARY[at:].startswith(b"100101201")


def test_streams_open_carry_data_and_close_both_ways() -> None:
    client, server = Client(), Connection()
    wire = client.syn_stream(1, {"streamtype": "stdin"}) + client.syn_stream(3, {"streamtype": "stdout"})
    # Split anywhere: a frame is parsed once whole.
    events = server.receive(wire[:5]) + server.receive(wire[5:])
    assert [e.header("streamtype") for e in events if isinstance(e, StreamOpened)] == ["stdin", "stdout"]
    server.reply(1)
    server.reply(3)
    sent = client.frames(server.data_to_send())
    assert [(k, f) for k, _, f, _ in sent] == [("SYN_REPLY", 0), ("SYN_REPLY", 0)]
    assert client.reply_headers(sent[0][3]) == () and client.reply_headers(sent[1][3]) == ()

    events = server.receive(spdy.data_frame(1, b"hello", False) + spdy.data_frame(1, b"", True))
    assert events == [DataReceived(1, b"hello", False), DataReceived(1, b"", True)]
    server.send(3, b"out", fin=True)
    assert client.frames(server.data_to_send()) == [("DATA", 3, FLAG_FIN, b"out")]
    server.finish(1)
    assert client.frames(server.data_to_send()) == [("DATA", 1, FLAG_FIN, b"")]
    assert server.sendable(3) == 0 and 1 not in server.open  # 1 is closed both ways
    assert 3 in server.open  # the client may still send on 3


def test_data_on_a_closed_or_unknown_stream_is_reset() -> None:
    client, server = Client(), Connection()
    server.receive(client.syn_stream(1, {"streamtype": "error"}, fin=True))
    assert server.receive(spdy.data_frame(1, b"late", False)) == []
    assert server.receive(spdy.data_frame(7, b"who", False)) == []
    resets = [
        struct.unpack(">II", p) for k, _, _, p in client.frames(server.data_to_send()) if k == "RST_STREAM"
    ]
    assert resets == [(1, spdy.Status.STREAM_ALREADY_CLOSED), (7, spdy.Status.INVALID_STREAM)]


@pytest.mark.parametrize("stream_id", [0, 2, 1])
def test_bad_stream_ids_end_the_session(stream_id: int) -> None:
    client, server = Client(), Connection()
    if stream_id == 1:  # a repeat: IDs must increase
        server.receive(client.syn_stream(1, {}))
    with pytest.raises(ProtocolError, match="stream ID"):
        server.receive(client.syn_stream(stream_id, {}))
    goaway = client.frames(server.data_to_send())[-1]
    assert goaway[0] == "GOAWAY" and struct.unpack(">II", goaway[3])[1] == spdy.GOAWAY_PROTOCOL_ERROR
    assert server.receive(client.syn_stream(5, {})) == []  # nothing more is read


def test_oversized_frames_and_decompression_bombs_are_refused() -> None:
    with pytest.raises(ProtocolError, match="at most"):
        Connection().receive(struct.pack(">II", 1, spdy.MAX_FRAME + 1))  # refused from the header alone
    client = Client()
    bomb = {"x": "a" * (spdy.MAX_HEADER_BLOCK * 4)}  # a few hundred bytes compressed
    frame = client.syn_stream(1, bomb)
    assert len(frame) < 2000
    with pytest.raises(ProtocolError, match="inflated"):
        Connection().receive(frame)
    with pytest.raises(ProtocolError, match="does not inflate"):
        Connection().receive(spdy.control(Type.SYN_STREAM, 0, b"\x00\x00\x00\x01" + b"\x00" * 6 + b"junk"))
    with pytest.raises(ProtocolError, match="version 2"):
        Connection().receive(struct.pack(">HHI", 0x8002, 1, 0))
    many = spdy.encode_header_block(tuple((f"h{i}", "") for i in range(spdy.MAX_HEADERS + 1)))
    deflate = zlib.compressobj(zdict=DICTIONARY)
    packed = deflate.compress(many) + deflate.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(ProtocolError, match="headers"):
        Connection().receive(spdy.control(Type.SYN_STREAM, 0, struct.pack(">IIH", 1, 0, 0) + packed))


def test_a_peer_that_keeps_windows_is_held_to_them() -> None:
    client, server = Client(), Connection()
    settings = spdy.control(
        Type.SETTINGS, 0, struct.pack(">III", 1, spdy.SETTINGS_INITIAL_WINDOW_SIZE, 20000)
    )
    server.receive(settings + client.syn_stream(1, {}))
    sent = 0
    while (room := server.sendable(1)) > 0:
        server.send(1, b"x" * room)
        sent += room
    assert sent == 20000
    with pytest.raises(Exception, match="window"):
        server.send(1, b"x")
    update = spdy.control(Type.WINDOW_UPDATE, 0, struct.pack(">II", 1, 5000))
    assert server.receive(update) == [WindowOpened(1)]
    assert server.sendable(1) == 5000
    # The session's window (3.1) holds too: 64 KiB across streams.
    server.receive(spdy.control(Type.WINDOW_UPDATE, 0, struct.pack(">II", 1, 100000)))
    assert server.sendable(1) == min(INITIAL_WINDOW - 20000, spdy.MAX_DATA_CHUNK)
    # An update past 2^31-1 (spdy-transport's first, on the session) holds the window at the maximum.
    server.receive(spdy.control(Type.WINDOW_UPDATE, 0, struct.pack(">II", 0, spdy.MAX_WINDOW)))
    assert server.send_windows[0] == spdy.MAX_WINDOW and not server.gone
    server.data_to_send()


def test_a_peer_without_windows_is_not_held_back() -> None:
    """Go's spdystream never sends WINDOW_UPDATE: output past 64 KiB must still flow."""
    client, server = Client(), Connection()
    server.receive(client.syn_stream(1, {}))
    for _ in range(10):
        server.send(1, b"y" * server.sendable(1))
    assert len(server.data_to_send()) > 10 * spdy.MAX_DATA_CHUNK


def test_what_the_server_consumes_it_gives_back() -> None:
    client, server = Client(), Connection()
    server.receive(client.syn_stream(1, {}))
    for _ in range(3):
        server.receive(spdy.data_frame(1, b"z" * 16384, False))
        server.consumed(1, 16384)
    updates = [
        struct.unpack(">II", p) for k, _, _, p in client.frames(server.data_to_send()) if k == "WINDOW_UPDATE"
    ]
    assert updates == [(1, 32768), (0, 32768)]


def test_ping_reset_and_goaway_from_the_peer() -> None:
    client, server = Client(), Connection()
    server.receive(client.syn_stream(1, {}))
    assert server.receive(spdy.control(Type.PING, 0, struct.pack(">I", 7))) == []
    assert client.frames(server.data_to_send()) == [("PING", Type.PING, 0, struct.pack(">I", 7))]
    assert server.receive(spdy.control(Type.RST_STREAM, 0, struct.pack(">II", 1, 5))) == [StreamReset(1, 5)]
    assert server.sendable(1) == 0
    assert server.receive(spdy.control(Type.GOAWAY, 0, struct.pack(">II", 1, 0))) == [GoneAway(1)]
    server.go_away()
    assert server.data_to_send() == b""  # the session is over already
