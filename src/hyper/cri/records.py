"""What the CRI knows beyond hyperd's own containers: its pod sandboxes and the
Kubernetes side of its containers (metadata, labels, annotations, log path).

Each record is one JSON file under `<state>/cri/`, written atomically, so
sandboxes and containers survive a hyperd restart as hyperd's pods do. The
records are frozen dataclasses; a sandbox's state moves only along
SANDBOX_TRANSITIONS.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hyper.errors import FailedPrecondition


class SandboxState(enum.Enum):
    READY = "ready"
    NOT_READY = "not-ready"  # stopped: its containers stopped, nothing runs for it


SANDBOX_TRANSITIONS: dict[SandboxState, frozenset[SandboxState]] = {
    SandboxState.READY: frozenset({SandboxState.NOT_READY}),
    SandboxState.NOT_READY: frozenset({SandboxState.NOT_READY}),  # a stop again is a no-op
}


@dataclass(frozen=True)
class Metadata:
    name: str
    namespace: str = ""
    uid: str = ""
    attempt: int = 0


@dataclass(frozen=True)
class PortMapping:
    protocol: str  # tcp, udp or sctp
    container_port: int
    host_port: int
    host_ip: str = ""


@dataclass(frozen=True)
class SandboxRecord:
    id: str
    metadata: Metadata
    created_at: int  # nanoseconds since the epoch, as the CRI counts
    state: SandboxState = SandboxState.READY
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    hostname: str = ""
    log_directory: str = ""
    dns_servers: tuple[str, ...] = ()
    dns_searches: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    port_mappings: tuple[PortMapping, ...] = ()
    runtime_handler: str = ""
    memory_limit_bytes: int = 0  # the pod's resources and overhead: its VM's size
    cpu_millis: int = 0
    # With CNI: the pod's network namespace (its name under /run/netns), the
    # plugins' result (for DEL) and the address it gave the pod.
    netns: str = ""
    cni_result: str = ""
    address: str = ""  # e.g. 203.0.113.2/24
    gateway: str = ""
    # The pod's namespaced sysctls (NAME=VALUE), written in its VM before each container starts.
    sysctls: tuple[str, ...] = ()

    def moved(self, state: SandboxState) -> SandboxRecord:
        if state not in SANDBOX_TRANSITIONS[self.state]:
            raise FailedPrecondition(
                f"pod sandbox {self.id[:12]} cannot go from {self.state.value} to {state.value}"
            )
        return dataclasses.replace(self, state=state)


@dataclass(frozen=True)
class ContainerRecord:
    """A CRI container: hyperd's container `id` plus what only Kubernetes cares about."""

    id: str
    sandbox_id: str
    metadata: Metadata
    image: str  # as the kubelet named it
    created_at: int
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    log_path: str = ""  # absolute: the sandbox's log directory joined with the container's log path
    mounts: tuple[tuple[str, str, bool], ...] = ()  # container path, host path, read-only


Record = TypeVar("Record", SandboxRecord, ContainerRecord)


def _to_json(record: SandboxRecord | ContainerRecord) -> dict[str, Any]:
    document = dataclasses.asdict(record)
    if isinstance(record, SandboxRecord):
        document["state"] = record.state.value
    return document


def _sandbox(document: dict[str, Any]) -> SandboxRecord:
    values = dict(document)
    values["metadata"] = Metadata(**values["metadata"])
    values["state"] = SandboxState(values["state"])
    values["port_mappings"] = tuple(PortMapping(**p) for p in values["port_mappings"])
    for key in ("dns_servers", "dns_searches", "dns_options", "sysctls"):
        values[key] = tuple(values.get(key, ()))
    return SandboxRecord(**values)


def _container(document: dict[str, Any]) -> ContainerRecord:
    values = dict(document)
    values["metadata"] = Metadata(**values["metadata"])
    values["mounts"] = tuple((m[0], m[1], bool(m[2])) for m in values["mounts"])
    return ContainerRecord(**values)


class RecordStore:
    """Sandbox and container records, one JSON file each."""

    def __init__(self, root: Path) -> None:
        self.sandbox_dir = root / "sandboxes"
        self.container_dir = root / "containers"
        for directory in (self.sandbox_dir, self.container_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def sandboxes(self) -> list[SandboxRecord]:
        return [_sandbox(d) for d in self._read_all(self.sandbox_dir)]

    def containers(self) -> list[ContainerRecord]:
        return [_container(d) for d in self._read_all(self.container_dir)]

    def save(self, record: SandboxRecord | ContainerRecord) -> None:
        directory = self.sandbox_dir if isinstance(record, SandboxRecord) else self.container_dir
        data = json.dumps(_to_json(record), sort_keys=True).encode()
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".new-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, directory / f"{record.id}.json")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def delete(self, record: SandboxRecord | ContainerRecord) -> None:
        directory = self.sandbox_dir if isinstance(record, SandboxRecord) else self.container_dir
        (directory / f"{record.id}.json").unlink(missing_ok=True)

    @staticmethod
    def _read_all(directory: Path) -> list[dict[str, Any]]:
        documents = []
        for path in sorted(directory.glob("*.json")):
            try:
                document = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue  # cut short by a crash before the rename cannot happen; anything else is not ours
            if isinstance(document, dict):
                documents.append(document)
        return documents
