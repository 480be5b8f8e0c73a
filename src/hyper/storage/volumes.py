"""Named and anonymous volumes: Docker's `local` driver, records in SQLite, data under the state directory.

A volume is a directory, `STATE/volumes/NAME/_data` (Docker's layout), and a
row in `STATE/volumes/volumes.db`. The store records which containers use
each volume, so that one in use is not removed without `force`, and `rm -v`
finds a container's anonymous volumes. Both hyperd and a foreground `hyper
run` open the store (SQLite in WAL mode serializes them); a user whose
container directory is gone (a foreground run killed before its clean-up)
no longer counts.

A volume made with a size (`--opt size=64m`, and every tenant's volume) is
bounded by a file system of that size mounted on its `_data`
(hyper.storage.volume_disk); one without is a plain directory, bounded by
the host's disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyper.database import open_database
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument, NotFound
from hyper.locks import exclusive_lock
from hyper.storage import volume_disk
from hyper.storage.mounts import check_volume_name, volume_size

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS volumes (
        name TEXT PRIMARY KEY,
        created REAL NOT NULL,
        anonymous INTEGER NOT NULL,
        labels TEXT NOT NULL,
        size INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS users (
        volume TEXT NOT NULL,
        container TEXT NOT NULL,
        PRIMARY KEY (volume, container)
    )""",
)
ANONYMOUS_LABEL = "com.docker.volume.anonymous"
# A tenant's volumes are named OWNER.NAME in the one store (hyper.tenants.scope).
VOLUME_SEPARATOR = "."


@dataclass(frozen=True)
class Volume:
    name: str
    mountpoint: Path
    created: float
    anonymous: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    size: int = 0  # bytes it may hold (its own file system); 0: a plain directory

    @property
    def directory(self) -> Path:
        return self.mountpoint.parent

    def document(self, *, usage: tuple[int, int] | None = None) -> dict[str, Any]:
        """Docker's Volume object; `usage` is (size in bytes, containers using it)."""
        doc: dict[str, Any] = {
            "Name": self.name,
            "Driver": "local",
            "Mountpoint": str(self.mountpoint),
            "CreatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "Labels": dict(self.labels),
            "Scope": "local",
            "Options": {"size": str(self.size)} if self.size else None,
        }
        if usage is not None:
            doc["UsageData"] = {"Size": usage[0], "RefCount": usage[1]}
        return doc


def directory_size(path: Path) -> int:
    """Allocated bytes under `path` (du's count), hard links once."""
    total, seen = 0, set()
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


class VolumeStore:
    """The volumes under `root` (STATE/volumes); `containers` is where live containers have directories."""

    def __init__(self, root: Path, containers: Path) -> None:
        self.root = root
        self.containers = containers
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = open_database(root / "volumes.db", timeout=30)
        for statement in SCHEMA:
            self._db.execute(statement)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(volumes)")}
        if "size" not in columns:  # a store made before volumes had sizes
            with contextlib.suppress(sqlite3.OperationalError):  # another process added it meanwhile
                self._db.execute("ALTER TABLE volumes ADD COLUMN size INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> VolumeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _volume(self, row: tuple[str, float, int, str, int]) -> Volume:
        name, created, anonymous, labels, size = row
        return Volume(name, self.root / name / "_data", created, bool(anonymous), json.loads(labels), size)

    def create(
        self,
        name: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        options: Mapping[str, str] | None = None,
        driver: str | None = None,
        size: int | None = None,
        anonymous: bool = False,
    ) -> Volume:
        """A new volume, or the existing one of that name (as Docker answers). No name: anonymous
        (a tenant's anonymous volumes are given one in its own space). Its size is the `size`
        option's, else `size` (a mount's volume-opt, a tenant's default), else none."""
        if driver not in (None, "", "local"):
            raise InvalidArgument(
                f"volume driver {driver!r} is not supported", hint="Hyper has the local driver"
            )
        size = volume_size(options or {}) or size
        anonymous = anonymous or name is None
        name = secrets.token_hex(32) if name is None else check_volume_name(name)
        with contextlib.suppress(NotFound):
            existing = self.get(name)
            if not existing.size:
                existing.mountpoint.mkdir(parents=True, exist_ok=True)
            return existing
        all_labels = dict(labels or {})
        if anonymous:
            all_labels.setdefault(ANONYMOUS_LABEL, "")
        # Made whole, then recorded: a volume's row (which a tenant's quota counts) never
        # stands for a disk still being made; the lock keeps two makers of one name apart.
        with exclusive_lock(self.root / ".create.lock"):
            with contextlib.suppress(NotFound):
                return self.get(name)  # made by another meanwhile
            directory = self.root / name
            try:
                if size:
                    volume_disk.make_disk(directory, size)
                else:
                    (directory / "_data").mkdir(parents=True, exist_ok=True)
                os.chmod(directory, 0o701)  # as Docker's: the data directory is reached, not listed
                self._db.execute(
                    "INSERT INTO volumes (name, created, anonymous, labels, size) VALUES (?, ?, ?, ?, ?)",
                    (name, time.time(), int(anonymous), json.dumps(all_labels), size or 0),
                )
            except BaseException:
                if size:
                    volume_disk.unmount(directory)
                shutil.rmtree(directory, ignore_errors=True)
                raise
        return self.get(name)

    def ensure_mounted(self, volume: Volume) -> Volume:
        """A sized volume's file system mounted on its mountpoint (a VM's share is to take it)."""
        if volume.size:
            volume_disk.ensure_mounted(volume.directory)
        return volume

    def mount_all(self) -> list[str]:
        """Every sized volume mounted (hyperd's start): the failures, one line each."""
        failures = []
        for volume in self.all():
            try:
                self.ensure_mounted(volume)
            except HyperError as exc:
                failures.append(f"volume {volume.name}: {exc}")
        return failures

    def total_size(self, prefix: str) -> int:
        """The sizes of the volumes whose names start with `prefix` (a tenant's), summed."""
        (total,) = self._db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM volumes WHERE substr(name, 1, ?) = ?", (len(prefix), prefix)
        ).fetchone()
        return int(total)

    def get(self, name: str) -> Volume:
        row = self._db.execute(
            "SELECT name, created, anonymous, labels, size FROM volumes WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no such volume: {name}", hint="`hyper volume ls` lists them")
        return self._volume(row)

    def exists(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM volumes WHERE name = ?", (name,)).fetchone() is not None

    def all(self) -> list[Volume]:
        rows = self._db.execute(
            "SELECT name, created, anonymous, labels, size FROM volumes ORDER BY name"
        ).fetchall()
        return [self._volume(row) for row in rows]

    def users(self, name: str) -> list[str]:
        """The containers using `name` (those whose directory is gone are forgotten)."""
        found = [c for (c,) in self._db.execute("SELECT container FROM users WHERE volume = ?", (name,))]
        gone = [c for c in found if not (self.containers / c).exists()]
        for container in gone:
            self.release(container)
        return [c for c in found if c not in gone]

    def use(self, names: Iterable[str], container: str) -> None:
        for name in names:
            self.get(name)
            self._db.execute(
                "INSERT OR IGNORE INTO users (volume, container) VALUES (?, ?)", (name, container)
            )

    def release(self, container: str) -> list[str]:
        """Forget `container` as a user; returns the volumes it used."""
        names = [v for (v,) in self._db.execute("SELECT volume FROM users WHERE container = ?", (container,))]
        self._db.execute("DELETE FROM users WHERE container = ?", (container,))
        return names

    def remove(self, name: str, *, force: bool = False) -> None:
        volume = self.get(name)
        users = self.users(name)
        if users and not force:
            raise FailedPrecondition(
                f"volume {name} is in use by container(s) {', '.join(u[:12] for u in users)}",
                hint="remove those containers first, or use -f",
            )
        if volume.size:  # its file system first: a failure leaves the volume as it was
            volume_disk.unmount(volume.directory)
        self._db.execute("DELETE FROM users WHERE volume = ?", (name,))
        self._db.execute("DELETE FROM volumes WHERE name = ?", (name,))
        shutil.rmtree(volume.directory, ignore_errors=True)

    def remove_anonymous(self, names: Iterable[str]) -> list[str]:
        """`rm -v`: those of `names` that are anonymous and used by no other container."""
        removed: list[str] = []
        for name in names:
            with contextlib.suppress(NotFound):
                if self.get(name).anonymous and not self.users(name):
                    self.remove(name)
                    removed.append(name)
        return removed

    def prune(
        self, *, all_volumes: bool = False, labels: Mapping[str, str] | None = None
    ) -> tuple[list[str], int]:
        """Unused volumes (anonymous ones only unless `all_volumes`, as Docker 23+):
        the names removed and the bytes freed."""
        removed: list[str] = []
        reclaimed = 0
        for volume in self.all():
            if not (volume.anonymous or all_volumes) or self.users(volume.name):
                continue
            if labels and any(volume.labels.get(k) != v for k, v in labels.items()):
                continue
            reclaimed += directory_size(volume.mountpoint)
            self.remove(volume.name)
            removed.append(volume.name)
        return removed, reclaimed


def mount_sized_volumes(root: Path, containers: Path) -> list[str]:
    """hyperd's start: every sized volume's file system mounted; the failures, one line each."""
    if not (root / "volumes.db").exists():
        return []
    with VolumeStore(root, containers) as store:
        return store.mount_all()
