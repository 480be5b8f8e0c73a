"""A CRI client on the same v1 messages hyperd serves, and a hyperd that serves the CRI.

`CriClient.call("Version", VersionRequest(), VersionResponse)` sends one
unary RPC over the unix socket (the service is found from the RPC's name) and
returns the typed answer; a failure raises grpc.RpcError with its status
code. `CriHyperd` starts a real hyperd on temporary directories with
`--cri-socket` and stops it (SIGTERM, then SIGKILL) on every path.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import grpc
from cri_api.v1 import api_pb2
from google.protobuf.message import Message

Response = TypeVar("Response", bound=Message)


def _service_of(rpc: str) -> str:
    for service in api_pb2.DESCRIPTOR.services_by_name.values():
        if rpc in service.methods_by_name:
            return service.full_name
    raise ValueError(f"no CRI RPC named {rpc}")


class CriClient:
    def __init__(self, socket: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix:{socket}")

    def call(self, rpc: str, request: Message, response: type[Response], timeout: float = 240) -> Response:
        method = self.channel.unary_unary(
            f"/{_service_of(rpc)}/{rpc}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        answer: Response = method(request, timeout=timeout)
        return answer

    def stream(
        self, rpc: str, request: Message, response: type[Response], timeout: float = 240
    ) -> Iterator[Response]:
        """A server-streaming RPC's answers as they come (cancel with `.cancel()` on the result)."""
        method = self.channel.unary_stream(
            f"/{_service_of(rpc)}/{rpc}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        answers: Iterator[Response] = method(request, timeout=timeout)
        return answers

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def status_of(call: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    assert isinstance(call, grpc.Call)
    return call.code(), call.details() or ""


class CriHyperd:
    """A hyperd serving its API and the CRI, on its own state and runtime directories."""

    def __init__(
        self,
        state: Path,
        cache: Path,
        environ: dict[str, str] | None = None,
        *,
        wrapper: tuple[str, ...] = (),
        arguments: tuple[str, ...] = (),
    ) -> None:
        self.state = state
        self.cache = cache
        self.wrapper = wrapper  # e.g. `ip netns exec NAME`, to run hyperd in a test's namespace
        self.arguments = arguments  # more of hyperd's options
        self.runtime = Path(tempfile.mkdtemp(prefix="hc-", dir="/tmp"))
        self.environ = environ or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def cri_socket(self) -> Path:
        return self.runtime / "cri.sock"

    @property
    def log(self) -> Path:
        return self.state / "hyperd.log"

    def start(self) -> CriHyperd:
        self.state.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HYPER_BRIDGE="none", **self.environ)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.wrapper, sys.executable, "-m", "hyper.daemon", "--state-dir", str(self.state),
                    "--cache-dir", str(self.cache), "--runtime-dir", str(self.runtime),
                    "--cri-socket", str(self.cri_socket), *self.arguments,
                ],
                stdout=log, stderr=log, env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.cri_socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"hyperd did not serve the CRI: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def client(self) -> CriClient:
        return CriClient(self.cri_socket)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def qemu_processes(self) -> list[int]:
        found = subprocess.run(
            ["pgrep", "-f", f"qemu-system.*{self.runtime}"], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in found.stdout.split()]

    def close(self) -> None:
        """Stop hyperd, kill any VM it left (a failed test's), remove the runtime directory."""
        self.stop()
        for pid in self.qemu_processes():
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.runtime, ignore_errors=True)

    def __enter__(self) -> CriHyperd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
