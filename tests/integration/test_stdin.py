"""Every byte a client sends reaches the container's process, and its end
closes the process's stdin: through hyperd with the real docker CLI, docker-py
and the `hyper` CLI, and in a foreground `hyper run -i`.

The inputs are binary (they hold ctrl-p ctrl-q, which detach only on a
terminal), from empty to 64 MiB, written at once or slowly in small pieces;
the process's md5sum of what it read is compared with the input's. One
hyperd serves the module; a container named `sink` stays up for the execs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyper.image import ImageStore
from tests.integration.conftest import BUSYBOX, HyperEnv
from tests.support.docker_env import DOCKER_CLI, DockerHyperd, docker_cli_available, docker_py_available

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not docker_cli_available(), reason=f"the docker CLI is not at {DOCKER_CLI}"),
    pytest.mark.skipif(not docker_py_available(), reason="docker-py is not installed"),
]

WAIT = 300  # an upper bound for a copy under TCG, never an assertion of speed
MIB = 1 << 20


def payload(size: int) -> bytes:
    """Random bytes with the detach keys in them, as binary input has sooner or later."""
    data = bytearray(os.urandom(size))
    for at in range(0, max(size - 1, 0), 4099):
        data[at : at + 2] = b"\x10\x11"
    return bytes(data)


def md5_line(data: bytes) -> str:
    return f"{hashlib.md5(data).hexdigest()}  -"


@pytest.fixture(scope="module")
def hyperd(image_state: Path, shared_cache: Path) -> Iterator[DockerHyperd]:
    with tempfile.TemporaryDirectory(prefix="stdin-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        ImageStore(state / "images").tag(BUSYBOX, "busybox:latest")
        with DockerHyperd(state=state, cache=shared_cache) as daemon:
            try:
                yield daemon
            finally:
                with daemon.http() as http:
                    for container in http.get("/containers/json", params={"all": "1"}).json():
                        http.delete(f"/containers/{container['Id']}", params={"force": "1"})


@pytest.fixture(scope="module")
def sink(hyperd: DockerHyperd) -> str:
    done = hyperd.docker("run", "-d", "--name", "sink", "busybox", "sh", "-c", "while :; do sleep 1; done")
    assert done.returncode == 0, done.stderr
    return "sink"


def hyper_cli(hyperd: DockerHyperd, *args: str, input: bytes) -> subprocess.CompletedProcess[bytes]:
    """The `hyper` CLI against the module's hyperd."""
    env = dict(
        os.environ,
        HYPER_STATE_DIR=str(hyperd.state),
        HYPER_RUNTIME_DIR=str(hyperd.runtime),
        HYPER_CACHE_DIR=str(hyperd.cache),
    )
    return subprocess.run(
        [sys.executable, "-m", "hyper.cli.main", *args],
        input=input,
        capture_output=True,
        timeout=WAIT,
        env=env,
        check=False,
    )


def docker_bytes(hyperd: DockerHyperd, *args: str, input: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [DOCKER_CLI, *args],
        input=input,
        capture_output=True,
        timeout=WAIT,
        env=hyperd.cli_environ(),
        check=False,
    )


@pytest.mark.parametrize("size", [0, 1, 16_000, 200 * 1024, MIB, 64 * MIB])
def test_docker_run_i_reads_all_of_its_input(hyperd: DockerHyperd, size: int) -> None:
    data = payload(size)
    done = docker_bytes(hyperd, "run", "--rm", "-i", "busybox", "md5sum", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == md5_line(data)


@pytest.mark.parametrize("size", [0, 200 * 1024, 16 * MIB])
def test_docker_exec_i_reads_all_of_its_input(hyperd: DockerHyperd, sink: str, size: int) -> None:
    data = payload(size)
    done = docker_bytes(hyperd, "exec", "-i", sink, "md5sum", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == md5_line(data)


def test_a_slow_writer_loses_nothing_and_its_end_closes_stdin(hyperd: DockerHyperd) -> None:
    """Small pieces, with the process's answers read in between: the data
    arrives in order, and the client's end of input ends `cat`, after which
    the process goes on (`echo end`) and exits with its own status."""
    child = subprocess.Popen(
        [
            DOCKER_CLI,
            "run",
            "--rm",
            "-i",
            "busybox",
            "sh",
            "-c",
            "read first; echo got-$first; cat | md5sum; echo end; exit 3",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=hyperd.cli_environ(),
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(b"hello\n")
    child.stdin.flush()
    assert child.stdout.readline() == b"got-hello\n"  # stdin stays open while the process answers
    data = payload(300_000)
    for start in range(0, len(data), 3000):
        child.stdin.write(data[start : start + 3000])
        child.stdin.flush()
        time.sleep(0.001)  # pacing the writer, not waiting for a result
    child.stdin.close()
    out = child.stdout.read()
    assert child.wait(WAIT) == 3, child.stderr.read() if child.stderr else ""
    assert out.decode().splitlines() == [md5_line(data), "end"]


def _docker_py_frames(sock: socket.socket) -> bytes:
    """Docker's multiplexed stream read to its end: the stdout frames' bytes."""
    out = bytearray()
    buffer = bytearray()
    while chunk := sock.recv(65536):
        buffer += chunk
        while len(buffer) >= 8:
            stream, length = struct.unpack(">BxxxI", buffer[:8])
            if len(buffer) < 8 + length:
                break
            if stream == 1:
                out += buffer[8 : 8 + length]
            del buffer[: 8 + length]
    return bytes(out)


def _raw_socket(stream: object) -> socket.socket:
    """The plain socket under docker-py's stream wrapper (`SocketIO._sock`)."""
    sock = getattr(stream, "_sock", None)
    assert isinstance(sock, socket.socket), f"docker-py gave {type(stream).__name__}"
    return sock


def _send_and_close(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def test_docker_py_exec_and_attach_stream_all_of_their_input(hyperd: DockerHyperd, sink: str) -> None:
    client = hyperd.docker_py()
    data = payload(4 * MIB)
    try:
        exec_id = client.api.exec_create(sink, ["md5sum"], stdin=True)["Id"]
        sock = _raw_socket(client.api.exec_start(exec_id, socket=True))
        writer = threading.Thread(target=_send_and_close, args=(sock, data))
        writer.start()
        out = _docker_py_frames(sock)
        writer.join(WAIT)
        assert out.decode().strip() == md5_line(data)
        assert client.api.exec_inspect(exec_id)["ExitCode"] == 0

        # docker-py's low-level create with stdin_open and no detach sets StdinOnce,
        # as `docker run -i` does: the end of the attached input ends the process's.
        container = client.api.create_container("busybox", ["md5sum"], stdin_open=True)["Id"]
        try:
            sock = _raw_socket(
                client.api.attach_socket(container, params={"stdin": 1, "stdout": 1, "stream": 1})
            )
            client.api.start(container)
            writer = threading.Thread(target=_send_and_close, args=(sock, data))
            writer.start()
            out = _docker_py_frames(sock)
            writer.join(WAIT)
            assert out.decode().strip() == md5_line(data)
            assert client.api.wait(container, timeout=WAIT)["StatusCode"] == 0
        finally:
            client.api.remove_container(container, force=True)
    finally:
        client.close()


@pytest.mark.parametrize("size", [0, 3 * MIB])
def test_hyper_exec_and_start_attached_read_all_of_their_input(
    hyperd: DockerHyperd, sink: str, size: int
) -> None:
    data = payload(size)
    done = hyper_cli(hyperd, "exec", "-i", sink, "md5sum", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == md5_line(data)
    created = hyper_cli(hyperd, "create", "-i", BUSYBOX, "md5sum", input=b"")
    assert created.returncode == 0, created.stderr
    container = created.stdout.decode().strip()
    started = hyper_cli(hyperd, "start", "-a", "-i", container, input=data)
    assert started.returncode == 0, started.stderr
    assert started.stdout.decode().strip() == md5_line(data)


@pytest.mark.parametrize("path", ["daemon", "direct"])
def test_foreground_hyper_run_i_reads_all_of_its_input(hyper_env: HyperEnv, path: str) -> None:
    data = payload(16 * MIB)
    done = hyper_env.through(path).run("run", "--rm", "-i", BUSYBOX, "md5sum", input=data, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == md5_line(data)
