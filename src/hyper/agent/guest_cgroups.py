"""Inside the guest: each container's cgroup (v2), its limits, and what the kernel says of it.

Standard library only. A pod is one VM holding several containers; the VM's
size bounds them all, and each container's own `--memory`, `--cpus`,
`--cpuset-cpus`, `--pids-limit` and `--memory-swap` are enforced here, by
the guest kernel, in a cgroup of the container's own under the agent's
hierarchy (`/sys/fs/cgroup/<container>`). The agent mounts cgroup2 at boot
and enables the controllers; a container's processes join its cgroup before
they enter its root (each through a descriptor of `cgroup.procs` the agent
opened, since the container's mount namespace does not show the agent's
hierarchy), then take a cgroup namespace rooted there, so that inside the
container `/sys/fs/cgroup` is its own cgroup, as in Docker.

An over-limit container is OOM-killed alone: the kernel's memory controller
kills inside the cgroup that hit its limit, and `memory.events` counts it
(`oom_kill`, which counts the VM-wide OOM killer's kills too), which is how
the agent tells the host that a container's exit was an OOM kill.
"""

from __future__ import annotations

import contextlib
import os
import time

from hyper.agent import guest_sys as sys_

CGROUP_ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("cpu", "cpuset", "memory", "pids")
CLONE_NEWCGROUP = 0x02000000
CPU_PERIOD_US = 100_000  # cpu.max's period, Docker's default
EMPTY_WAIT_SECONDS = 5.0
UPDATABLE = ("cpuset.cpus", "cpu.max", "cpu.weight", "memory.swap.max", "memory.max")


def mount_hierarchy(log: list[str]) -> bool:
    """cgroup2 at CGROUP_ROOT with the controllers enabled for the containers below.
    False (and why, in `log`) where the kernel has no cgroup2."""
    try:
        sys_.mount("cgroup2", CGROUP_ROOT, "cgroup2", sys_.MS_NOSUID | sys_.MS_NODEV | sys_.MS_NOEXEC)
    except OSError as exc:
        log.append(f"cgroup2 not mounted: {exc.strerror}")
        return False
    available = _read(f"{CGROUP_ROOT}/cgroup.controllers").split()
    wanted = " ".join(f"+{name}" for name in CONTROLLERS if name in available)
    if wanted:
        _write(f"{CGROUP_ROOT}/cgroup.subtree_control", wanted)
    return True


def available() -> bool:
    return os.path.exists(f"{CGROUP_ROOT}/cgroup.subtree_control")


class Limits:
    """A container's limits as the host sent them; None leaves the kernel's default ("max").
    A plain class: dataclasses cost the guest's boot."""

    __slots__ = ("cpu_quota_us", "cpuset_cpus", "memory_max", "pids_max", "swap_max")

    def __init__(
        self,
        *,
        memory_max: int | None = None,
        swap_max: int | None = None,
        cpu_quota_us: int | None = None,
        cpuset_cpus: str | None = None,
        pids_max: int | None = None,
    ) -> None:
        self.memory_max, self.swap_max, self.cpu_quota_us = memory_max, swap_max, cpu_quota_us
        self.cpuset_cpus, self.pids_max = cpuset_cpus, pids_max


def read_limits(value: object) -> Limits:
    """The host's `resources` object, checked field by field (ValueError)."""
    if value is None:
        return Limits()
    if not isinstance(value, dict):
        raise ValueError("resources must be an object")

    def number(key: str) -> int | None:
        item = value.get(key)
        if item is None:
            return None
        if not isinstance(item, int) or isinstance(item, bool) or item <= 0:
            raise ValueError(f"resources.{key} must be a positive integer")
        return item

    cpuset = value.get("cpuset_cpus")
    if cpuset is not None and (
        not isinstance(cpuset, str) or not cpuset or any(c not in "0123456789,-" for c in cpuset)
    ):
        raise ValueError("resources.cpuset_cpus must be a CPU list such as 0-1,3")
    swap = value.get("swap_max")
    if swap is not None and (not isinstance(swap, int) or isinstance(swap, bool) or swap < 0):
        raise ValueError("resources.swap_max must be a number of bytes")
    return Limits(
        memory_max=number("memory_max"),
        swap_max=swap,
        cpu_quota_us=number("cpu_quota_us"),
        cpuset_cpus=cpuset,
        pids_max=number("pids_max"),
    )


def path_of(container_id: str) -> str:
    return f"{CGROUP_ROOT}/{container_id}"


def create(container_id: str, limits: Limits) -> str:
    """The container's cgroup with its limits written; returns its path."""
    path = path_of(container_id)
    os.mkdir(path, 0o755)
    try:
        if limits.cpuset_cpus is not None:
            _write(f"{path}/cpuset.cpus", limits.cpuset_cpus)
        if limits.memory_max is not None:
            _write(f"{path}/memory.max", str(limits.memory_max))
        if limits.swap_max is not None and os.path.exists(f"{path}/memory.swap.max"):
            _write(f"{path}/memory.swap.max", str(limits.swap_max))
        if limits.cpu_quota_us is not None:
            _write(f"{path}/cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}")
        if limits.pids_max is not None:
            _write(f"{path}/pids.max", str(limits.pids_max))
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(path)
        raise
    return path


def procs_fd(path: str) -> int:
    """A descriptor of the cgroup's `cgroup.procs`: a child writes "0" to it to join."""
    return os.open(f"{path}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)


def join(fd: int) -> None:
    """In a forked child: move this process into the cgroup `fd` names, then
    into a cgroup namespace rooted there (its /proc/self/cgroup reads `/`)."""
    os.write(fd, b"0")
    sys_.unshare(CLONE_NEWCGROUP)


def oom_kills(path: str) -> int:
    """How many processes of the cgroup an OOM killer has killed so far."""
    for line in _read(f"{path}/memory.events").splitlines():
        name, _, count = line.partition(" ")
        if name == "oom_kill" and count.strip().isdigit():
            return int(count)
    return 0


def members(path: str) -> set[int]:
    return {int(word) for word in _read(f"{path}/cgroup.procs").split() if word.isdigit()}


def kill_all(path: str) -> None:
    """SIGKILL every process left in the cgroup (the main process has exited:
    as in Docker, nothing of the container outlives it)."""
    with contextlib.suppress(OSError):
        _write(f"{path}/cgroup.kill", "1")


def remove(path: str) -> None:
    """Kill what is left and remove the cgroup once it is empty."""
    if not os.path.isdir(path):
        return
    kill_all(path)
    deadline = time.monotonic() + EMPTY_WAIT_SECONDS
    while True:
        try:
            os.rmdir(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                return  # a process stuck in the kernel; the VM's end takes it
            time.sleep(0.01)


def figures(path: str) -> dict[str, int]:
    """What the kernel counts of the cgroup: CPU time (µs), memory (bytes, with
    memory.stat's anon, file, inactive_file and page faults), processes."""
    found: dict[str, int] = {}
    for name, text in (("cpu", _read(f"{path}/cpu.stat")), ("memory", _read(f"{path}/memory.stat"))):
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                found[f"{name}.{key}"] = int(value)
    for name in ("memory.current", "memory.max", "pids.current"):
        value = _read(f"{path}/{name}").strip()
        if value.isdigit():
            found[name] = int(value)
    return found


def update(path: str, values: dict[str, str]) -> None:
    """Write new limits into a running container's cgroup (`docker update`):
    `values` maps cpu.max, cpu.weight, memory.max, memory.swap.max or cpuset.cpus
    to what the file takes."""
    for name in values:
        if name not in UPDATABLE:
            raise ValueError(f"{name} is not a limit the agent updates")
    for name in UPDATABLE:  # cpuset first: the others do not depend on it
        if name in values:
            value = values[name]
            if not isinstance(value, str) or not value or any(c not in "0123456789,- max" for c in value):
                raise ValueError(f"{name}: invalid value {value!r}")
            _write(f"{path}/{name}", value)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
