"""A cgroup of its own for each VM's QEMU: memory, CPU and pids limits, v1 or v2.

On a cgroup v1 host (or a hybrid one, whose v2 hierarchy carries no
controller) each of the memory, cpu and pids hierarchies gets a directory
`PARENT/NAME`; on a v2 host one directory does, with those controllers
enabled in PARENT. The jailer moves itself into them before it executes
QEMU, so QEMU and every thread it makes are counted from the start. What is
pure (reading mountinfo, which files get which value) is separate from what
writes the cgroup filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hyper.errors import FailedPrecondition
from hyper.vm.jail import CgroupLimits

CONTROLLERS = ("memory", "cpu", "pids")
REMOVE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Hierarchy:
    mount: Path
    controllers: frozenset[str]  # those of CONTROLLERS it carries


@dataclass(frozen=True)
class CgroupHost:
    version: str  # "v1" or "v2"
    hierarchies: tuple[Hierarchy, ...]

    @property
    def controllers(self) -> tuple[str, ...]:
        present = set().union(*(h.controllers for h in self.hierarchies)) if self.hierarchies else set()
        return tuple(c for c in CONTROLLERS if c in present)

    def directories(self, parent: str, name: str) -> tuple[Path, ...]:
        return tuple(h.mount / parent / name for h in self.hierarchies)


def parse_mountinfo(mountinfo: str, v2_controllers: str | None = None) -> CgroupHost | None:
    """The cgroup hierarchies Hyper uses, from /proc/self/mountinfo. v1 wins where
    it carries any of the controllers (hybrid hosts); else the v2 mount, whose
    `cgroup.controllers` text the caller passes in."""
    v1: list[Hierarchy] = []
    v2_mount: Path | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) < 3:
            continue
        fstype, options = after[0], set(after[2].split(","))
        mount_point = Path(fields[4].replace("\\040", " "))
        if fstype == "cgroup":
            carried = frozenset(options & set(CONTROLLERS))
            if carried:
                v1.append(Hierarchy(mount_point, carried))
        elif fstype == "cgroup2" and v2_mount is None:
            v2_mount = mount_point
    if v1:
        unique = {h.mount: h for h in v1}
        return CgroupHost("v1", tuple(sorted(unique.values(), key=lambda h: str(h.mount))))
    if v2_mount is not None:
        available = frozenset((v2_controllers or "").split()) & set(CONTROLLERS)
        return CgroupHost("v2", (Hierarchy(v2_mount, available),))
    return None


def limit_values(version: str, controllers: frozenset[str], limits: CgroupLimits) -> list[tuple[str, str]]:
    """(file, value) to write into a VM's cgroup directory, in order."""
    values: list[tuple[str, str]] = []
    if version == "v1":
        if "memory" in controllers:
            values.append(("memory.limit_in_bytes", str(limits.memory_bytes)))
            # No swap beyond the limit, where the kernel accounts swap at all.
            values.append(("memory.memsw.limit_in_bytes", str(limits.memory_bytes)))
        if "cpu" in controllers:
            values.append(("cpu.cfs_period_us", str(limits.cpu_period_us)))
            values.append(("cpu.cfs_quota_us", str(limits.cpu_quota_us)))
        if "pids" in controllers:
            values.append(("pids.max", str(limits.pids)))
    else:
        if "memory" in controllers:
            values.append(("memory.max", str(limits.memory_bytes)))
            values.append(("memory.swap.max", "0"))
        if "cpu" in controllers:
            values.append(("cpu.max", f"{limits.cpu_quota_us} {limits.cpu_period_us}"))
        if "pids" in controllers:
            values.append(("pids.max", str(limits.pids)))
    return values


_probed: list[CgroupHost | None] = []


def probe() -> CgroupHost | None:
    """This host's cgroup hierarchies (read once per process)."""
    if not _probed:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            mountinfo = ""
        host = parse_mountinfo(mountinfo)
        if host is not None and host.version == "v2":
            try:
                text = (host.hierarchies[0].mount / "cgroup.controllers").read_text()
            except OSError:
                text = ""
            host = parse_mountinfo(mountinfo, text)
        _probed.append(host)
    return _probed[0]


def _write(path: Path, value: str) -> None:
    with path.open("w") as f:
        f.write(value)


def _enable_v2_controllers(mount: Path, parent: str, controllers: frozenset[str]) -> None:
    """v2 hands a controller to a child only when each ancestor enables it."""
    directory = mount
    for part in [None, *Path(parent).parts]:
        if part is not None:
            directory = directory / part
            directory.mkdir(exist_ok=True)
        enabled = set((directory / "cgroup.subtree_control").read_text().split())
        missing = [c for c in sorted(controllers) if c not in enabled]
        if missing:
            _write(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))


def create(host: CgroupHost, parent: str, name: str, limits: CgroupLimits) -> tuple[str, ...]:
    """Make the VM's cgroup directories with their limits; nothing is left on failure."""
    made: list[Path] = []
    try:
        for hierarchy in host.hierarchies:
            directory = hierarchy.mount / parent / name
            if host.version == "v2":
                _enable_v2_controllers(hierarchy.mount, parent, hierarchy.controllers)
            else:
                directory.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir()
            made.append(directory)
            for file, value in limit_values(host.version, hierarchy.controllers, limits):
                target = directory / file
                swap = file.startswith("memory.memsw") or file == "memory.swap.max"
                if swap and not target.exists():
                    continue  # the kernel does not account swap here
                _write(target, value)
    except OSError as exc:
        remove(str(d) for d in made)
        raise FailedPrecondition(
            f"cannot make the VM's cgroup {parent}/{name}: {exc}",
            hint="check that the cgroup filesystem is writable, or set HYPER_CGROUP_PARENT",
        ) from exc
    return tuple(str(d) for d in made)


def pids(directories: Iterable[str]) -> set[int]:
    found: set[int] = set()
    for directory in directories:
        with contextlib.suppress(FileNotFoundError):
            found.update(int(line) for line in Path(directory, "cgroup.procs").read_text().split())
    return found


def kill(directories: Iterable[str]) -> None:
    """SIGKILL whatever is left in the cgroups (cgroup.kill where v2 has it)."""
    directories = list(directories)
    for directory in directories:
        kill_file = Path(directory, "cgroup.kill")
        if kill_file.exists():
            with contextlib.suppress(OSError):
                _write(kill_file, "1")
    for pid in pids(directories):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def remove(directories: Iterable[str], timeout: float = REMOVE_TIMEOUT) -> bool:
    """rmdir each directory; a process that is exiting may keep one busy for a
    moment. True when none is left."""
    deadline = time.monotonic() + timeout
    removed_all = True
    for directory in directories:
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    removed_all = False
                    break
                time.sleep(0.01)
    return removed_all


def children(host: CgroupHost, parent: str) -> list[Path]:
    """Every VM cgroup under PARENT, in every hierarchy."""
    found: list[Path] = []
    for hierarchy in host.hierarchies:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            found += [p for p in (hierarchy.mount / parent).iterdir() if p.is_dir()]
    return found
