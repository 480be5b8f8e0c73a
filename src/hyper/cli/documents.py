"""What the CLI sends hyperd and what hyperd answers, as typed values.

hyperd's own API (docs/hyperd-api.md: containers, logs, the create body) and
the Docker Engine API documents that hyperd serves under `/docker`, which the
CLI's `exec`, `attach`, `cp`, `inspect`, `top` and `stats` read (inspect,
top, stats, exec, path stat). JSON is checked here field by field into
frozen dataclasses, so a command never indexes a raw dict and a malformed
answer is one clear `InternalError`. `hyper.cli.client` re-exports them.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from hyper.errors import InternalError
from hyper.runtime.spec import DEFAULT_MEMORY_MIB, RunOptions

_T = TypeVar("_T")

# Go's os.FileMode type bits, which Docker's X-Docker-Container-Path-Stat uses.
MODE_DIR = 1 << 31
MODE_SYMLINK = 1 << 27


# ---- field checks ------------------------------------------------------------------


def json_object(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise InternalError(f"hyperd sent a {what} that is not a JSON object")
    return value


def typed(obj: Mapping[str, object], key: str, kind: type[_T]) -> _T:
    value = obj.get(key)
    # bool is an int in Python, never in the API.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key!r} is {value!r}, not a {kind.__name__}")
    return value


def optional(obj: Mapping[str, object], key: str, kind: type[_T]) -> _T | None:
    return None if obj.get(key) is None else typed(obj, key, kind)


def number(obj: Mapping[str, object], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} is {value!r}, not a number")
    return float(value)


def optional_number(obj: Mapping[str, object], key: str) -> float | None:
    return None if obj.get(key) is None else number(obj, key)


def strings(value: object, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{key!r} is not a list of strings")
    return value


def string_map(value: object, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{key!r} is not an object of strings")
    return value


def _counter(obj: Mapping[str, object], key: str) -> int:
    """A non-negative count that may be absent (0), as Docker's stats omit empty ones."""
    value = obj.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key!r} is {value!r}, not a count")
    return value


def _section(obj: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key!r} is not an object")
    return value


# ---- hyperd's own API (/v1) ---------------------------------------------------------


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
    health: str | None = None  # starting, healthy or unhealthy, for a container with a health check

    @classmethod
    def from_json(cls, value: object) -> ContainerInfo:
        obj = json_object(value, "container")
        try:
            return cls(
                id=typed(obj, "id", str),
                name=typed(obj, "name", str),
                image=typed(obj, "image", str),
                image_id=typed(obj, "image_id", str),
                command=tuple(strings(obj.get("command"), "command")),
                created=number(obj, "created"),
                state=ContainerState(typed(obj, "state", str)),
                started_at=optional_number(obj, "started_at"),
                finished_at=optional_number(obj, "finished_at"),
                exit_code=optional(obj, "exit_code", int),
                reason=optional(obj, "reason", str),
                labels=string_map(obj.get("labels", {}), "labels"),
                health=_health_status(obj.get("health")),
            )
        except ValueError as exc:
            raise InternalError(f"hyperd sent a malformed container: {exc}") from exc


SETTINGS = (
    "nano_cpus",
    "cpuset_cpus",
    "pids_limit",
    "memory_swap",
    "pod",
    "stop_signal",
    "stop_timeout",
    "health_test",
    "health_interval",
    "health_timeout",
    "health_start_period",
    "health_retries",
    "cap_add",
    "cap_drop",
    "privileged",
    "security_opt",
    "ulimits",
    "group_add",
    "sysctls",
    "shm_size",
    "init",
    "mounts",
    "read_only",
    "volumes_from",
    "storage_opt",
    "network",
    "network_aliases",
    "ip",
    "publish",
    "publish_all",
    "expose",
    "dns",
    "dns_search",
    "dns_options",
    "extra_hosts",
    "log_opts",
)
_DEFAULT_OPTIONS = RunOptions(image="")


def _health_status(value: object) -> str | None:
    if value is None:
        return None
    status = json_object(value, "health").get("status")
    if not isinstance(status, str):
        raise ValueError("health has no status")
    return status


@dataclass(frozen=True)
class ContainerCreate:
    """The body of `POST /v1/containers`: what `run -d` and `create` ask for."""

    image: str
    command: tuple[str, ...] = ()
    entrypoint: str | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    memory_mib: int | None = DEFAULT_MEMORY_MIB  # None: hyperd's default size
    cpus: int | None = 1
    hostname: str | None = None
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    tty: bool = False
    interactive: bool = False
    restart: str = "no"
    remove: bool = False
    start: bool = True
    # Docker's StdinOnce: the end of an attached client's input closes the
    # process's stdin (`create -i`; not `run -d -i`, which nobody attaches to).
    stdin_once: bool = False
    console_size: tuple[int, int] | None = None  # a TTY's first size (a foreground run's terminal)
    # The stop, health-check and confinement options set away from their
    # defaults, by their RunOptions (and hyperd API) names.
    settings: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def from_run_options(
        cls,
        options: RunOptions,
        *,
        name: str | None,
        labels: Mapping[str, str],
        restart: str = "no",
        start: bool = True,
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
            tty=options.tty,
            interactive=options.interactive,
            restart=restart,
            remove=options.remove,
            start=start,
            stdin_once=options.interactive and not start,
            settings={
                option: list(value) if isinstance(value, tuple) else value
                for option in SETTINGS
                if (value := getattr(options, option)) != getattr(_DEFAULT_OPTIONS, option)
            },
        )

    def to_json(self) -> dict[str, object]:
        size = {key: value for key, value in (("memory_mib", self.memory_mib), ("cpus", self.cpus)) if value}
        return {
            "image": self.image,
            "command": list(self.command),
            "entrypoint": self.entrypoint,
            "env": list(self.env),
            "workdir": self.workdir,
            "user": self.user,
            **size,
            "hostname": self.hostname,
            "name": self.name,
            "labels": dict(self.labels),
            "tty": self.tty,
            "interactive": self.interactive,
            "restart": self.restart,
            "remove": self.remove,
            "start": self.start,
            "stdin_once": self.stdin_once,
            **({"console_size": list(self.console_size)} if self.console_size else {}),
            **self.settings,
        }


@dataclass(frozen=True)
class LogRecord:
    """One chunk of a container's output: which stream, when, and the exact bytes."""

    stream: str
    time: float
    data: bytes

    @classmethod
    def from_json(cls, value: object) -> LogRecord:
        obj = json_object(value, "log record")
        try:
            stream = typed(obj, "stream", str)
            if stream not in ("stdout", "stderr"):
                raise ValueError(f"stream is {stream!r}")
            data = base64.b64decode(typed(obj, "data", str), validate=True)
            return cls(stream=stream, time=number(obj, "time"), data=data)
        except (ValueError, binascii.Error) as exc:
            raise InternalError(f"hyperd sent a malformed log record: {exc}") from exc


# ---- container inspect ---------------------------------------------------------------


@dataclass(frozen=True)
class ContainerDetails:
    """GET /docker/containers/REF/json: what attach decides by, and the whole
    document, which `hyper inspect` prints as it came."""

    id: str
    name: str
    status: str
    running: bool
    paused: bool
    tty: bool
    open_stdin: bool
    restart_count: int
    document: Mapping[str, object] = field(repr=False)

    @classmethod
    def from_json(cls, value: object) -> ContainerDetails:
        obj = json_object(value, "container inspect")
        try:
            state = _section(obj, "State")
            config = _section(obj, "Config")
            return cls(
                id=typed(obj, "Id", str),
                name=typed(obj, "Name", str).removeprefix("/"),
                status=typed(state, "Status", str),
                running=bool(state.get("Running")),
                paused=bool(state.get("Paused")),
                tty=bool(config.get("Tty")),
                open_stdin=bool(config.get("OpenStdin")),
                restart_count=_counter(obj, "RestartCount"),
                document=obj,
            )
        except ValueError as exc:
            raise InternalError(f"hyperd sent a malformed container inspect: {exc}") from exc


# ---- top -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessTable:
    """GET /docker/containers/REF/top: `ps` columns and rows from inside the VM."""

    titles: tuple[str, ...]
    processes: tuple[tuple[str, ...], ...]

    @classmethod
    def from_json(cls, value: object) -> ProcessTable:
        obj = json_object(value, "process list")
        try:
            titles = tuple(strings(obj.get("Titles"), "Titles"))
            rows = obj.get("Processes") or []
            if not isinstance(rows, list):
                raise ValueError("'Processes' is not a list")
            processes = tuple(tuple(strings(row, "Processes")) for row in rows)
        except ValueError as exc:
            raise InternalError(f"hyperd sent a malformed process list: {exc}") from exc
        if any(len(row) != len(titles) for row in processes):
            raise InternalError("hyperd sent a process list whose rows do not match its titles")
        return cls(titles, processes)


# ---- stats -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsSample:
    """One answer of GET /docker/containers/REF/stats?stream=false: the figures
    `hyper stats` shows, with the previous CPU reading Docker's CPU % needs."""

    id: str
    name: str
    cpu_total: int
    precpu_total: int
    system_cpu: int
    presystem_cpu: int
    online_cpus: int
    memory_usage: int
    memory_limit: int
    memory_stats: Mapping[str, int]
    network_rx: int
    network_tx: int
    block_read: int
    block_write: int
    pids: int

    @classmethod
    def from_json(cls, value: object) -> StatsSample:
        obj = json_object(value, "stats answer")
        try:
            cpu, precpu = _section(obj, "cpu_stats"), _section(obj, "precpu_stats")
            memory = _section(obj, "memory_stats")
            raw_stats = _section(memory, "stats")
            memory_stats = {key: _counter(raw_stats, key) for key in raw_stats}
            rx = tx = 0
            for figures in _section(obj, "networks").values():
                if not isinstance(figures, dict):
                    raise ValueError("a network's figures are not an object")
                rx += _counter(figures, "rx_bytes")
                tx += _counter(figures, "tx_bytes")
            read = write = 0
            entries = _section(obj, "blkio_stats").get("io_service_bytes_recursive") or []
            if not isinstance(entries, list):
                raise ValueError("'io_service_bytes_recursive' is not a list")
            for entry in entries:
                if not isinstance(entry, dict):
                    raise ValueError("a block I/O entry is not an object")
                op = str(entry.get("op", "")).lower()
                if op == "read":
                    read += _counter(entry, "value")
                elif op == "write":
                    write += _counter(entry, "value")
            return cls(
                id=typed(obj, "id", str),
                name=str(obj.get("name") or "").removeprefix("/"),
                cpu_total=_counter(_section(cpu, "cpu_usage"), "total_usage"),
                precpu_total=_counter(_section(precpu, "cpu_usage"), "total_usage"),
                system_cpu=_counter(cpu, "system_cpu_usage"),
                presystem_cpu=_counter(precpu, "system_cpu_usage"),
                online_cpus=_counter(cpu, "online_cpus"),
                memory_usage=_counter(memory, "usage"),
                memory_limit=_counter(memory, "limit"),
                memory_stats=memory_stats,
                network_rx=rx,
                network_tx=tx,
                block_read=read,
                block_write=write,
                pids=_counter(_section(obj, "pids_stats"), "current"),
            )
        except ValueError as exc:
            raise InternalError(f"hyperd sent malformed stats: {exc}") from exc


# ---- exec ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecConfig:
    """The body of POST /docker/containers/REF/exec."""

    command: tuple[str, ...]
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    stdin: bool = False
    detach: bool = False
    detach_keys: str | None = None

    def to_json(self) -> dict[str, object]:
        attached = not self.detach
        return {
            "AttachStdin": self.stdin and attached,
            "AttachStdout": attached,
            "AttachStderr": attached,
            "Tty": self.tty,
            "Env": list(self.env),
            "Cmd": list(self.command),
            "WorkingDir": self.workdir or "",
            "User": self.user or "",
            "DetachKeys": self.detach_keys or "",
        }


@dataclass(frozen=True)
class ExecDetails:
    """GET /docker/exec/ID/json: whether it still runs, and its exit code once it has ended."""

    id: str
    running: bool
    exit_code: int | None

    @classmethod
    def from_json(cls, value: object) -> ExecDetails:
        obj = json_object(value, "exec inspect")
        try:
            return cls(
                id=typed(obj, "ID", str),
                running=bool(obj.get("Running")),
                exit_code=optional(obj, "ExitCode", int),
            )
        except ValueError as exc:
            raise InternalError(f"hyperd sent a malformed exec inspect: {exc}") from exc


# ---- archive path stat ---------------------------------------------------------------------


@dataclass(frozen=True)
class PathStat:
    """Docker's X-Docker-Container-Path-Stat: a path in a container, lstat'ed."""

    name: str
    size: int
    mode: int
    link_target: str = ""

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & MODE_DIR)

    @property
    def is_symlink(self) -> bool:
        return bool(self.mode & MODE_SYMLINK)

    @classmethod
    def from_header(cls, header: str | None) -> PathStat:
        if not header:
            raise InternalError("hyperd sent no X-Docker-Container-Path-Stat header")
        try:
            obj = json_object(json.loads(base64.b64decode(header, validate=True)), "path stat")
            return cls(
                name=typed(obj, "name", str),
                size=_counter(obj, "size"),
                mode=_counter(obj, "mode"),
                link_target=optional(obj, "linkTarget", str) or "",
            )
        except (ValueError, binascii.Error) as exc:
            raise InternalError(f"hyperd sent a malformed path stat: {exc}") from exc
