"""Fuzzing the host's side of the agent protocol: FrameDecoder, and
AgentClient's reading and dispatch over a socketpair to a guest that sends
anything. Whatever arrives, the only failure is the intended one (the
decoder's ProtocolError, the client's AgentConnectionLost), every waiter (a
pending request, a process's exit) is answered or failed once the channel
ends, and nothing is held without bound."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyper.agent.host import AgentClient, AgentConnectionLost, AgentRequestError
from hyper.agent.protocol import (
    HEADER,
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameKind,
    ProtocolError,
    decode_message,
    encode_frame,
    encode_message,
    sync_frame,
)
from tests.fuzz.conftest import corpus, fuzz_settings
from tests.fuzz.strategies import chunked, json_values

PROCESS = 7  # the stream the host has a process open on
REQUEST_ID = 2  # the id of the request the host waits on (the hello is 1)

# ---- the decoder --------------------------------------------------------------------------


@fuzz_settings(300)
@given(st.binary(max_size=3000), st.lists(st.integers(1, 700), max_size=5), st.integers(0, 200))
def test_decoder_raises_only_protocol_errors_and_holds_at_most_one_frame(
    data: bytes, sizes: list[int], max_payload: int
) -> None:
    decoder = FrameDecoder(max_payload)
    with contextlib.suppress(ProtocolError):
        for piece in chunked(data, sizes):
            for frame in decoder.feed(piece):
                assert len(frame.payload) <= max_payload
            assert decoder.pending < HEADER.size + max_payload  # never more than one frame's worth


frames = st.builds(
    lambda kind, stream, payload: (kind, stream, payload),
    st.sampled_from(list(FrameKind)),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=300),
)


@fuzz_settings(200)
@given(st.lists(frames, max_size=20), st.lists(st.integers(1, 400), max_size=5))
def test_decoder_returns_frames_as_they_were_sent_however_they_are_cut(
    sent: list[tuple[FrameKind, int, bytes]], sizes: list[int]
) -> None:
    wire = b"".join(encode_frame(kind, stream, payload) for kind, stream, payload in sent)
    decoder = FrameDecoder()
    got = [frame for piece in chunked(wire, sizes) for frame in decoder.feed(piece)]
    assert [(frame.kind, frame.stream, frame.payload) for frame in got] == sent
    assert decoder.pending == 0


# ---- the client ---------------------------------------------------------------------------

messages = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("response"), "id": st.sampled_from([REQUEST_ID, 1, 99, -1, "2", None, True, 2.0])},
        optional={"ok": json_values, "error": json_values, "errno": json_values, "stage": json_values},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("exited"),
            "process": st.sampled_from([PROCESS, 8, 0, -1, "7", None]),
            "status": st.sampled_from([0, 1, 255, 256, -1, True, "0", None, 1.5]),
        }
    ),
    st.dictionaries(st.sampled_from(["type", "id", "process"]), json_values, max_size=3),
    json_values.map(lambda value: {"type": "unknown", "value": value}),
)
events = st.one_of(
    messages.map(encode_message),
    st.tuples(
        st.sampled_from([FrameKind.STDOUT, FrameKind.STDERR]),
        st.sampled_from([PROCESS, 9]),
        st.binary(max_size=200),
    ).map(lambda frame: encode_frame(*frame)),
    st.tuples(
        st.sampled_from([FrameKind.STDIN, FrameKind.SYNC]), st.integers(0, 10), st.binary(max_size=20)
    ).map(lambda frame: encode_frame(*frame)),
    st.binary(max_size=40).map(lambda payload: encode_frame(FrameKind.CONTROL, 0, payload)),
    st.binary(min_size=1, max_size=40),  # raw bytes: not frames at all
    st.integers(0, 255).map(
        lambda kind: bytes([kind]) + (1).to_bytes(4, "big") + (1 << 31).to_bytes(4, "big")
    ),
)


async def _guest_side(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, before: bytes, stream: bytes
) -> None:
    """Answer the hello (after `before`, bytes an old connection left), wait for
    the host's request, then send `stream` and hang up."""
    decoder = FrameDecoder()
    seen: list[dict[str, Any]] = []
    while len(seen) < 2:  # the hello, then the request
        data = await reader.read(1 << 16)
        if not data:
            return
        for frame in decoder.feed(data):
            if frame.kind is FrameKind.CONTROL:
                message = decode_message(frame.payload)
                if message["type"] == "ack":
                    continue
                seen.append(message)
                if message["type"] == "hello":
                    writer.write(before + sync_frame(bytes.fromhex(message["nonce"])))
                    answer = {"type": "response", "id": message["id"], "ok": True}
                    writer.write(encode_message({**answer, "version": PROTOCOL_VERSION, "resume_from": 0}))
                    await writer.drain()
    for piece in chunked(stream, [997]):
        writer.write(piece)
        await writer.drain()
    writer.close()


async def _drain(client: AgentClient, channel: Any) -> None:
    """Read the process's output as a runtime does, so the client never blocks on it."""
    while True:
        if channel.output.empty() and channel.exit_status.done():
            return
        if await channel.output.get() is None:
            return


def run_client_case(before: bytes, stream: bytes) -> None:
    async def main() -> None:
        host_sock, guest_sock = socket.socketpair()
        host_reader, host_writer = await asyncio.open_unix_connection(sock=host_sock)
        guest_reader, guest_writer = await asyncio.open_unix_connection(sock=guest_sock)
        client = AgentClient(host_reader, host_writer)
        guest = asyncio.create_task(_guest_side(guest_reader, guest_writer, before, stream))
        try:
            channel = client.open_process(PROCESS)
            draining = asyncio.create_task(_drain(client, channel))
            await client.hello(10)
            with contextlib.suppress(AgentConnectionLost, AgentRequestError):
                await client.request("ping", 30)  # may fail, or be refused by a response in the stream
            await asyncio.wait_for(draining, 30)
            await asyncio.wait_for(guest, 30)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(client._read_task, 30)
            # The channel ended: it failed, everything waiting on it is answered,
            # and nothing but the intended error came out of the reader.
            assert isinstance(client.failure, AgentConnectionLost)
            assert client._read_task.exception() is None
            assert channel.exit_status.done()
            assert not client._pending and not client._processes
        finally:
            guest.cancel()
            await client.close()
            guest_writer.close()

    asyncio.run(main())


@pytest.mark.parametrize("seed", corpus("agent_frames"), ids=lambda path: path.name)
def test_corpus(seed: Path) -> None:
    run_client_case(b"", seed.read_bytes())


@fuzz_settings(200)
@given(st.binary(max_size=100) | st.just(b""), st.lists(events, max_size=12).map(b"".join))
def test_client_fails_cleanly_whatever_the_guest_sends(before: bytes, stream: bytes) -> None:
    run_client_case(before, stream)
