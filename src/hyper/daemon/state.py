"""hyperd's record of its containers, in SQLite under the state directory.

Each write is one small statement in WAL mode (no fsync per commit), fast
enough to run on the event loop.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hyper.database import open_database
from hyper.errors import AlreadyExists, InvalidArgument, NotFound

# Names are unique per owner (a tenant, or "" for hyperd's admin): two tenants
# may both have a container named `web` (hyper.tenants).
SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL,
    doc TEXT NOT NULL,
    UNIQUE (owner, name)
)
"""
POD_SCHEMA = """
CREATE TABLE IF NOT EXISTS pods (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL
)
"""
# A state directory from before owners: its names were unique over all, and all the admin's.
MIGRATE_OWNERS = (
    "ALTER TABLE containers RENAME TO containers_before_owners",
    SCHEMA,
    "INSERT INTO containers (id, owner, name, doc) SELECT id, '', name, doc FROM containers_before_owners",
    "DROP TABLE containers_before_owners",
)

# Docker's rule for container names (ASCII only, at least two characters), with
# a bound on the length that Docker leaves open.
NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
MAX_NAME_LENGTH = 128


def valid_name(name: str) -> str:
    """`name` without the leading `/` Docker allows, if it is a valid container name."""
    bare = name[1:] if name.startswith("/") else name
    if len(bare) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"invalid container name: {len(bare)} characters is longer than {MAX_NAME_LENGTH}",
            hint="choose a shorter name",
        )
    if not NAME_PATTERN.fullmatch(bare) or not bare.isascii():
        raise InvalidArgument(
            f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
            hint="use at least two ASCII letters, digits, _ . or -, the first a letter or digit",
        )
    return bare


@dataclass(frozen=True)
class ContainerRecord:
    id: str
    name: str
    image: str
    image_id: str
    command: list[str]
    created: float
    state: str  # created | running | exited
    options: dict[str, Any]  # the RunOptions it was made with
    labels: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    qemu_pid: int | None = None
    vm: dict[str, Any] | None = None  # the VmSpec, to adopt the VM after a restart
    restart_policy: dict[str, Any] | None = None  # Docker's {"Name", "MaximumRetryCount"}
    restart_count: int = 0
    manually_stopped: bool = False  # stopped or killed by a user: no restart policy applies
    auto_remove: bool = False
    stdin_once: bool = False
    process: dict[str, Any] | None = None  # env, cwd and user the main process runs with
    healthcheck: dict[str, Any] | None = None  # Docker's Healthcheck, the user's merged with the image's
    health: dict[str, Any] | None = None  # the health checks' state (hyper.daemon.health)
    shell: list[str] | None = None  # the shell of CMD-SHELL health checks, when not /bin/sh -c
    console_size: list[int] | None = None  # rows and columns a TTY starts with
    recorded: dict[str, Any] = field(default_factory=dict)  # Docker fields kept for inspect only
    paused_stats: dict[str, Any] | None = None  # the guest's figures as it was paused, for `stats`
    oom_killed: bool = False  # its last run ended in an OOM kill (reason "OOMKilled")

    @property
    def owner(self) -> str:
        """The tenant the container belongs to; "" for hyperd's admin."""
        return str(self.options.get("owner") or "")

    def public(self) -> dict[str, Any]:
        """The API's view (docs/hyperd-api.md)."""
        hidden = (
            "options", "qemu_pid", "vm", "process", "stdin_once", "shell", "console_size", "recorded",
            "paused_stats",
        )  # fmt: skip
        return {key: value for key, value in asdict(self).items() if key not in hidden}


@dataclass(frozen=True)
class PodRecord:
    """A pod made by `hyper pod create` (hyper.daemon.named_pods): its VM is
    its infra container's, made when the pod starts; its containers are
    those whose RunOptions name it (`--pod`)."""

    id: str
    name: str
    created: float
    options: dict[str, Any] = field(default_factory=dict)  # hyper.daemon.named_pods.PodOptions
    labels: dict[str, str] = field(default_factory=dict)
    infra: str = ""  # the infra container's ID while it exists

    def public(self) -> dict[str, Any]:
        return asdict(self)


class StateStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = open_database(path)
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(containers)")]
        if columns and "owner" not in columns:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATE_OWNERS:
                    self._db.execute(statement)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        self._db.execute(SCHEMA)
        self._db.execute(POD_SCHEMA)

    # -- pods ---------------------------------------------------------------------
    def insert_pod(self, record: PodRecord) -> None:
        try:
            self._db.execute(
                "INSERT INTO pods (id, name, doc) VALUES (?, ?, ?)",
                (record.id, record.name, json.dumps(asdict(record))),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(
                f"the pod name {record.name!r} is already in use",
                hint="remove that pod (hyper pod rm) or choose another name",
            ) from None

    def update_pod(self, record: PodRecord, **changes: Any) -> PodRecord:
        new = replace(record, **changes)
        self._db.execute("UPDATE pods SET doc = ? WHERE id = ?", (json.dumps(asdict(new)), new.id))
        return new

    def delete_pod(self, pod_id: str) -> None:
        self._db.execute("DELETE FROM pods WHERE id = ?", (pod_id,))

    def all_pods(self) -> list[PodRecord]:
        rows = self._db.execute("SELECT doc FROM pods").fetchall()
        records = [PodRecord(**json.loads(doc)) for (doc,) in rows]
        return sorted(records, key=lambda r: r.created, reverse=True)

    def resolve_pod(self, ref: str) -> PodRecord:
        """A pod by full ID, name or ID prefix."""
        if not ref:
            raise InvalidArgument("an empty pod reference")
        records = self.all_pods()
        for record in records:
            if ref in (record.id, record.name):
                return record
        matches = [r for r in records if r.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise InvalidArgument(f"{ref!r} matches {len(matches)} pods", hint="give more of the ID")
        raise NotFound(f"no such pod: {ref}", hint="`hyper pod ps` lists them; `hyper pod create` makes one")

    def close(self) -> None:
        self._db.close()

    def insert(self, record: ContainerRecord) -> None:
        try:
            self._db.execute(
                "INSERT INTO containers (id, owner, name, doc) VALUES (?, ?, ?, ?)",
                (record.id, record.owner, record.name, json.dumps(asdict(record))),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(
                f"the container name {record.name!r} is already in use",
                hint="remove that container or choose another --name",
            ) from None

    def update(self, record: ContainerRecord, **changes: Any) -> ContainerRecord:
        new = replace(record, **changes)
        self._db.execute("UPDATE containers SET doc = ? WHERE id = ?", (json.dumps(asdict(new)), new.id))
        return new

    def rename(self, record: ContainerRecord, name: str) -> ContainerRecord:
        name = valid_name(name)
        new = replace(record, name=name)
        try:
            self._db.execute(
                "UPDATE containers SET name = ?, doc = ? WHERE id = ?",
                (name, json.dumps(asdict(new)), new.id),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"the container name {name!r} is already in use") from None
        return new

    def delete(self, container_id: str) -> None:
        self._db.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def all(self) -> list[ContainerRecord]:
        rows = self._db.execute("SELECT doc FROM containers").fetchall()
        records = [ContainerRecord(**json.loads(doc)) for (doc,) in rows]
        return sorted(records, key=lambda r: r.created, reverse=True)

    def resolve(self, ref: str, owner: str | None = None) -> ContainerRecord:
        """A container by full ID, name, or unambiguous ID prefix, among `owner`'s
        (None: everyone's, where a name two owners use means the admin's)."""
        if not ref:
            raise InvalidArgument("an empty container reference")
        records = [r for r in self.all() if owner is None or r.owner == owner]
        for record in records:
            if ref == record.id:
                return record
        named = [r for r in records if r.name == ref]
        if len(named) > 1:
            named = [r for r in named if not r.owner] or named
            if len(named) > 1:
                raise InvalidArgument(
                    f"{len(named)} tenants have a container named {ref!r}", hint="give its ID instead"
                )
        if named:
            return named[0]
        matches = [r for r in records if r.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise InvalidArgument(f"{ref!r} matches {len(matches)} containers", hint="give more of the ID")
        raise NotFound(f"no such container: {ref}", hint="`hyper ps -a` lists them")
