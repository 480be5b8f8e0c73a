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

import base64
import binascii
import contextlib
import enum
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar
from urllib.parse import quote

from hyper import errors
from hyper.errors import Category, HyperError, InternalError, PermissionDenied, Unavailable
from hyper.locks import exclusive_lock
from hyper.paths import HyperPaths
from hyper.runtime.spec import DEFAULT_MEMORY_MIB, RunOptions

if TYPE_CHECKING:
    import httpx

_T = TypeVar("_T")

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

# The one table from an error body's category back to the class the daemon raised.
_ERROR_CLASSES: Mapping[Category, type[HyperError]] = {
    Category.INVALID_ARGUMENT: errors.InvalidArgument,
    Category.NOT_FOUND: errors.NotFound,
    Category.ALREADY_EXISTS: errors.AlreadyExists,
    Category.FAILED_PRECONDITION: errors.FailedPrecondition,
    Category.UNAVAILABLE: errors.Unavailable,
    Category.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    Category.PERMISSION_DENIED: errors.PermissionDenied,
    Category.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    Category.DATA_LOSS: errors.DataLoss,
    Category.INTERNAL: errors.InternalError,
}

# hyperd outlives the CLI on purpose; holding its Popen keeps Python from
# warning, when the object is collected, that the process is still running.
_detached_daemons: list[subprocess.Popen[bytes]] = []


class ContainerState(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    EXITED = "exited"


@dataclass(frozen=True)
class DaemonInfo:
    version: str
    pid: int


@dataclass(frozen=True)
class ContainerInfo:
    """A container as hyperd describes it (the API's `Container`)."""

    id: str
    name: str
    image: str
    image_id: str
    command: tuple[str, ...]
    created: float
    state: ContainerState
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: object) -> ContainerInfo:
        obj = _object(value, "container")
        try:
            return cls(
                id=_typed(obj, "id", str),
                name=_typed(obj, "name", str),
                image=_typed(obj, "image", str),
                image_id=_typed(obj, "image_id", str),
                command=tuple(_strings(obj.get("command"), "command")),
                created=_number(obj, "created"),
                state=ContainerState(_typed(obj, "state", str)),
                started_at=_optional_number(obj, "started_at"),
                finished_at=_optional_number(obj, "finished_at"),
                exit_code=_optional(obj, "exit_code", int),
                reason=_optional(obj, "reason", str),
                labels=_labels(obj.get("labels", {})),
            )
        except ValueError as exc:
            raise InternalError(f"hyperd sent a malformed container: {exc}") from exc


@dataclass(frozen=True)
class ContainerCreate:
    """The body of `POST /v1/containers`: what `run -d` asks for."""

    image: str
    command: tuple[str, ...] = ()
    entrypoint: str | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpus: int = 1
    hostname: str | None = None
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_run_options(
        cls, options: RunOptions, *, name: str | None, labels: Mapping[str, str]
    ) -> ContainerCreate:
        return cls(
            image=options.image,
            command=options.command,
            entrypoint=options.entrypoint,
            env=options.env,
            workdir=options.workdir,
            user=options.user,
            memory_mib=options.memory_mib,
            cpus=options.cpus,
            hostname=options.hostname,
            name=name,
            labels=dict(labels),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "image": self.image,
            "command": list(self.command),
            "entrypoint": self.entrypoint,
            "env": list(self.env),
            "workdir": self.workdir,
            "user": self.user,
            "memory_mib": self.memory_mib,
            "cpus": self.cpus,
            "hostname": self.hostname,
            "name": self.name,
            "labels": dict(self.labels),
        }


@dataclass(frozen=True)
class LogRecord:
    """One chunk of a container's output: which stream, when, and the exact bytes."""

    stream: str
    time: float
    data: bytes

    @classmethod
    def from_json(cls, value: object) -> LogRecord:
        obj = _object(value, "log record")
        try:
            stream = _typed(obj, "stream", str)
            if stream not in ("stdout", "stderr"):
                raise ValueError(f"stream is {stream!r}")
            data = base64.b64decode(_typed(obj, "data", str), validate=True)
            return cls(stream=stream, time=_number(obj, "time"), data=data)
        except (ValueError, binascii.Error) as exc:
            raise InternalError(f"hyperd sent a malformed log record: {exc}") from exc


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
        obj = _object(self._request("GET", "/v1/ping", timeout=timeout).json(), "ping answer")
        try:
            return DaemonInfo(version=_typed(obj, "version", str), pid=_typed(obj, "pid", int))
        except ValueError as exc:
            raise InternalError(f"hyperd sent a malformed ping answer: {exc}") from exc

    def create_container(self, request: ContainerCreate) -> str:
        """Create a container and start it in the background; its full ID."""
        obj = _object(self._request("POST", "/v1/containers", json=request.to_json()).json(), "answer")
        try:
            return _typed(obj, "id", str)
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
        self, ref: str, *, follow: bool = False, tail: int | None = None, timestamps: bool = False
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
        """SIGTERM, SIGKILL after `timeout` seconds (hyperd's default: 10), then power off."""
        params = {} if timeout is None else {"t": str(timeout)}
        # Wait longer than the grace period: the VM still has to power off after it.
        grace = 10 if timeout is None else max(timeout, 0)
        self._request("POST", _container_path(ref, "stop"), params=params, timeout=grace + _REQUEST_TIMEOUT)

    def kill(self, ref: str, *, signal: str | None = None) -> None:
        params = {} if signal is None else {"signal": signal}
        self._request("POST", _container_path(ref, "kill"), params=params)

    def wait(self, ref: str) -> int:
        """Block until the container has exited; its exit code. No client-side timeout."""
        import httpx

        answer = self._request(
            "POST", _container_path(ref, "wait"), timeout=httpx.Timeout(None, connect=_PING_TIMEOUT)
        )
        obj = _object(answer.json(), "wait answer")
        try:
            return _typed(obj, "exit_code", int)
        except ValueError as exc:
            raise InternalError(f"hyperd's answer to a wait has no exit code: {exc}") from exc

    def remove(self, ref: str, *, force: bool = False) -> None:
        params = {"force": "1"} if force else {}
        self._request("DELETE", _container_path(ref), params=params)

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
    """A client of the running hyperd, starting it in the background when none answers.

    The start happens under an exclusive lock on `hyperd.start.lock`, and the
    ping is retried once the lock is held, so CLIs that race start one daemon.
    """
    paths.runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    client = DaemonClient(paths.runtime / SOCKET_NAME)
    if _answers(client):
        return client
    try:
        with exclusive_lock(paths.runtime / START_LOCK_NAME):
            if _answers(client):
                return client
            command = default_daemon_command(paths) if daemon_command is None else list(daemon_command)
            _start_daemon(client, command, paths.state / LOG_NAME, stderr, start_timeout)
            return client
    except BaseException:
        client.close()
        raise


def _answers(client: DaemonClient, *, timeout: float = _PING_TIMEOUT) -> bool:
    """Whether hyperd answers a ping on the client's socket."""
    # A plain connect first: httpcore leaks the socket of a failed unix-socket
    # connect (1.0.9), and polling a starting daemon would leak one per try.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(str(client.socket_path))
        except OSError:
            return False
    try:
        client.ping(timeout=timeout)
    except Unavailable:
        return False
    return True


def _start_daemon(
    client: DaemonClient, command: list[str], log_path: Path, stderr: TextIO, timeout: float
) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    print(f"hyper: started hyperd in the background (pid {process.pid}, log {log_path})", file=stderr)
    deadline = time.monotonic() + timeout
    while True:
        if _answers(client, timeout=max(0.1, min(_PING_TIMEOUT, deadline - time.monotonic()))):
            _detached_daemons.append(process)
            return
        status = process.poll()
        if status is not None:
            raise Unavailable(
                f"hyperd exited with status {status} before answering on {client.socket_path}; "
                f"the end of {log_path}:\n{_log_tail(log_path)}",
                hint=_START_HINT,
            )
        if time.monotonic() >= deadline:
            _stop_failed_daemon(process)
            raise Unavailable(
                f"hyperd did not answer on {client.socket_path} within {timeout:g} seconds; "
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
    """The `hyper.errors` class of the body's category, with its message and hint."""
    try:
        body = response.json()
        message, hint = body["message"], body.get("hint")
        error_class = _ERROR_CLASSES[Category(body["category"])]
        if not isinstance(message, str) or not (hint is None or isinstance(hint, str)):
            raise TypeError("message or hint is not a string")
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text.strip()[:500] or response.reason_phrase
        return InternalError(f"hyperd answered HTTP {response.status_code}: {text}")
    return error_class(message, hint=hint)


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


def _object(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise InternalError(f"hyperd sent a {what} that is not a JSON object")
    return value


def _typed(obj: Mapping[str, object], key: str, kind: type[_T]) -> _T:
    value = obj.get(key)
    # bool is an int in Python, never in the API.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key!r} is {value!r}, not a {kind.__name__}")
    return value


def _optional(obj: Mapping[str, object], key: str, kind: type[_T]) -> _T | None:
    return None if obj.get(key) is None else _typed(obj, key, kind)


def _number(obj: Mapping[str, object], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} is {value!r}, not a number")
    return float(value)


def _optional_number(obj: Mapping[str, object], key: str) -> float | None:
    return None if obj.get(key) is None else _number(obj, key)


def _strings(value: object, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{key!r} is not a list of strings")
    return value


def _labels(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("'labels' is not an object of strings")
    return value
