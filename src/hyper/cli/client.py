"""The CLI's client of hyperd's REST API (docs/hyperd-api.md), and its auto-start.

Commands that act on background containers (`run -d`, `ps`, `logs`, `stop`, …)
talk to hyperd over its unix socket. This module is the boundary: JSON becomes
frozen dataclasses, error bodies become the `hyper.errors` class of their
category (one table), and httpx's transport errors become `Unavailable`, so no
command sees httpx or a raw dict.

`connect_or_start` starts hyperd in the background when nothing answers, once
even when several CLIs race (a lock file), the way `docker` would if dockerd
were socket-activated.

httpx is imported only when a client is made: every `hyper` command builds the
parser that imports this module, and most never talk to hyperd.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO
from urllib.parse import quote

from hyper import errors
from hyper.cli.documents import (
    ContainerCreate,
    ContainerDetails,
    ContainerInfo,
    ContainerState,
    DaemonInfo,
    ExecConfig,
    ExecDetails,
    LogRecord,
    PathStat,
    ProcessTable,
    StatsSample,
    json_object,
    typed,
)
from hyper.errors import Category, HyperError, InternalError, PermissionDenied, Unavailable
from hyper.locks import exclusive_lock
from hyper.paths import HyperPaths

if TYPE_CHECKING:
    import httpx

# The typed values commands get, re-exported: commands import them from here.
__all__ = [
    "ArchiveCut",
    "ContainerCreate",
    "ContainerDetails",
    "ContainerInfo",
    "ContainerState",
    "DaemonClient",
    "DaemonInfo",
    "ExecConfig",
    "ExecDetails",
    "LogRecord",
    "PathStat",
    "ProcessTable",
    "StatsSample",
    "connect_or_start",
    "default_daemon_command",
    "docker_error",
]

SOCKET_NAME = "hyperd.sock"
START_LOCK_NAME = "hyperd.start.lock"
LOG_NAME = "hyperd.log"
START_TIMEOUT = 30.0
_BASE_URL = "http://hyperd"
_REQUEST_TIMEOUT = 60.0
_PING_TIMEOUT = 5.0
_START_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 20
_START_HINT = "run `hyperd` in the foreground to see why"
_BOOT_TIMEOUT = 300.0  # a start boots a VM, slow under TCG on a busy host
_ARCHIVE_CHUNK = 256 * 1024
PATH_STAT_HEADER = "X-Docker-Container-Path-Stat"

# The one table from an error body's category back to the class the daemon raised.
_ERROR_CLASSES: Mapping[Category, type[HyperError]] = {
    Category.INVALID_ARGUMENT: errors.InvalidArgument,
    Category.NOT_FOUND: errors.NotFound,
    Category.ALREADY_EXISTS: errors.AlreadyExists,
    Category.FAILED_PRECONDITION: errors.FailedPrecondition,
    Category.UNAVAILABLE: errors.Unavailable,
    Category.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    Category.PERMISSION_DENIED: errors.PermissionDenied,
    Category.UNAUTHENTICATED: errors.Unauthenticated,
    Category.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    Category.DATA_LOSS: errors.DataLoss,
    Category.INTERNAL: errors.InternalError,
}

# The Docker API's errors are `{"message": str}`: the HTTP status is all there is
# of their kind. 409 is Docker's "conflict" (a name taken, a container running).
_DOCKER_STATUS_CLASSES: Mapping[int, type[HyperError]] = {
    400: errors.InvalidArgument,
    401: errors.Unauthenticated,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    409: errors.FailedPrecondition,
    429: errors.ResourceExhausted,
    500: errors.InternalError,
    501: errors.Unavailable,
    503: errors.Unavailable,
    504: errors.DeadlineExceeded,
}

# hyperd outlives the CLI on purpose; holding its Popen keeps Python from
# warning, when the object is collected, that the process is still running.
_detached_daemons: list[subprocess.Popen[bytes]] = []


class DaemonClient:
    """A synchronous client of one hyperd, over its unix socket.

    A context manager; `close` may be called more than once.
    """

    def __init__(self, socket_path: Path, *, timeout: float = _REQUEST_TIMEOUT) -> None:
        import httpx

        self.socket_path = socket_path
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)),
            base_url=_BASE_URL,
            timeout=httpx.Timeout(timeout, connect=_PING_TIMEOUT),
        )

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def ping(self, *, timeout: float = _PING_TIMEOUT) -> DaemonInfo:
        obj = json_object(self._request("GET", "/v1/ping", timeout=timeout).json(), "ping answer")
        try:
            return DaemonInfo(version=typed(obj, "version", str), pid=typed(obj, "pid", int))
        except ValueError as exc:
            raise InternalError(f"hyperd sent a malformed ping answer: {exc}") from exc

    def pool(self) -> dict[str, object]:
        """hyperd's pool of ready VMs (`GET /v1/pool`): bounds, ready VMs, runs served."""
        return json_object(self._request("GET", "/v1/pool").json(), "pool status")

    def create_container(self, request: ContainerCreate) -> str:
        """Create a container and start it in the background; its full ID."""
        obj = json_object(self._request("POST", "/v1/containers", json=request.to_json()).json(), "answer")
        try:
            return typed(obj, "id", str)
        except ValueError as exc:
            raise InternalError(f"hyperd's answer to a create has no ID: {exc}") from exc

    def list_containers(self, *, all: bool = False) -> list[ContainerInfo]:
        params = {"all": "1"} if all else {}
        answer = self._request("GET", "/v1/containers", params=params).json()
        if not isinstance(answer, list):
            raise InternalError("hyperd's container list is not a JSON array")
        return [ContainerInfo.from_json(item) for item in answer]

    def inspect(self, ref: str) -> ContainerInfo:
        return ContainerInfo.from_json(self._request("GET", _container_path(ref)).json())

    def logs(
        self,
        ref: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        timestamps: bool = False,
        since: float | None = None,
    ) -> Iterator[LogRecord]:
        """The container's output as hyperd streams it, one record at a time.

        With `follow`, the iterator ends when the container has exited and all
        of its output was sent; there is no client-side timeout.
        """
        import httpx

        params: dict[str, str] = {}
        if follow:
            params["follow"] = "1"
        if tail is not None:
            params["tail"] = str(tail)
        if timestamps:
            params["timestamps"] = "1"
        if since is not None:
            params["since"] = repr(since)
        timeout = httpx.Timeout(None, connect=_PING_TIMEOUT) if follow else httpx.USE_CLIENT_DEFAULT
        with self._mapped_transport_errors():
            request = self._http.build_request(
                "GET", _container_path(ref, "logs"), params=params, timeout=timeout
            )
            response = self._http.send(request, stream=True)
            try:
                if response.is_error:
                    response.read()
                    raise _error_from_response(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield LogRecord.from_json(_json_line(line))
            finally:
                response.close()

    def stop(self, ref: str, *, timeout: int | None = None) -> None:
        """The stop signal, SIGKILL after `timeout` seconds (default: the container's
        stop timeout, else 10), then power off."""
        params = {} if timeout is None else {"t": str(timeout)}
        self._request("POST", _container_path(ref, "stop"), params=params, timeout=_stop_wait(timeout))

    def kill(self, ref: str, *, signal: str | None = None) -> None:
        params = {} if signal is None else {"signal": signal}
        self._request("POST", _container_path(ref, "kill"), params=params)

    def wait(self, ref: str) -> int:
        """Block until the container has exited; its exit code. No client-side timeout."""
        import httpx

        answer = self._request(
            "POST", _container_path(ref, "wait"), timeout=httpx.Timeout(None, connect=_PING_TIMEOUT)
        )
        obj = json_object(answer.json(), "wait answer")
        try:
            return typed(obj, "exit_code", int)
        except ValueError as exc:
            raise InternalError(f"hyperd's answer to a wait has no exit code: {exc}") from exc

    def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        params = {"force": "1"} if force else {}
        if volumes:
            params["v"] = "1"
        self._request("DELETE", _container_path(ref), params=params)

    def start(self, ref: str) -> bool:
        """Boot the container's VM and start its process; False when it already ran."""
        answer = self._request("POST", _container_path(ref, "start"), timeout=_BOOT_TIMEOUT)
        return answer.status_code != 304

    def restart(self, ref: str, *, timeout: int | None = None) -> None:
        """Stop (SIGTERM, SIGKILL after `timeout` seconds; hyperd's default 10), then start."""
        params = {} if timeout is None else {"t": str(timeout)}
        wait = _stop_wait(timeout)
        self._request(
            "POST",
            _container_path(ref, "restart"),
            params=params,
            timeout=wait + _BOOT_TIMEOUT if isinstance(wait, float) else wait,
        )

    def pause(self, ref: str) -> None:
        self._request("POST", _container_path(ref, "pause"))

    def unpause(self, ref: str) -> None:
        self._request("POST", _container_path(ref, "unpause"))

    def rename(self, ref: str, name: str) -> None:
        self._request("POST", _container_path(ref, "rename"), params={"name": name})

    # ---- the Docker Engine API under /docker: documents and archives ----

    def container_details(self, ref: str) -> ContainerDetails:
        """Docker's container inspect document."""
        return ContainerDetails.from_json(self._docker("GET", _docker_container_path(ref, "json")).json())

    def top(self, ref: str) -> ProcessTable:
        return ProcessTable.from_json(self._docker("GET", _docker_container_path(ref, "top")).json())

    def stats(self, ref: str) -> StatsSample:
        """Two readings a second apart (hyperd waits), so that CPU % has a delta."""
        answer = self._docker("GET", _docker_container_path(ref, "stats"), params={"stream": "false"})
        return StatsSample.from_json(answer.json())

    def resize_container(self, ref: str, rows: int, cols: int) -> None:
        params = {"h": str(rows), "w": str(cols)}
        self._docker("POST", _docker_container_path(ref, "resize"), params=params)

    def create_exec(self, ref: str, config: ExecConfig) -> str:
        answer = self._docker("POST", _docker_container_path(ref, "exec"), json=config.to_json())
        obj = json_object(answer.json(), "exec create answer")
        try:
            return typed(obj, "Id", str)
        except ValueError as exc:
            raise InternalError(f"hyperd's answer to an exec create has no ID: {exc}") from exc

    def start_exec_detached(self, exec_id: str, *, tty: bool) -> None:
        self._docker("POST", _exec_path(exec_id, "start"), json={"Detach": True, "Tty": tty})

    def exec_details(self, exec_id: str) -> ExecDetails:
        return ExecDetails.from_json(self._docker("GET", _exec_path(exec_id, "json")).json())

    def resize_exec(self, exec_id: str, rows: int, cols: int) -> None:
        self._docker("POST", _exec_path(exec_id, "resize"), params={"h": str(rows), "w": str(cols)})

    def path_stat(self, ref: str, path: str) -> PathStat:
        """A path in the container, lstat'ed; NotFound when it does not exist."""
        answer = self._docker(
            "HEAD",
            _docker_container_path(ref, "archive"),
            params={"path": path},
            missing=f"Could not find the file {path} in container {ref}",
        )
        return PathStat.from_header(answer.headers.get(PATH_STAT_HEADER))

    @contextlib.contextmanager
    def archive(self, ref: str, path: str) -> Iterator[tuple[PathStat, BinaryIO]]:
        """A tar of `path` in the container, read as it arrives, and the path's stat.

        A copy that fails inside the container cuts the stream: reading then
        raises DataLoss.
        """
        import httpx

        with self._mapped_transport_errors():
            request = self._http.build_request(
                "GET",
                _docker_container_path(ref, "archive"),
                params={"path": path},
                timeout=httpx.Timeout(None, connect=_PING_TIMEOUT),
            )
            response = self._http.send(request, stream=True)
        try:
            if response.is_error:
                with self._mapped_transport_errors():
                    response.read()
                raise docker_error(response.status_code, response.content, response.reason_phrase)
            stat = PathStat.from_header(response.headers.get(PATH_STAT_HEADER))
            reader = _ResponseReader(response.iter_raw(), f"{ref}:{path}")
            yield stat, io.BufferedReader(reader, _ARCHIVE_CHUNK)
        finally:
            response.close()

    def put_archive(self, ref: str, directory: str, chunks: Iterable[bytes]) -> None:
        """Extract a tar (given in chunks) under `directory`, which must exist in the container."""
        import httpx

        self._docker(
            "PUT",
            _docker_container_path(ref, "archive"),
            params={"path": directory, "noOverwriteDirNonDir": "true"},
            content=chunks,
            timeout=httpx.Timeout(None, connect=_PING_TIMEOUT),
        )

    def docker_document(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, json: object = None
    ) -> Any:
        """A Docker API answer's JSON (None when empty): `hyper network` and `port` use these."""
        response = self._docker(method, path, params=params, json=json)
        return response.json() if response.content else None

    def admin_document(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, json: object = None
    ) -> Any:
        """An answer of hyperd's own API as JSON (None when empty): `hyper tenant` uses these."""
        response = self._request(method, path, params=params, json=json)
        return response.json() if response.content else None

    def _docker(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: object = None,
        content: Iterable[bytes] | None = None,
        timeout: float | httpx.Timeout | None = None,
        missing: str | None = None,
    ) -> httpx.Response:
        """A request to the Docker API, whose errors are `{"message"}` with an HTTP status."""
        import httpx

        with self._mapped_transport_errors():
            response = self._http.request(
                method,
                path,
                params=params,
                json=json,
                content=content,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        if response.is_error:
            # A HEAD answer has no body to carry the message.
            fallback = missing if response.status_code == 404 and missing else response.reason_phrase
            raise docker_error(response.status_code, response.content, fallback)
        return response

    def api_request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to hyperd's own API (hyper.cli.pod_commands); errors raised."""
        return self._request(method, path, **kwargs)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: object = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> httpx.Response:
        import httpx

        with self._mapped_transport_errors():
            response = self._http.request(
                method,
                path,
                params=params,
                json=json,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        if response.is_error:
            raise _error_from_response(response)
        return response

    @contextlib.contextmanager
    def _mapped_transport_errors(self) -> Iterator[None]:
        import httpx

        try:
            yield
        except httpx.TimeoutException as exc:
            raise errors.DeadlineExceeded(f"hyperd at {self.socket_path} did not answer in time") from exc
        except httpx.TransportError as exc:
            if _caused_by(exc, PermissionError):
                raise PermissionDenied(
                    f"not allowed to connect to hyperd at {self.socket_path}",
                    hint="run hyper as the user that runs hyperd, or as root",
                ) from exc
            raise Unavailable(
                f"cannot reach hyperd at {self.socket_path}: {exc or type(exc).__name__}",
                hint="start it with `hyperd`",
            ) from exc


def _stop_wait(timeout: int | None) -> float | httpx.Timeout:
    """How long a stop may take: the grace period, then the steps after it (SIGKILL,
    the VM's power-off), each of which hyperd bounds. Without `-t` the grace
    period is the container's own stop timeout, which only hyperd knows."""
    import httpx

    if timeout is None or timeout < 0:
        return httpx.Timeout(None, connect=_PING_TIMEOUT)
    return float(timeout) + _REQUEST_TIMEOUT


def default_daemon_command(paths: HyperPaths) -> list[str]:
    """How the CLI starts hyperd: the same Python, with the CLI's directories."""
    return [
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


def connect_or_start(
    paths: HyperPaths,
    *,
    stderr: TextIO,
    daemon_command: Sequence[str] | None = None,
    start_timeout: float = START_TIMEOUT,
) -> DaemonClient:
    """A client of the running hyperd, starting it in the background when none answers."""
    return DaemonClient(
        daemon_socket(paths, stderr=stderr, daemon_command=daemon_command, start_timeout=start_timeout)
    )


def daemon_socket(
    paths: HyperPaths,
    *,
    stderr: TextIO,
    daemon_command: Sequence[str] | None = None,
    start_timeout: float = START_TIMEOUT,
) -> Path:
    """The socket of the running hyperd, started in the background when none answers.

    The start happens under an exclusive lock on `hyperd.start.lock`, and the
    ping is retried once the lock is held, so CLIs that race start one daemon.
    No httpx here: a foreground `run` talks to hyperd without it (its import
    is a good part of a thin client's cost).
    """
    paths.runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    socket_path = paths.runtime / SOCKET_NAME
    if _answers(socket_path):
        return socket_path
    with exclusive_lock(paths.runtime / START_LOCK_NAME):
        if _answers(socket_path):
            return socket_path
        command = default_daemon_command(paths) if daemon_command is None else list(daemon_command)
        _start_daemon(socket_path, command, paths.state / LOG_NAME, stderr, start_timeout)
        return socket_path


def _answers(socket_path: Path, *, timeout: float = _PING_TIMEOUT) -> bool:
    """Whether hyperd answers a ping on `socket_path` (plain HTTP/1.0 on a socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(socket_path))
            conn.sendall(b"GET /v1/ping HTTP/1.0\r\nHost: hyperd\r\n\r\n")
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
                if len(answer) > 65536:
                    return False
        except PermissionError as exc:
            raise PermissionDenied(
                f"not allowed to connect to hyperd at {socket_path}",
                hint="run hyper as the user that runs hyperd, or as root",
            ) from exc
        except OSError:
            return False
    return answer.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))


def daemon_answers(socket_path: Path) -> bool:
    """Whether a hyperd answers on `socket_path` (none is started)."""
    return _answers(socket_path)


def _start_daemon(
    socket_path: Path, command: list[str], log_path: Path, stderr: TextIO, timeout: float
) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    print(f"hyper: started hyperd in the background (pid {process.pid}, log {log_path})", file=stderr)
    deadline = time.monotonic() + timeout
    while True:
        if _answers(socket_path, timeout=max(0.1, min(_PING_TIMEOUT, deadline - time.monotonic()))):
            _detached_daemons.append(process)
            return
        status = process.poll()
        if status is not None:
            raise Unavailable(
                f"hyperd exited with status {status} before answering on {socket_path}; "
                f"the end of {log_path}:\n{_log_tail(log_path)}",
                hint=_START_HINT,
            )
        if time.monotonic() >= deadline:
            _stop_failed_daemon(process)
            raise Unavailable(
                f"hyperd did not answer on {socket_path} within {timeout:g} seconds; "
                f"the end of {log_path}:\n{_log_tail(log_path)}",
                hint=_START_HINT,
            )
        time.sleep(_START_POLL_INTERVAL)


def _stop_failed_daemon(process: subprocess.Popen[bytes]) -> None:
    """A daemon that never answered is ours to clean up, not left half-started."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 16384))
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read the log: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(the log is empty)"


def _error_from_response(response: httpx.Response) -> HyperError:
    return error_from_body(response.status_code, response.content, response.reason_phrase)


def error_from_body(status: int, content: bytes, reason: str) -> HyperError:
    """The `hyper.errors` class of an error body's category, with its message and hint."""
    try:
        body = json.loads(content)
        message, hint = body["message"], body.get("hint")
        error_class = _ERROR_CLASSES[Category(body["category"])]
        if not isinstance(message, str) or not (hint is None or isinstance(hint, str)):
            raise TypeError("message or hint is not a string")
    except (ValueError, KeyError, TypeError, AttributeError):
        text = content.decode(errors="replace").strip()[:500] or reason
        return InternalError(f"hyperd answered HTTP {status}: {text}")
    return error_class(message, hint=hint)


def docker_error(status: int, body: bytes, fallback: str) -> HyperError:
    """A Docker API error answer as the `hyper.errors` class of its status (one table)."""
    message = ""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            message = doc["message"]
    except ValueError:
        message = body.decode(errors="replace").strip()[:500]
    error_class = _DOCKER_STATUS_CLASSES.get(status)
    if error_class is None:
        error_class = errors.InvalidArgument if 400 <= status < 500 else InternalError
    return error_class(message or fallback or f"hyperd answered HTTP {status}")


class ArchiveCut(errors.DataLoss):
    """A streamed archive stopped before its end: hyperd cut it (the copy failed
    in the VM, the VM stopped, or the archive was refused) or the connection to
    hyperd was lost. `hyper cp` finds out which before it reports."""


class _ResponseReader(io.RawIOBase):
    """A streamed response body as a file, for tarfile; a cut stream is ArchiveCut."""

    def __init__(self, chunks: Iterator[bytes], what: str) -> None:
        self._chunks = chunks
        self._pending = b""
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        import httpx

        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
            except httpx.HTTPError as exc:
                raise ArchiveCut(f"the copy of {self._what} was cut short") from exc
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def _docker_container_path(ref: str, action: str) -> str:
    return f"/docker/containers/{quote(ref, safe='')}/{action}"


def _exec_path(exec_id: str, action: str) -> str:
    return f"/docker/exec/{quote(exec_id, safe='')}/{action}"


def _container_path(ref: str, action: str | None = None) -> str:
    # A ref is an ID, a prefix or a name; quoting keeps a stray `/` or `?` in it
    # from changing which endpoint is called.
    path = f"/v1/containers/{quote(ref, safe='')}"
    return path if action is None else f"{path}/{action}"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _json_line(line: str) -> object:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise InternalError(f"hyperd sent a log line that is not JSON: {line[:200]!r}") from exc
