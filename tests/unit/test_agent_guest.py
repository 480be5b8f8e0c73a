"""The guest agent's request loop, run on the host over a socketpair.

The agent installs a SIGCHLD handler and a signal wakeup fd, which only work
in the main thread, so it runs in the test's own thread and the fake host in
a background one. A watchdog ends a run that would otherwise hang.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hyper.agent.guest import Agent
from hyper.agent.guest_container import Container
from hyper.agent.protocol import (
    HEADER,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameKind,
    decode_message,
    encode_frame,
    encode_message,
)

WATCHDOG_SECONDS = 5.0


NONCE = bytes(range(16))


def hello(request_id: int, **fields: Any) -> dict[str, Any]:
    return {"type": "hello", "id": request_id, "version": PROTOCOL_VERSION, "nonce": NONCE.hex(), **fields}


def read_messages(sock: socket.socket, count: int, syncs: list[bytes] | None = None) -> list[dict[str, Any]]:
    """`count` control messages; SYNC frames go to `syncs` (their payloads)."""
    decoder = FrameDecoder()
    messages: list[dict[str, Any]] = []
    while len(messages) < count:
        data = sock.recv(1 << 16)
        if not data:
            break
        for frame in decoder.feed(data):
            if frame.kind is FrameKind.SYNC:
                if syncs is not None:
                    syncs.append(frame.payload)
                continue
            assert frame.kind is FrameKind.CONTROL
            messages.append(decode_message(frame.payload))
    return messages


@dataclass
class Session:
    agent: Agent
    host: socket.socket
    replies: list[dict[str, Any]] = field(default_factory=list)
    host_error: BaseException | None = None
    watchdog_fired: bool = False


class AgentHarness:
    """Runs an Agent in the main thread against a scripted host in another thread."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self._agents: list[Agent] = []

    def run(
        self,
        host_script: Callable[[socket.socket], list[dict[str, Any]]],
        *,
        watchdog: float = WATCHDOG_SECONDS,
        before_run: Callable[[socket.socket], None] | None = None,
    ) -> Session:
        host_sock, agent_sock = socket.socketpair()
        self._sockets += [host_sock, agent_sock]
        host_sock.settimeout(WATCHDOG_SECONDS)
        agent = Agent(agent_sock.fileno(), ["booted for a test"], reconnect=False)
        self._agents.append(agent)
        session = Session(agent, host_sock)

        def host() -> None:
            try:
                session.replies = host_script(host_sock)
            except BaseException as exc:
                session.host_error = exc

        def fire() -> None:
            session.watchdog_fired = True
            agent.running = False
            with contextlib.suppress(OSError):
                host_sock.shutdown(socket.SHUT_RDWR)

        if before_run is not None:
            before_run(host_sock)
        thread = threading.Thread(target=host, daemon=True)
        timer = threading.Timer(watchdog, fire)
        thread.start()
        timer.start()
        try:
            agent.run()
        finally:
            timer.cancel()
            thread.join(WATCHDOG_SECONDS)
        if session.host_error is not None:
            raise session.host_error
        return session

    def close(self) -> None:
        for agent in self._agents:
            agent.selector.close()
            for fd in (agent._wakeup_r, agent._wakeup_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def harness() -> Iterator[AgentHarness]:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("the agent's signal set-up needs the main thread")
    old_handler = signal.getsignal(signal.SIGCHLD)
    old_wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(old_wakeup)
    harness = AgentHarness()
    try:
        yield harness
    finally:
        signal.set_wakeup_fd(old_wakeup)
        signal.signal(signal.SIGCHLD, old_handler)
        harness.close()


def ask(*requests: dict[str, Any]) -> Callable[[socket.socket], list[dict[str, Any]]]:
    """A host that sends `requests`, reads one reply each, then hangs up."""

    def script(sock: socket.socket) -> list[dict[str, Any]]:
        sock.sendall(b"".join(encode_message(r) for r in requests))
        replies = read_messages(sock, len(requests))
        sock.shutdown(socket.SHUT_WR)
        return replies

    return script


def test_hello_is_answered_with_version_kernel_and_boot_log(harness: AgentHarness) -> None:
    syncs: list[bytes] = []

    def host(sock: socket.socket) -> list[dict[str, Any]]:
        sock.sendall(encode_message(hello(1)))
        replies = read_messages(sock, 1, syncs)
        sock.shutdown(socket.SHUT_WR)
        return replies

    session = harness.run(host)
    assert not session.watchdog_fired
    assert syncs == [NONCE]  # the SYNC frame, carrying the hello's nonce, came first
    [reply] = session.replies
    assert reply["resume_from"] == 0
    assert reply["type"] == "response"
    assert reply["id"] == 1
    assert reply["ok"] is True
    assert reply["version"] == PROTOCOL_VERSION
    assert reply["kernel"] == os.uname().release
    assert reply["log"] == ["booted for a test"]


def test_hello_sent_before_the_agent_runs_is_answered(harness: AgentHarness) -> None:
    def early(sock: socket.socket) -> None:
        sock.sendall(encode_message(hello(4)))

    def host(sock: socket.socket) -> list[dict[str, Any]]:
        replies = read_messages(sock, 1)
        sock.shutdown(socket.SHUT_WR)
        return replies

    session = harness.run(host, before_run=early)
    assert [(r["id"], r["ok"]) for r in session.replies] == [(4, True)]


def test_hello_with_another_version_is_refused(harness: AgentHarness) -> None:
    session = harness.run(ask(hello(2, version=PROTOCOL_VERSION + 1)))
    [reply] = session.replies
    assert reply["id"] == 2
    assert reply["ok"] is False
    assert str(PROTOCOL_VERSION + 1) in reply["error"]


def test_unknown_request_is_refused_and_the_connection_stays_up(harness: AgentHarness) -> None:
    session = harness.run(
        ask(
            {"type": "format_disk", "id": 7},
            hello(8),
        )
    )
    assert not session.watchdog_fired
    refused, greeted = session.replies
    assert (refused["id"], refused["ok"]) == (7, False)
    assert "format_disk" in refused["error"]
    assert (greeted["id"], greeted["ok"]) == (8, True)


def test_badly_typed_or_unknown_targets_are_refused_not_fatal(harness: AgentHarness) -> None:
    session = harness.run(
        ask(
            {"type": "hello", "id": 1, "version": "1"},
            {"type": "start", "id": 2, "process": 1, "container": "nope", "args": ["sh"], "env": []},
            {"type": "signal", "id": 3, "process": 99, "signal": 15},
            {"type": "resize", "id": 4, "process": 99, "rows": 10, "cols": 20},
            {"type": "signal", "id": 5, "process": True, "signal": 15},
        )
    )
    assert [(r["id"], r["ok"]) for r in session.replies] == [
        (1, False),
        (2, False),
        (3, True),
        (4, True),
        (5, False),
    ]


def test_setup_keeps_only_the_etc_files_a_container_gets(harness: AgentHarness) -> None:
    etc = {"hosts": "127.0.0.1 localhost\n", "resolv.conf": "nameserver 10.0.0.1\n", "passwd": "root::0:0"}
    session = harness.run(ask({"type": "setup", "id": 1, "hostname": "box", "etc_files": etc}))
    assert session.replies[0]["ok"] is True
    assert session.agent.hostname == "box"
    assert session.agent.etc_files == {"hosts": etc["hosts"], "resolv.conf": etc["resolv.conf"]}


@pytest.mark.parametrize(
    "malformed",
    [
        b"\x09" + b"\0" * 8,
        HEADER.pack(int(FrameKind.CONTROL), 0, 1 << 30),
        encode_frame(FrameKind.CONTROL, 0, b"not json"),
        encode_frame(FrameKind.CONTROL, 0, b'{"id": 1}'),
        encode_frame(FrameKind.STDOUT, 1, b"the host sends no output"),
    ],
    ids=["unknown-kind", "oversize", "not-json", "no-type", "stdout-from-host"],
)
def test_a_malformed_frame_drops_the_connection(harness: AgentHarness, malformed: bytes) -> None:
    def host(sock: socket.socket) -> list[dict[str, Any]]:
        # The hello after the bad frame must never be answered; the host
        # does not hang up, so only the agent can end the run.
        sock.sendall(malformed + encode_message(hello(1)))
        return []

    session = harness.run(host)
    assert not session.watchdog_fired
    assert not session.agent.connected
    session.host.setblocking(False)
    with pytest.raises(BlockingIOError):
        session.host.recv(1 << 16)


def test_run_returns_when_the_host_hung_up_before_it_started(harness: AgentHarness) -> None:
    def hang_up(sock: socket.socket) -> None:
        sock.shutdown(socket.SHUT_RDWR)

    session = harness.run(lambda sock: [], before_run=hang_up, watchdog=1.0)
    assert not session.watchdog_fired


@pytest.fixture
def manual_agent(harness: AgentHarness) -> Iterator[tuple[Agent, socket.socket]]:
    """An agent driven step by step in this thread: no run loop, no timing."""
    host_sock, agent_sock = socket.socketpair()
    host_sock.settimeout(WATCHDOG_SECONDS)
    agent = Agent(agent_sock.fileno(), [], reconnect=True)
    harness._agents.append(agent)
    harness._sockets += [host_sock, agent_sock]
    agent.connected = True
    yield agent, host_sock


def _frames(sock: socket.socket, until_control: int) -> list[Frame]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    while sum(f.kind is FrameKind.CONTROL for f in frames) < until_control:
        frames += decoder.feed(sock.recv(1 << 16))
    return frames


def test_resume_replays_what_the_host_did_not_get(manual_agent: tuple[Agent, socket.socket]) -> None:
    agent, host = manual_agent
    agent._receive(encode_message(hello(1)))
    [sync, answer] = _frames(host, 1)
    assert (sync.kind, sync.payload) == (FrameKind.SYNC, NONCE)
    start = decode_message(answer.payload)["resume_from"]
    after_answer = start + len(HEADER.pack(0, 0, 0)) + len(answer.payload)
    agent.send_data(FrameKind.STDOUT, 7, b"one")
    agent.send_data(FrameKind.STDOUT, 7, b"two")
    read = _read_available(host)
    assert b"one" in read and b"two" in read
    # The host goes away having kept only "one"; a new one resumes after it.
    agent._disconnected()
    agent.connected = True
    resume = after_answer + len(encode_frame(FrameKind.STDOUT, 7, b"one"))
    agent._receive(encode_message(hello(2, resume=resume)))
    frames = _frames(host, 1)
    assert [f.kind for f in frames] == [FrameKind.SYNC, FrameKind.STDOUT, FrameKind.CONTROL]
    assert frames[1].payload == b"two"  # replayed once, "one" not again
    assert decode_message(frames[2].payload)["resume_from"] == resume


def test_acknowledged_output_is_forgotten_and_a_resume_below_it_starts_after_it(
    manual_agent: tuple[Agent, socket.socket],
) -> None:
    agent, host = manual_agent
    agent._receive(encode_message(hello(1)))
    _frames(host, 1)
    agent.send_data(FrameKind.STDOUT, 1, b"x" * 1000)
    _read_available(host)
    end = agent.stream_end
    agent._receive(encode_message({"type": "ack", "offset": end}))
    assert agent.retained == bytearray() and agent.retained_base == end
    agent.send_data(FrameKind.STDOUT, 1, b"after")
    _read_available(host)  # sent, not acknowledged: the connection drops
    agent._disconnected()
    agent.connected = True
    # A host that logged less than it acknowledged (hyperd acknowledges execs'
    # output it never logs) resumes from its log: it gets what follows its ack.
    agent._receive(encode_message(hello(2, resume=0)))
    frames = _frames(host, 1)
    assert [f.kind for f in frames] == [FrameKind.SYNC, FrameKind.STDOUT, FrameKind.CONTROL]
    assert frames[1].payload == b"after"
    assert decode_message(frames[2].payload)["resume_from"] == end


def test_a_resume_past_the_stream_is_refused(manual_agent: tuple[Agent, socket.socket]) -> None:
    agent, host = manual_agent
    agent._receive(encode_message(hello(1)))
    _frames(host, 1)
    agent._disconnected()
    agent.connected = True
    agent._receive(encode_message(hello(2, resume=agent.stream_end + 10)))
    frames = _frames(host, 1)
    assert frames[0].kind is FrameKind.SYNC  # the answer is still found after the sync
    reply = decode_message(frames[-1].payload)
    assert reply["ok"] is False and "cannot resume" in reply["error"]


def test_a_fresh_host_skips_the_past(manual_agent: tuple[Agent, socket.socket]) -> None:
    agent, host = manual_agent
    agent._receive(encode_message(hello(1)))
    _frames(host, 1)
    agent.send_data(FrameKind.STDOUT, 1, b"old output")
    _read_available(host)
    agent._disconnected()
    agent.connected = True
    agent._receive(encode_message(hello(2)))  # no resume: a host with no past
    frames = _frames(host, 1)
    assert [f.kind for f in frames] == [FrameKind.SYNC, FrameKind.CONTROL]
    assert agent.retained_base == decode_message(frames[1].payload)["resume_from"]


def _read_available(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    chunks = []
    try:
        while True:
            chunks.append(sock.recv(1 << 16))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(WATCHDOG_SECONDS)
    return b"".join(chunks)


def test_a_request_that_breaks_a_handler_is_refused_not_fatal(harness: AgentHarness) -> None:
    # layers=[1] makes the handler index an int (TypeError): once that killed PID 1,
    # and with it the VM.
    session = harness.run(
        ask(
            {"type": "mount_container", "id": 1, "container": "c1", "layers": [1], "writable": {}},
            hello(2),
        )
    )
    broken, greeted = session.replies
    assert (broken["id"], broken["ok"]) == (1, False)
    assert (greeted["id"], greeted["ok"]) == (2, True)


def _ask(agent: Agent, host: socket.socket, request: dict[str, Any]) -> dict[str, Any]:
    agent._receive(encode_message(request))
    return decode_message(_frames(host, 1)[-1].payload)


def test_container_requests_refuse_with_a_stage_and_errno(
    manual_agent: tuple[Agent, socket.socket], tmp_path: Path
) -> None:
    agent, host = manual_agent
    agent.containers["c1"] = Container("c1", str(tmp_path))  # mounted, never started
    exec_fields = {"process": 9, "args": ["true"], "env": []}
    unknown = _ask(agent, host, {"type": "exec", "id": 1, "container": "c9", **exec_fields})
    idle = _ask(agent, host, {"type": "exec", "id": 2, "container": "c1", **exec_fields})
    top = _ask(agent, host, {"type": "top", "id": 3, "container": "c1"})
    missing = _ask(
        agent, host, {"type": "archive_get", "id": 4, "container": "c1", "process": 9, "path": "/x"}
    )
    (tmp_path / "f").write_text("")
    not_dir = _ask(
        agent, host, {"type": "archive_put", "id": 5, "container": "c1", "process": 9, "path": "/f"}
    )
    assert (unknown["ok"], unknown["stage"], unknown["errno"]) == (False, "container", errno.ENOENT)
    assert (idle["ok"], idle["stage"], idle["errno"]) == (False, "container", errno.ESRCH)
    assert idle["error"] == "container c1 is not running"
    assert (top["ok"], top["stage"], top["errno"]) == (False, "container", errno.ESRCH)
    assert (missing["ok"], missing["stage"], missing["errno"]) == (False, "archive", errno.ENOENT)
    assert (not_dir["ok"], not_dir["stage"], not_dir["errno"]) == (False, "archive", errno.ENOTDIR)
    assert agent.processes == {}
    assert agent.containers["c1"].main is None


def test_archive_put_runs_a_child_on_its_stream(
    manual_agent: tuple[Agent, socket.socket], tmp_path: Path
) -> None:
    agent, host = manual_agent
    agent.containers["c1"] = Container("c1", str(tmp_path))
    reply = _ask(agent, host, {"type": "archive_put", "id": 1, "container": "c1", "process": 9, "path": "/"})
    assert reply["ok"] is True
    process = agent.processes[9]
    assert process.stdin_fd is not None and process.init_pid == process.shim_pid
    agent._handle_stdin(9, b"")  # EOF at once: not a tar (or, without root, no chroot)
    _, status = os.waitpid(process.shim_pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    for fd in list(process.outputs):
        agent._close_fd(fd)


def test_archive_stat_of_a_container_that_never_started_reads_its_rootfs(
    manual_agent: tuple[Agent, socket.socket], tmp_path: Path
) -> None:
    agent, host = manual_agent
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("box\n")
    (tmp_path / "hn").symlink_to("/etc/hostname")
    agent.containers["c1"] = Container("c1", str(tmp_path))
    reply = _ask(agent, host, {"type": "archive_stat", "id": 1, "container": "c1", "path": "/hn"})
    assert reply["ok"] is True
    assert (reply["name"], reply["size"], reply["link_target"]) == (
        "hn",
        len("/etc/hostname"),
        "/etc/hostname",
    )
    assert stat.S_ISLNK(reply["mode"])
    missing = _ask(agent, host, {"type": "archive_stat", "id": 2, "container": "c1", "path": "/hn/x"})
    assert (missing["ok"], missing["stage"], missing["errno"]) == (False, "archive", errno.ENOTDIR)


def test_stats_are_answered_from_proc(manual_agent: tuple[Agent, socket.socket]) -> None:
    agent, host = manual_agent
    reply = _ask(agent, host, {"type": "stats", "id": 1})
    assert reply["ok"] is True
    assert set(reply) >= {"cpu", "memory", "disks", "networks", "pids"}
    assert reply["cpu"]["online_cpus"] >= 1
    assert reply["memory"]["total"] > 0
    assert "lo" not in reply["networks"]


def test_stdin_is_credited_back_as_the_process_reads_it(harness: AgentHarness) -> None:
    """The host sends a window's worth; credits come back as the pipe's reader
    takes it, adding up to every byte, and the data arrives intact."""
    from hyper.agent.guest_process import Process
    from hyper.agent.protocol import STDIN_WINDOW

    data = os.urandom(STDIN_WINDOW)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    received = bytearray()
    credits: list[int] = []

    def before_run(sock: socket.socket) -> None:
        process = Process(7, os.getpid(), os.getpid())
        process.stdin_fd = write_end
        harness_agent = harness._agents[-1]
        harness_agent.processes[7] = process
        harness_agent.by_fd[write_end] = process

    def host(sock: socket.socket) -> list[dict[str, Any]]:
        sock.sendall(encode_message(hello(1)))
        read_messages(sock, 1)
        frames = (encode_frame(FrameKind.STDIN, 7, data[i : i + 65536]) for i in range(0, len(data), 65536))
        sock.sendall(b"".join(frames))
        decoder = FrameDecoder()
        while sum(credits) < len(data):
            while len(received) < len(data) and (chunk := os.read(read_end, 4096)):
                received.extend(chunk)  # a slow reader, 4 KiB at a time
                if len(received) % (64 * 1024) == 0:
                    break
            sock.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                for frame in decoder.feed(sock.recv(1 << 16)):
                    message = decode_message(frame.payload)
                    if message["type"] == "stdin_credit":
                        assert message["process"] == 7
                        credits.append(message["bytes"])
        while len(received) < len(data):  # credited once in the pipe: the rest is there
            received.extend(os.read(read_end, 65536))
        sock.shutdown(socket.SHUT_WR)
        return []

    session = harness.run(host, before_run=before_run)
    os.close(read_end)
    assert not session.watchdog_fired
    assert bytes(received) == data
    assert sum(credits) == len(data)
    assert all(0 < c <= STDIN_WINDOW for c in credits)
