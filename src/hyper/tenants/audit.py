"""The audit log: every mutating tenant request, appended, never rewritten.

`STATE/tenants/audit.log`, one JSON object per line: sequence number, time,
tenant, key ID, action (method and path), object, result (HTTP status) and
the client's address. The file is opened only with O_APPEND, and each entry
carries the SHA-256 of the one before it, chained from a fixed start: an
entry changed, dropped or reordered later breaks the chain at that place,
which `verify` (and `hyper tenant audit --verify`) reports. hyperd has no
way to change or delete an entry.

A write is one `write(2)` of one line to an O_APPEND descriptor: the kernel
keeps it whole even when hyperd is killed right after (fsync'd at close).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hyper.errors import DataLoss

GENESIS = "0" * 64
TAIL_BYTES = 1 << 16  # enough of the file's end to hold its last entry


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: float
    tenant: str  # the tenant's ID
    tenant_name: str
    key: str  # the access key's ID, or `keystone:USER_ID`
    action: str  # e.g. "POST /containers/create"
    object: str  # the container, image, network, volume or exec the request named or made
    result: int  # the HTTP status answered (499: the client went away)
    source: str  # the client's address
    prev: str  # the previous entry's hash
    hash: str = ""

    def body(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("hash")
        return doc


def entry_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def _entry(doc: dict[str, Any]) -> AuditEntry:
    try:
        return AuditEntry(**doc)
    except TypeError as exc:
        raise DataLoss(f"the audit log holds an entry of unknown form: {exc}") from None


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._seq, self._last = self._tail()

    def _tail(self) -> tuple[int, str]:
        """The last entry's sequence number and hash (0 and GENESIS for a new log)."""
        with self.path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            lines = f.read().splitlines()
        for line in reversed(lines):
            with contextlib.suppress(ValueError, TypeError):
                entry = _entry(json.loads(line))
                return entry.seq, entry.hash
        return 0, GENESIS

    def append(
        self,
        *,
        tenant: str,
        tenant_name: str,
        key: str,
        action: str,
        object: str,
        result: int,
        source: str,
    ) -> AuditEntry:
        self._seq += 1
        entry = AuditEntry(
            self._seq, time.time(), tenant, tenant_name, key, action, object, result, source, self._last
        )
        entry = AuditEntry(**{**asdict(entry), "hash": entry_hash(entry.body())})
        os.write(self._fd, json.dumps(asdict(entry), separators=(",", ":")).encode() + b"\n")
        self._last = entry.hash
        return entry

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def entries(self) -> Iterator[AuditEntry]:
        """Every entry, oldest first (blocking: read it in a thread)."""
        with self.path.open("rb") as f:
            for number, line in enumerate(f, start=1):
                try:
                    yield _entry(json.loads(line))
                except ValueError:
                    raise DataLoss(f"line {number} of the audit log {self.path} is not JSON") from None

    def read(
        self, *, tenant: str | None = None, since: float | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        found = [
            entry
            for entry in self.entries()
            if (tenant is None or entry.tenant == tenant) and (since is None or entry.time >= since)
        ]
        return found[-limit:] if limit else found

    def verify(self) -> int:
        """Check the chain; returns the number of entries, or raises DataLoss at the first break."""
        previous, count = GENESIS, 0
        for entry in self.entries():
            count += 1
            if entry.prev != previous or entry.seq != count or entry_hash(entry.body()) != entry.hash:
                raise DataLoss(
                    f"the audit log {self.path} was changed at entry {count} (sequence {entry.seq})",
                    hint="entries were edited, removed or reordered after they were written",
                )
            previous = entry.hash
        return count
