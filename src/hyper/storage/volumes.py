"""Named and anonymous volumes: Docker's `local` driver, records in SQLite, data under the state directory.

A volume is a directory, `STATE/volumes/NAME/_data` (Docker's layout), and a
row in `STATE/volumes/volumes.db`. The store records which containers use
each volume, so that one in use is not removed without `force`, and `rm -v`
finds a container's anonymous volumes. Both hyperd and a foreground `hyper
run` open the store (SQLite in WAL mode serializes them); a user whose
container directory is gone (a foreground run killed before its clean-up)
no longer counts.
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

from hyper.errors import FailedPrecondition, InvalidArgument, NotFound
from hyper.storage.mounts import check_volume_name

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS volumes (
        name TEXT PRIMARY KEY,
        created REAL NOT NULL,
        anonymous INTEGER NOT NULL,
        labels TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS users (
        volume TEXT NOT NULL,
        container TEXT NOT NULL,
        PRIMARY KEY (volume, container)
    )""",
)
ANONYMOUS_LABEL = "com.docker.volume.anonymous"


@dataclass(frozen=True)
class Volume:
    name: str
    mountpoint: Path
    created: float
    anonymous: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    def document(self, *, usage: tuple[int, int] | None = None) -> dict[str, Any]:
        """Docker's Volume object; `usage` is (size in bytes, containers using it)."""
        doc: dict[str, Any] = {
            "Name": self.name,
            "Driver": "local",
            "Mountpoint": str(self.mountpoint),
            "CreatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "Labels": dict(self.labels),
            "Scope": "local",
            "Options": None,
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
        self._db = sqlite3.connect(
            root / "volumes.db", isolation_level=None, timeout=30, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        for statement in SCHEMA:
            self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> VolumeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _volume(self, row: tuple[str, float, int, str]) -> Volume:
        name, created, anonymous, labels = row
        return Volume(name, self.root / name / "_data", created, bool(anonymous), json.loads(labels))

    def create(
        self,
        name: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        options: Mapping[str, str] | None = None,
        driver: str | None = None,
    ) -> Volume:
        """A new volume, or the existing one of that name (as Docker answers). No name: anonymous."""
        if driver not in (None, "", "local"):
            raise InvalidArgument(
                f"volume driver {driver!r} is not supported", hint="Hyper has the local driver"
            )
        if options:
            raise InvalidArgument(
                f"volume options are not supported ({', '.join(sorted(options))})",
                hint="the local driver keeps a volume's files under Hyper's state directory",
            )
        anonymous = name is None
        name = secrets.token_hex(32) if name is None else check_volume_name(name)
        all_labels = dict(labels or {})
        if anonymous:
            all_labels.setdefault(ANONYMOUS_LABEL, "")
        data = self.root / name / "_data"
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data.parent, 0o701)  # as Docker's: the data directory is reached, not listed
        self._db.execute(
            "INSERT OR IGNORE INTO volumes (name, created, anonymous, labels) VALUES (?, ?, ?, ?)",
            (name, time.time(), int(anonymous), json.dumps(all_labels)),
        )
        return self.get(name)

    def get(self, name: str) -> Volume:
        row = self._db.execute(
            "SELECT name, created, anonymous, labels FROM volumes WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no such volume: {name}", hint="`hyper volume ls` lists them")
        return self._volume(row)

    def all(self) -> list[Volume]:
        rows = self._db.execute(
            "SELECT name, created, anonymous, labels FROM volumes ORDER BY name"
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
        self._db.execute("DELETE FROM users WHERE volume = ?", (name,))
        self._db.execute("DELETE FROM volumes WHERE name = ?", (name,))
        shutil.rmtree(volume.mountpoint.parent, ignore_errors=True)

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
