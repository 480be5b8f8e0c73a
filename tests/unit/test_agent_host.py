"""The host's agent client against a fake guest on the other end of a socketpair."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hyper.agent.host import AgentClient, AgentConnectionLost, AgentRequestError, ProcessChannel
from hyper.agent.protocol import (
    HEADER,
    MAX_DATA_CHUNK,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    STDIN_WINDOW,
    Frame,
    FrameDecoder,
    FrameKind,
    decode_message,
    encode_frame,
    encode_message,
    sync_frame,
)
from hyper.errors import Category, DeadlineExceeded

TEST_TIMEOUT = 10.0


class FakeGuest:
    """The guest's end of the channel, driven step by step by a test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    async def read_frame(self) -> Frame:
        while not self.frames:
            data = await self.reader.read(1 << 16)
            if not data:
                raise EOFError("the host closed the channel")
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)

    async def read_message(self) -> dict[str, Any]:
        frame = await self.read_frame()
        assert frame.kind is FrameKind.CONTROL
        return decode_message(frame.payload)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, request: dict[str, Any], **fields: Any) -> None:
        await self.send(encode_message({"type": "response", "id": request["id"], **fields}))

    async def answer_hello(self, request: dict[str, Any], *, before: bytes = b"", **fields: Any) -> None:
        """What the agent does: the SYNC frame with the hello's nonce, then the answer."""
        answer = {"ok": True, "version": PROTOCOL_VERSION, "kernel": "6.1.0-test", "resume_from": 0, **fields}
        await self.send(before + sync_frame(bytes.fromhex(request["nonce"])))
        await self.reply(request, **answer)

    def close(self) -> None:
        self.writer.close()


async def connect() -> tuple[AgentClient, FakeGuest]:
    host_sock, guest_sock = socket.socketpair()
    host_reader, host_writer = await asyncio.open_unix_connection(sock=host_sock)
    guest_reader, guest_writer = await asyncio.open_unix_connection(sock=guest_sock)
    return AgentClient(host_reader, host_writer), FakeGuest(guest_reader, guest_writer)


async def handshake(client: AgentClient, guest: FakeGuest) -> None:
    greeting = asyncio.create_task(client.hello(5))
    await guest.answer_hello(await guest.read_message())
    await greeting
    assert (await guest.read_message())["type"] == "ack"  # the answer itself is acknowledged


def run(scenario: Callable[[AgentClient, FakeGuest], Awaitable[None]], *, greet: bool = True) -> None:
    """Run `scenario` against a fake guest, after a hello unless `greet` is false."""

    async def main() -> None:
        client, guest = await connect()
        if greet:
            await asyncio.wait_for(handshake(client, guest), TEST_TIMEOUT)
        try:
            await asyncio.wait_for(scenario(client, guest), TEST_TIMEOUT)
        finally:
            await client.close()
            guest.close()

    asyncio.run(main())


def test_hello_sends_the_version_and_returns_the_reply() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        hello = asyncio.create_task(client.hello(5))
        request = await guest.read_message()
        assert request["type"] == "hello"
        assert request["version"] == PROTOCOL_VERSION
        assert isinstance(request["id"], int)
        assert len(bytes.fromhex(request["nonce"])) == 16 and request["resume"] is None
        await guest.answer_hello(request, log=[])
        reply = await hello
        assert reply["kernel"] == "6.1.0-test"
        assert client.failure is None
        assert client.received_offset == len(encode_message({**reply}))

    run(scenario, greet=False)


def test_requests_get_distinct_ids_and_answers_out_of_order_reach_their_callers() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        first = asyncio.create_task(client.request("one", 5))
        second = asyncio.create_task(client.request("two", 5))
        request_one = await guest.read_message()
        request_two = await guest.read_message()
        assert request_one["id"] != request_two["id"]
        await guest.reply(request_two, ok=True, answer=2)
        await guest.reply(request_one, ok=True, answer=1)
        assert (await first)["answer"] == 1
        assert (await second)["answer"] == 2

    run(scenario)


def test_hello_with_another_version_is_refused() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        hello = asyncio.create_task(client.hello(5))
        request = await guest.read_message()
        await guest.answer_hello(request, version=PROTOCOL_VERSION + 1)
        with pytest.raises(AgentConnectionLost) as caught:
            await hello
        assert caught.value.category is Category.UNAVAILABLE
        assert caught.value.hint is not None
        assert str(PROTOCOL_VERSION + 1) in caught.value.message

    run(scenario, greet=False)


def test_refused_request_raises_with_stage_and_errno() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        start = asyncio.create_task(client.request("start", 5, process=1))
        request = await guest.read_message()
        assert request["process"] == 1
        await guest.reply(request, ok=False, error="exec: not found", stage="exec", errno=2)
        with pytest.raises(AgentRequestError) as caught:
            await start
        assert (caught.value.stage, caught.value.errno) == ("exec", 2)
        assert caught.value.message == "exec: not found"
        assert caught.value.category is Category.FAILED_PRECONDITION
        assert client.failure is None  # a refusal is not a broken channel

    run(scenario)


@pytest.mark.parametrize(
    "fields",
    [
        {"error": "x", "stage": 5, "errno": "2"},
        {"ok": "yes"},
        {"ok": 1},
    ],
)
def test_a_reply_without_ok_true_is_a_refusal_with_only_well_typed_details(fields: dict[str, Any]) -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        pending = asyncio.create_task(client.request("mount", 5))
        await guest.reply(await guest.read_message(), **fields)
        with pytest.raises(AgentRequestError) as caught:
            await pending
        assert caught.value.stage is None
        assert caught.value.errno is None

    run(scenario)


def test_no_answer_is_deadline_exceeded() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        pending = asyncio.create_task(client.request("slow", 0.05))
        assert (await guest.read_message())["type"] == "slow"
        with pytest.raises(DeadlineExceeded):
            await pending

    run(scenario)


HOSTILE = {
    "garbage": b"\x09garbage bytes that are no frame",
    "oversize": HEADER.pack(int(FrameKind.STDOUT), 5, MAX_PAYLOAD + 1),
    "unknown_response": encode_message({"type": "response", "id": 12345, "ok": True}),
    "exit_status_300": encode_message({"type": "exited", "process": 5, "status": 300}),
    "exit_status_negative": encode_message({"type": "exited", "process": 5, "status": -1}),
    "exit_status_bool": encode_message({"type": "exited", "process": 5, "status": True}),
    "stdin_from_guest": encode_frame(FrameKind.STDIN, 5, b"x"),
    "not_json": encode_frame(FrameKind.CONTROL, 0, b"{nope"),
    "no_type": encode_frame(FrameKind.CONTROL, 0, b'{"id": 1, "ok": true}'),
    "unexpected_type": encode_message({"type": "surprise"}),
    "response_id_string": encode_message({"type": "response", "id": "1", "ok": True}),
}


@pytest.mark.parametrize("hostile", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_frame_fails_pending_requests_and_processes(hostile: bytes) -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        channel = client.open_process(5)
        pending = asyncio.create_task(client.request("start", 5, process=5))
        await guest.read_message()
        await guest.send(hostile)
        with pytest.raises(AgentConnectionLost):
            await pending
        with pytest.raises(AgentConnectionLost):
            await channel.exit_status
        assert await channel.output.get() is None
        assert isinstance(client.failure, AgentConnectionLost)
        with pytest.raises(AgentConnectionLost):
            await client.request("hello", 5)
        with pytest.raises(EOFError):  # the host closed its end
            await guest.read_frame()

    run(scenario)


def test_deeply_nested_json_from_the_guest_is_a_protocol_error() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        pending = asyncio.create_task(client.request("start", 1.0))
        await guest.read_message()
        await guest.send(encode_frame(FrameKind.CONTROL, 0, b"[" * 100_000))
        with pytest.raises(AgentConnectionLost):
            await pending

    run(scenario)


def test_guest_closing_the_channel_fails_pending_requests_and_processes() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        channel = client.open_process(2)
        pending = asyncio.create_task(client.request("start", 5))
        await guest.read_message()
        guest.close()
        with pytest.raises(AgentConnectionLost, match="closed"):
            await pending
        with pytest.raises(AgentConnectionLost):
            await channel.exit_status
        assert await channel.output.get() is None

    run(scenario)


async def collect(channel: ProcessChannel) -> list[tuple[FrameKind, bytes]]:
    items = []
    while (item := await channel.output.get()) is not None:
        items.append(item[:2])
    return items


def test_output_arrives_in_order_then_none_after_exited() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        channel = client.open_process(3)
        other = client.open_process(4)
        frames = [
            encode_frame(FrameKind.STDOUT, 3, b"one"),
            encode_frame(FrameKind.STDERR, 3, b"two"),
            encode_frame(FrameKind.STDOUT, 4, b"other"),
            encode_frame(FrameKind.STDOUT, 99, b"nobody's"),
            encode_frame(FrameKind.STDOUT, 3, b"three"),
            encode_frame(FrameKind.STDOUT, 3, b""),
            encode_message({"type": "exited", "process": 3, "status": 7}),
        ]
        await guest.send(b"".join(frames))
        assert await collect(channel) == [
            (FrameKind.STDOUT, b"one"),
            (FrameKind.STDERR, b"two"),
            (FrameKind.STDOUT, b"three"),
        ]
        assert await channel.exit_status == 7
        item = await other.output.get()
        assert item is not None and item[:2] == (FrameKind.STDOUT, b"other")
        assert not other.exit_status.done()
        assert client.failure is None

    run(scenario)


def test_exited_for_an_unknown_process_is_ignored() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        await guest.send(encode_message({"type": "exited", "process": 42, "status": 0}))
        pending = asyncio.create_task(client.request("ping", 5))
        await guest.reply(await guest.read_message(), ok=True)
        assert (await pending)["ok"] is True
        assert client.failure is None

    run(scenario)


def test_write_stdin_is_cut_into_bounded_frames_in_order() -> None:
    data = os.urandom(200 * 1024)

    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        async def receive() -> list[Frame]:
            frames: list[Frame] = []
            while sum(len(f.payload) for f in frames) < len(data) or frames[-1].payload:
                frames.append(await guest.read_frame())
            return frames

        async def send() -> None:
            await client.write_stdin(6, data)
            await client.close_stdin(6)

        client.open_process(6)
        frames, _ = await asyncio.gather(receive(), send())
        assert all(f.kind is FrameKind.STDIN and f.stream == 6 for f in frames)
        assert all(len(f.payload) <= MAX_DATA_CHUNK for f in frames)
        assert len(frames) == 5  # 64 + 64 + 64 + 8 KiB, then end-of-file
        assert frames[-1].payload == b""
        assert b"".join(f.payload for f in frames) == data

    run(scenario)


def test_stdin_beyond_the_window_waits_for_the_agents_credit() -> None:
    data = os.urandom(STDIN_WINDOW + 100_000)

    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        client.open_process(6)
        writer = asyncio.create_task(client.write_stdin(6, data))
        received = bytearray()
        while len(received) < STDIN_WINDOW:
            received += (await guest.read_frame()).payload
        assert len(received) == STDIN_WINDOW  # the window, and not a byte more
        await asyncio.sleep(0)
        assert not writer.done()
        await guest.send(encode_message({"type": "stdin_credit", "process": 6, "bytes": 100_000}))
        while len(received) < len(data):
            received += (await guest.read_frame()).payload
        await writer
        assert bytes(received) == data

    run(scenario)


def test_a_stdin_writer_waiting_for_credit_stops_when_the_process_exits() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        channel = client.open_process(6)
        writer = asyncio.create_task(client.write_stdin(6, os.urandom(STDIN_WINDOW + 1)))
        received = 0
        while received < STDIN_WINDOW:
            received += len((await guest.read_frame()).payload)
        await guest.send(encode_message({"type": "exited", "process": 6, "status": 0}))
        await writer  # returns: what is left is dropped, nobody reads it
        assert await channel.exit_status == 0

    run(scenario)


@pytest.mark.parametrize("credit", [0, -1, STDIN_WINDOW + 1])
def test_stdin_credit_out_of_range_breaks_the_protocol(credit: int) -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        channel = client.open_process(6)
        await guest.send(encode_message({"type": "stdin_credit", "process": 6, "bytes": credit}))
        with pytest.raises(AgentConnectionLost):
            await channel.exit_status

    run(scenario)


def test_writing_after_the_channel_failed_raises_the_failure() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        guest.close()
        while client.failure is None:
            await asyncio.sleep(0.01)
        with pytest.raises(AgentConnectionLost) as caught:
            await client.write_stdin(1, b"late")
        assert caught.value is client.failure

    run(scenario)


def test_bytes_before_the_sync_frame_are_skipped() -> None:
    # What an earlier connection left in QEMU's buffers: half a frame, garbage.
    stale = encode_frame(FrameKind.STDOUT, 1, b"old output")[:7] + b"\xff" * 50

    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        greeting = asyncio.create_task(client.hello(5))
        await guest.answer_hello(await guest.read_message(), before=stale)
        assert (await greeting)["ok"] is True
        assert client.failure is None

    run(scenario, greet=False)


def test_resume_is_sent_and_offsets_continue_from_it() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        greeting = asyncio.create_task(client.hello(5, resume=4242))
        request = await guest.read_message()
        assert request["resume"] == 4242
        await guest.answer_hello(request, resume_from=4242)
        reply = await greeting
        assert client.received_offset == 4242 + len(encode_message(reply))

    run(scenario, greet=False)


def test_output_is_acknowledged_as_it_is_consumed() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        channel = client.open_process(3)
        chunk = b"z" * 60_000
        for _ in range(6):  # 360 KB: more than one acknowledgement interval
            await guest.send(encode_frame(FrameKind.STDOUT, 3, chunk))
        offsets = []
        for _ in range(6):
            item = await channel.output.get()
            assert item is not None and item[:2] == (FrameKind.STDOUT, chunk)
            offsets.append(item[2])
        # Each item says where the guest's stream stands after it.
        first = offsets[0]
        assert first is not None
        assert offsets == [first + i * (HEADER.size + len(chunk)) for i in range(6)]
        ack = await guest.read_message()
        assert ack["type"] == "ack" and ack["offset"] <= (client.received_offset or 0)
        assert ack["offset"] >= 256 * 1024

    run(scenario)


def test_a_guest_without_a_valid_resume_from_is_refused() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        greeting = asyncio.create_task(client.hello(5))
        await guest.answer_hello(await guest.read_message(), resume_from=-1)
        with pytest.raises(AgentConnectionLost):
            await greeting

    run(scenario, greet=False)


def test_without_auto_ack_only_the_owner_acknowledges() -> None:
    async def main() -> None:
        host_sock, guest_sock = socket.socketpair()
        host_reader, host_writer = await asyncio.open_unix_connection(sock=host_sock)
        guest_reader, guest_writer = await asyncio.open_unix_connection(sock=guest_sock)
        client = AgentClient(host_reader, host_writer, auto_ack=False)
        guest = FakeGuest(guest_reader, guest_writer)
        try:
            greeting = asyncio.create_task(client.hello(5))
            await guest.answer_hello(await guest.read_message())
            await greeting
            channel = client.open_process(1)
            await guest.send(encode_frame(FrameKind.STDOUT, 1, b"x" * 300_000))
            item = await channel.output.get()
            assert item is not None and item[2] is not None and item[2] == client.received_offset
            with pytest.raises(TimeoutError):  # nothing acknowledged on its own
                await asyncio.wait_for(guest.read_message(), 0.3)
            client.acknowledge(item[2])
            assert await guest.read_message() == {"type": "ack", "offset": item[2]}
        finally:
            await client.close()
            guest.close()

    asyncio.run(main())


def test_replayed_answers_to_an_earlier_connection_are_ignored() -> None:
    async def scenario(client: AgentClient, guest: FakeGuest) -> None:
        greeting = asyncio.create_task(client.hello(5, resume=100))
        request = await guest.read_message()
        stale = encode_message({"type": "response", "id": 999, "ok": True})
        await guest.send(sync_frame(bytes.fromhex(request["nonce"])) + stale)
        await guest.reply(request, ok=True, version=PROTOCOL_VERSION, kernel="k", resume_from=100)
        await greeting
        assert client.failure is None

    run(scenario, greet=False)
