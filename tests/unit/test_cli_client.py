"""The CLI's hyperd client against a fake hyperd on a unix socket, and its auto-start.

The fake is `http.server` on a `UnixStreamServer` in a thread: real HTTP/1.1
over a real socket (chunked ndjson for logs), so httpx's transport, the error
mapping and the streaming are exercised as they are against hyperd.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from hyper import errors
from hyper.cli.client import (
    ContainerCreate,
    ContainerState,
    DaemonClient,
    LogRecord,
    connect_or_start,
    default_daemon_command,
)
from hyper.errors import Category
from hyper.paths import HyperPaths
from hyper.runtime.spec import RunOptions

CONTAINER = {
    "id": "f" * 64,
    "name": "web",
    "image": "busybox",
    "image_id": "sha256:" + "a" * 64,
    "command": ["sleep", "100"],
    "created": 1700000000.5,
    "state": "running",
    "started_at": 1700000001.0,
    "finished_at": None,
    "exit_code": None,
    "reason": None,
    "labels": {"tier": "front"},
}


@dataclass
class Answer:
    status: int = 200
    body: object = None
    chunks: list[bytes] | None = None
    before_last_chunk: threading.Event | None = None


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    body: object


Route = Callable[[Seen], Answer]


@dataclass
class FakeHyperd:
    """Answers requests with whatever `route` says; remembers what it was asked."""

    route: Route = field(default=lambda seen: Answer(404, {"message": "no route", "category": "not found"}))
    requests: list[Seen] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _UnixHTTPServer

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        seen = Seen(self.command, url.path, parse_qs(url.query), json.loads(raw) if raw else None)
        self.server.fake.requests.append(seen)
        answer = self.server.fake.route(seen)
        self.send_response(answer.status)
        if answer.chunks is not None:
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for index, chunk in enumerate(answer.chunks):
                if index == len(answer.chunks) - 1 and answer.before_last_chunk is not None:
                    answer.before_last_chunk.wait(10)
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        body = b"" if answer.body is None else json.dumps(answer.body).encode()
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, fake: FakeHyperd) -> None:
        self.fake = fake
        super().__init__(str(path), _Handler)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107 bytes a unix socket path may have.
    path = Path(tempfile.mkdtemp(prefix="hy", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(short_dir: Path) -> Iterator[FakeHyperd]:
    fake = FakeHyperd()
    server = _UnixHTTPServer(short_dir / "hyperd.sock", fake)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def client(fake: FakeHyperd, short_dir: Path) -> Iterator[DaemonClient]:
    with DaemonClient(short_dir / "hyperd.sock") as client:
        yield client


def _ndjson(stream: str, time: float, data: bytes) -> bytes:
    return json.dumps({"stream": stream, "time": time, "data": base64.b64encode(data).decode()}).encode()


# ---- requests and answers ----------------------------------------------------


def test_ping(fake: FakeHyperd, client: DaemonClient) -> None:
    fake.route = lambda seen: Answer(200, {"version": "0.1.0", "pid": 42})
    info = client.ping()
    assert (info.version, info.pid) == ("0.1.0", 42)
    assert (fake.requests[0].method, fake.requests[0].path) == ("GET", "/v1/ping")


def test_create_sends_the_run_options(fake: FakeHyperd, client: DaemonClient) -> None:
    fake.route = lambda seen: Answer(201, {"id": "c" * 64})
    options = RunOptions(
        image="busybox",
        command=("sh", "-c", "echo hi"),
        entrypoint="/bin/env",
        env=("A=1",),
        workdir="/w",
        user="1000:1000",
        memory_mib=256,
        cpus=2,
        hostname="box",
    )
    request = ContainerCreate.from_run_options(options, name="web", labels={"tier": "front"})
    assert client.create_container(request) == "c" * 64
    seen = fake.requests[0]
    assert (seen.method, seen.path) == ("POST", "/v1/containers")
    assert seen.body == {
        "image": "busybox",
        "command": ["sh", "-c", "echo hi"],
        "entrypoint": "/bin/env",
        "env": ["A=1"],
        "workdir": "/w",
        "user": "1000:1000",
        "memory_mib": 256,
        "cpus": 2,
        "hostname": "box",
        "name": "web",
        "labels": {"tier": "front"},
        "tty": False,
        "interactive": False,
        "restart": "no",
        "remove": False,
        "start": True,
        "stdin_once": False,
    }


def test_list_containers(fake: FakeHyperd, client: DaemonClient) -> None:
    exited = {**CONTAINER, "id": "e" * 64, "state": "exited", "finished_at": 1700000100, "exit_code": 3}
    fake.route = lambda seen: Answer(200, [CONTAINER, exited])
    running, stopped = client.list_containers(all=True)
    assert fake.requests[0].query == {"all": ["1"]}
    assert running.state is ContainerState.RUNNING
    assert running.command == ("sleep", "100")
    assert running.labels == {"tier": "front"}
    assert (stopped.state, stopped.exit_code, stopped.finished_at) == (ContainerState.EXITED, 3, 1700000100.0)
    client.list_containers()
    assert fake.requests[1].query == {}


def test_malformed_container_is_an_internal_error(fake: FakeHyperd, client: DaemonClient) -> None:
    fake.route = lambda seen: Answer(200, [{**CONTAINER, "state": "frozen"}])
    with pytest.raises(errors.InternalError, match="malformed container"):
        client.list_containers()


def test_actions_send_their_parameters(fake: FakeHyperd, client: DaemonClient) -> None:
    fake.route = lambda seen: Answer(200, {"exit_code": 137}) if seen.path.endswith("/wait") else Answer(204)
    client.stop("web", timeout=3)
    client.stop("web")
    client.kill("web", signal="SIGUSR1")
    client.kill("web")
    client.remove("web", force=True)
    client.remove("web")
    assert client.wait("web") == 137
    assert [(seen.method, seen.path, seen.query) for seen in fake.requests] == [
        ("POST", "/v1/containers/web/stop", {"t": ["3"]}),
        ("POST", "/v1/containers/web/stop", {}),
        ("POST", "/v1/containers/web/kill", {"signal": ["SIGUSR1"]}),
        ("POST", "/v1/containers/web/kill", {}),
        ("DELETE", "/v1/containers/web", {"force": ["1"]}),
        ("DELETE", "/v1/containers/web", {}),
        ("POST", "/v1/containers/web/wait", {}),
    ]


def test_a_ref_cannot_change_the_endpoint(fake: FakeHyperd, client: DaemonClient) -> None:
    fake.route = lambda seen: Answer(200, CONTAINER)
    client.inspect("../ping?x=1")
    assert fake.requests[0].path == "/v1/containers/..%2Fping%3Fx%3D1"
    assert fake.requests[0].query == {}


# ---- errors --------------------------------------------------------------------


@pytest.mark.parametrize("category", list(Category))
def test_error_body_becomes_its_category_class(
    category: Category, fake: FakeHyperd, client: DaemonClient
) -> None:
    body = {"message": f"{category.value} happened", "hint": "do this", "category": category.value}
    fake.route = lambda seen: Answer(409, body)
    with pytest.raises(errors.HyperError) as caught:
        client.inspect("web")
    assert caught.value.category is category
    assert type(caught.value).__module__ == "hyper.errors"
    assert (caught.value.message, caught.value.hint) == (f"{category.value} happened", "do this")


def test_error_without_hint(fake: FakeHyperd, client: DaemonClient) -> None:
    fake.route = lambda seen: Answer(
        404, {"message": "no such container: x", "hint": None, "category": "not found"}
    )
    with pytest.raises(errors.NotFound) as caught:
        client.stop("x")
    assert str(caught.value) == "no such container: x"


@pytest.mark.parametrize("body", ["oops", {"message": "m", "category": "bogus"}, {"category": "not found"}])
def test_error_body_that_is_not_ours_is_internal(
    body: object, fake: FakeHyperd, client: DaemonClient
) -> None:
    fake.route = lambda seen: Answer(502, body)
    with pytest.raises(errors.InternalError, match="HTTP 502"):
        client.inspect("web")


# httpcore 1.0.9 leaks the socket of a failed unix-socket connect.
_HTTPCORE_LEAK = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_HTTPCORE_LEAK
def test_missing_socket_is_unavailable(short_dir: Path) -> None:
    with DaemonClient(short_dir / "hyperd.sock") as client, pytest.raises(errors.Unavailable) as caught:
        client.ping()
    assert str(short_dir / "hyperd.sock") in caught.value.message
    assert caught.value.hint is not None


@_HTTPCORE_LEAK
def test_connection_refused_is_unavailable(short_dir: Path) -> None:
    # A socket file nobody listens on: what a crashed hyperd leaves behind.
    path = short_dir / "hyperd.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))
    with DaemonClient(path) as client, pytest.raises(errors.Unavailable):
        client.list_containers()


# ---- logs ----------------------------------------------------------------------


def test_logs_decode_and_stream(fake: FakeHyperd, client: DaemonClient) -> None:
    first = _ndjson("stdout", 1700000000.25, b"hello\n")
    second = _ndjson("stderr", 1700000001.0, b"\x00\xff bytes\r\n")
    released = threading.Event()
    # The second record is split across chunks and sent only after the client
    # has the first: the response is read as it arrives, not at its end.
    fake.route = lambda seen: Answer(
        200,
        chunks=[first + b"\n", b"\n" + second[:10], second[10:] + b"\n"],
        before_last_chunk=released,
    )
    records = client.logs("web", follow=True, tail=5)
    assert next(records) == LogRecord("stdout", 1700000000.25, b"hello\n")
    released.set()
    assert list(records) == [LogRecord("stderr", 1700000001.0, b"\x00\xff bytes\r\n")]
    assert fake.requests[0].path == "/v1/containers/web/logs"
    assert fake.requests[0].query == {"follow": ["1"], "tail": ["5"]}


def test_logs_error(fake: FakeHyperd, client: DaemonClient) -> None:
    fake.route = lambda seen: Answer(404, {"message": "no such container: x", "category": "not found"})
    with pytest.raises(errors.NotFound):
        list(client.logs("x", timestamps=True))
    assert fake.requests[0].query == {"timestamps": ["1"]}


def test_logs_bad_record(fake: FakeHyperd, client: DaemonClient) -> None:
    fake.route = lambda seen: Answer(200, chunks=[b'{"stream": "stdout", "time": 1, "data": "*"}\n'])
    with pytest.raises(errors.InternalError, match="malformed log record"):
        list(client.logs("web"))


# ---- auto-start ------------------------------------------------------------------

# A stand-in for `python -m hyper.daemon`: notes that it started, takes a
# moment (so racing CLIs overlap), then answers pings until killed.
FAKE_DAEMON = """
import http.server, json, os, socketserver, sys, threading, time

socket_path, starts = sys.argv[1], sys.argv[2]
with open(starts, "a") as f:
    f.write(f"{os.getpid()}\\n")
print("fake hyperd starting", flush=True)
time.sleep(0.3)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"version": "fake", "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


server = Server(socket_path, Handler)
threading.Timer(60, server.shutdown).start()  # never outlive a broken test by long
server.serve_forever()
"""


@pytest.fixture
def paths(short_dir: Path) -> HyperPaths:
    return HyperPaths(state=short_dir / "state", cache=short_dir / "cache", runtime=short_dir / "run")


@pytest.fixture
def started_pids() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _fake_daemon(paths: HyperPaths, short_dir: Path) -> list[str]:
    script = short_dir / "fake_hyperd.py"
    script.write_text(FAKE_DAEMON)
    return [sys.executable, str(script), str(paths.runtime / "hyperd.sock"), str(short_dir / "starts")]


def _starts(short_dir: Path) -> list[int]:
    path = short_dir / "starts"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_default_daemon_command(paths: HyperPaths) -> None:
    assert default_daemon_command(paths) == [
        sys.executable,
        "-m",
        "hyper.daemon",
        "--state-dir",
        str(paths.state),
        "--cache-dir",
        str(paths.cache),
        "--runtime-dir",
        str(paths.runtime),
    ]


def test_auto_start(paths: HyperPaths, short_dir: Path, started_pids: list[int]) -> None:
    stderr = io.StringIO()
    with connect_or_start(paths, stderr=stderr, daemon_command=_fake_daemon(paths, short_dir)) as client:
        pid = client.ping().pid
        started_pids.append(pid)
    assert _starts(short_dir) == [pid]
    log = paths.state / "hyperd.log"
    assert stderr.getvalue() == f"hyper: started hyperd in the background (pid {pid}, log {log})\n"
    assert "fake hyperd starting" in log.read_text()
    # The daemon is in its own session: a Ctrl-C at the CLI's terminal does not reach it.
    assert os.getsid(pid) == pid

    # Once it runs, nothing more is started.
    stderr = io.StringIO()
    with connect_or_start(paths, stderr=stderr, daemon_command=_fake_daemon(paths, short_dir)) as client:
        assert client.ping().pid == pid
    assert stderr.getvalue() == ""
    assert _starts(short_dir) == [pid]


def test_concurrent_clis_start_one_daemon(
    paths: HyperPaths, short_dir: Path, started_pids: list[int]
) -> None:
    command = _fake_daemon(paths, short_dir)
    barrier = threading.Barrier(3)
    stderrs = [io.StringIO() for _ in range(3)]
    pids: list[int] = []
    failures: list[BaseException] = []

    def cli(stderr: io.StringIO) -> None:
        try:
            barrier.wait(5)
            with connect_or_start(paths, stderr=stderr, daemon_command=command) as client:
                pids.append(client.ping().pid)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=cli, args=(stderr,)) for stderr in stderrs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    started_pids.extend(_starts(short_dir))
    assert failures == []
    assert len(_starts(short_dir)) == 1
    assert pids == _starts(short_dir) * 3
    assert sum(bool(stderr.getvalue()) for stderr in stderrs) == 1


def test_daemon_that_exits_at_once(paths: HyperPaths) -> None:
    command = [sys.executable, "-c", "import sys; print('no /dev/kvm here', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(errors.Unavailable) as caught:
        connect_or_start(paths, stderr=io.StringIO(), daemon_command=command)
    assert "exited with status 3" in caught.value.message
    assert "no /dev/kvm here" in caught.value.message
    assert caught.value.hint == "run `hyperd` in the foreground to see why"


def test_daemon_that_never_answers_is_stopped(paths: HyperPaths) -> None:
    stderr = io.StringIO()
    command = [sys.executable, "-c", "import time; print('stuck', flush=True); time.sleep(60)"]
    with pytest.raises(errors.Unavailable) as caught:
        connect_or_start(paths, stderr=stderr, daemon_command=command, start_timeout=1)
    assert "did not answer" in caught.value.message
    assert "stuck" in caught.value.message
    assert caught.value.hint == "run `hyperd` in the foreground to see why"
    match = re.search(r"pid (\d+)", stderr.getvalue())
    assert match is not None
    with pytest.raises(ProcessLookupError):
        os.kill(int(match.group(1)), 0)
