"""The agent wire protocol: framing, incremental decoding and hostile input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hyper.agent.protocol import (
    HEADER,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameKind,
    ProtocolError,
    decode_message,
    encode_frame,
    encode_message,
    require,
    sync_frame,
)


def test_frame_round_trip_keeps_kind_stream_and_payload() -> None:
    data = encode_frame(FrameKind.STDOUT, 7, b"hello")
    assert data[: HEADER.size] == HEADER.pack(3, 7, 5)
    assert FrameDecoder().feed(data) == [Frame(FrameKind.STDOUT, 7, b"hello")]


def test_message_round_trip() -> None:
    message: dict[str, Any] = {"type": "start", "id": 3, "args": ["sh", "-c", "echo é"], "tty": False}
    frames = FrameDecoder().feed(encode_message(message, stream=9))
    assert len(frames) == 1
    assert frames[0].kind is FrameKind.CONTROL
    assert frames[0].stream == 9
    assert decode_message(frames[0].payload) == message


def test_empty_payload_is_a_frame_of_its_own() -> None:
    assert FrameDecoder().feed(encode_frame(FrameKind.STDIN, 4, b"")) == [Frame(FrameKind.STDIN, 4, b"")]


def test_feeding_byte_by_byte_yields_each_frame_once_when_complete() -> None:
    data = encode_frame(FrameKind.STDERR, 2, b"abc") + encode_message({"type": "hello", "id": 1})
    decoder = FrameDecoder()
    frames: list[Frame] = []
    completed_at: list[int] = []
    for index in range(len(data)):
        got = decoder.feed(data[index : index + 1])
        if got:
            completed_at.append(index)
        frames += got
    assert frames[0] == Frame(FrameKind.STDERR, 2, b"abc")
    assert decode_message(frames[1].payload) == {"type": "hello", "id": 1}
    assert completed_at == [HEADER.size + 3 - 1, len(data) - 1]
    assert decoder.pending == 0


def test_several_frames_in_one_chunk_and_a_partial_tail() -> None:
    whole = [Frame(FrameKind.STDOUT, n, bytes([n]) * n) for n in range(1, 6)]
    data = b"".join(encode_frame(f.kind, f.stream, f.payload) for f in whole)
    tail = encode_frame(FrameKind.STDOUT, 99, b"later")
    decoder = FrameDecoder()
    assert decoder.feed(data + tail[:6]) == whole
    assert decoder.pending == 6
    assert decoder.feed(tail[6:]) == [Frame(FrameKind.STDOUT, 99, b"later")]
    assert decoder.pending == 0


def test_payload_at_the_bound_is_accepted() -> None:
    payload = b"x" * MAX_PAYLOAD
    assert FrameDecoder().feed(encode_frame(FrameKind.STDOUT, 1, payload))[0].payload == payload


def test_encoder_refuses_oversized_payload_and_bad_stream() -> None:
    with pytest.raises(ProtocolError):
        encode_frame(FrameKind.STDOUT, 1, b"x" * (MAX_PAYLOAD + 1))
    with pytest.raises(ProtocolError):
        encode_frame(FrameKind.STDOUT, -1, b"")
    with pytest.raises(ProtocolError):
        encode_frame(FrameKind.STDOUT, 1 << 32, b"")


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(HEADER.pack(int(FrameKind.STDOUT), 1, MAX_PAYLOAD + 1))


def test_custom_bound_is_honoured() -> None:
    decoder = FrameDecoder(max_payload=4)
    assert decoder.feed(encode_frame(FrameKind.STDOUT, 1, b"1234"))[0].payload == b"1234"
    with pytest.raises(ProtocolError):
        decoder.feed(HEADER.pack(int(FrameKind.STDOUT), 1, 5))


@pytest.mark.parametrize("kind", [0, 6, 255])
def test_unknown_kind_is_refused_before_its_payload_arrives(kind: int) -> None:
    with pytest.raises(ProtocolError, match="unknown frame kind"):
        FrameDecoder().feed(HEADER.pack(kind, 0, 10))


def test_a_bad_frame_after_good_ones_still_raises() -> None:
    data = encode_frame(FrameKind.STDOUT, 1, b"ok") + HEADER.pack(9, 0, 0)
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(data)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b'"hello"',
        b"42",
        b"null",
        b"{}",
        b'{"type": 1}',
        b'{"type": null}',
        b'{"type": ["hello"]}',
        b'{"id": 1}',
    ],
)
def test_decode_message_refuses_what_is_not_an_object_with_a_string_type(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_message(payload)


def test_decode_message_refuses_deeply_nested_json() -> None:
    # Well under MAX_PAYLOAD, so a hostile guest can send it.
    with pytest.raises(ProtocolError):
        decode_message(b"[" * 100_000)


def test_decode_message_returns_the_object() -> None:
    assert decode_message(json.dumps({"type": "exited", "status": 0}).encode()) == {
        "type": "exited",
        "status": 0,
    }


def test_require_returns_a_field_of_the_right_type() -> None:
    message: dict[str, Any] = {"type": "t", "id": 5, "name": "x", "args": [], "env": {}}
    assert require(message, "id", int) == 5
    assert require(message, "name", str) == "x"
    assert require(message, "args", list) == []
    assert require(message, "env", dict) == {}


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (True, int),
        (False, int),
        (1.0, int),
        ("1", int),
        (None, int),
        (1, str),
        ({}, list),
        ([], dict),
    ],
)
def test_require_refuses_the_wrong_type(value: object, kind: type) -> None:
    with pytest.raises(ProtocolError, match="'field'"):
        require({"type": "t", "field": value}, "field", kind)


def test_require_refuses_a_missing_field() -> None:
    with pytest.raises(ProtocolError):
        require({"type": "t"}, "id", int)


def test_bool_is_accepted_where_bool_is_asked() -> None:
    assert require({"type": "t", "tty": True}, "tty", bool) is True


def test_sync_frame_carries_its_nonce() -> None:
    nonce = bytes(range(16))
    [frame] = FrameDecoder().feed(sync_frame(nonce))
    assert (frame.kind, frame.stream, frame.payload) == (FrameKind.SYNC, 0, nonce)
