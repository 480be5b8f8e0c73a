"""Host-wide leases on the uids (and gids) VMs' QEMUs run as.

Each running VM holds one id from JAIL_ID_BASE+1 … JAIL_ID_BASE+65535 (see
hyper.vm.jail), whoever started it: hyperd, a foreground `hyper run`, a test
with its own state directory. So the leases live in one host-wide directory
(`/run/hyper-jail/ids`, tmpfs: a reboot ends every VM and every lease), one
file per id naming the VM and its cgroups, changed only under one lock.

An id is in use while its lease file is locked (a VM being started: the
jailer holds the lock until it executes QEMU), or while its cgroups hold a
process, or while any process runs as that uid. Only when nothing of a VM
remains is its lease removed, and then its id comes back into use after every
other id was used once (ids are handed out in turn), so that a new VM never
inherits the leftovers (keys, anything) of the one before.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hyper.errors import ResourceExhausted
from hyper.vm import cgroups
from hyper.vm.jail import JAIL_ID_SLOTS


@dataclass(frozen=True)
class Lease:
    uid: int
    path: Path
    token: str
    fd: int  # the lease file, locked (LOCK_EX) until QEMU is running


class IdPool:
    def __init__(self, directory: Path, base: int) -> None:
        self.directory = directory
        self.base = base

    @property
    def ids(self) -> Path:
        return self.directory / "ids"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.ids.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def allocate(self, name: str, cgroups_for: Callable[[int], tuple[str, ...]]) -> Lease:
        """A free id for VM `name`, its lease written (with the cgroups that
        `cgroups_for(uid)` names) and locked. Stale leases are reclaimed first."""
        with self._locked():
            self._reclaim_stale()
            busy = {int(p.name) for p in self.ids.iterdir() if p.name.isdigit()} | self._running_uids()
            start = self._next_slot()
            for step in range(JAIL_ID_SLOTS - 1):
                slot = (start - 1 + step) % (JAIL_ID_SLOTS - 1) + 1
                uid = self.base + slot
                if uid in busy:
                    continue
                path = self.ids / str(uid)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                token = secrets.token_hex(8)
                doc = {"uid": uid, "name": name, "token": token, "cgroups": list(cgroups_for(uid))}
                os.write(fd, json.dumps(doc).encode())
                (self.directory / "next").write_text(str(slot % (JAIL_ID_SLOTS - 1) + 1))
                return Lease(uid, path, token, fd)
        raise ResourceExhausted(
            f"all {JAIL_ID_SLOTS - 1} VM user ids from {self.base + 1} are in use",
            hint="stop some VMs; HYPER_JAIL_ID_BASE moves the range",
        )

    def release(self, path: str, token: str | None = None) -> bool:
        """Remove a VM's cgroups and lease once nothing of it runs; True when gone.
        With `token`, only the lease of that allocation (its id may be reused)."""
        with self._locked():
            return self._remove_if_idle(Path(path), token, self._running_uids())

    def sweep(self, vm_cgroups: Iterable[Path] = ()) -> list[int]:
        """Reclaim every lease whose VM is gone, and remove the empty cgroups of
        `vm_cgroups` that no lease names (hyperd's start). The ids reclaimed."""
        with self._locked():
            reclaimed = self._reclaim_stale()
            named: set[str] = set()
            for path in self.ids.iterdir():
                with contextlib.suppress(OSError, ValueError):
                    named.update(json.loads(path.read_text()).get("cgroups") or ())
            orphans = [str(d) for d in vm_cgroups if str(d) not in named]
            cgroups.remove(orphans, timeout=0)
            return reclaimed

    def _reclaim_stale(self) -> list[int]:
        running = self._running_uids()
        return [
            int(path.name)
            for path in sorted(self.ids.iterdir())
            if path.name.isdigit() and self._remove_if_idle(path, None, running)
        ]

    def _remove_if_idle(self, path: Path, token: str | None, running: set[int]) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True  # already reclaimed, cgroups and all
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a VM is starting with it
            try:
                doc = json.loads(os.read(fd, 1 << 16) or b"{}")
            except ValueError:
                doc = {}
            if token is not None and doc.get("token") != token:
                return False
            directories = [str(d) for d in doc.get("cgroups") or ()]
            if int(path.name) in running or cgroups.pids(directories):
                return False
            if not cgroups.remove(directories):
                return False
            path.unlink()
            return True
        finally:
            os.close(fd)

    def _next_slot(self) -> int:
        try:
            slot = int((self.directory / "next").read_text())
        except (OSError, ValueError):
            return 1
        return slot if 1 <= slot < JAIL_ID_SLOTS else 1

    def _running_uids(self) -> set[int]:
        """Uids in the range that some live process runs as (/proc/PID is owned by
        it). A zombie does not count: a detached QEMU stays one until init reaps it."""
        found: set[int] = set()
        low, high = self.base, self.base + JAIL_ID_SLOTS
        with os.scandir("/proc") as entries:
            for entry in entries:
                if entry.name.isdigit():
                    with contextlib.suppress(OSError):
                        uid = entry.stat(follow_symlinks=False).st_uid
                        if low <= uid < high and not _zombie(entry.path):
                            found.add(uid)
        return found


def _zombie(proc_dir: str) -> bool:
    with open(os.path.join(proc_dir, "stat")) as f:
        return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
