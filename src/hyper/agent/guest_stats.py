"""Inside the guest: a container's process list (`top`) and the VM's resource figures (`stats`).

Standard library only, read from /proc. The parsers are pure functions over
the files' text so that they are tested on the host; the readers around them
tolerate processes that vanish while /proc is walked.

Figures are guest-wide: a pod is one VM, and the VM's own counters (CPU time,
memory, virtio disk and network traffic) are what its containers use, plus
the agent's small share.
"""

from __future__ import annotations

import os
import re

# Not `from typing import TYPE_CHECKING`: importing typing costs the guest
# a tenth of a second under TCG. Type checkers treat this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TOP_TITLES = ("UID", "PID", "PPID", "STAT", "TIME", "CMD")
# /proc/stat's CPU fields, in order. guest and guest_nice are left out: the
# kernel already counts them in user and nice.
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")
NET_FIELDS = ("bytes", "packets", "errors", "dropped")
SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the device's own size
VIRTIO_DISK = re.compile(r"vd[a-z]+")


def clock_ticks() -> int:
    """USER_HZ: the unit of /proc's CPU times (100 on Linux)."""
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100


# -- top ----------------------------------------------------------------------
def parse_stat_line(text: str) -> tuple[str, str, int, int]:
    """/proc/PID/stat → (comm, state, ppid, utime+stime in ticks).

    comm may hold spaces and parentheses: it ends at the last ')'.
    """
    head, _, tail = text.rpartition(")")
    comm = head.partition("(")[2]
    fields = tail.split()
    return comm, fields[0], int(fields[1]), int(fields[11]) + int(fields[12])


def parse_status(text: str) -> dict[str, str]:
    """/proc/PID/status as a mapping of field name to its raw value."""
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name] = value.strip()
    return fields


def namespace_pid(status: dict[str, str]) -> int:
    """The PID as the process's own PID namespace sees it: NSpid's last field."""
    pids = status.get("NSpid", "").split() or status.get("Pid", "0").split()
    return int(pids[-1])


def real_uid(status: dict[str, str]) -> int:
    return int(status.get("Uid", "0").split()[0])


def format_cpu_time(ticks: int, hz: int = 100) -> str:
    """CPU time as `ps -ef` (and so `docker top`) shows it: [DD-]hh:mm:ss."""
    days, rest = divmod(ticks // hz, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{days}-{text}" if days else text


def parse_passwd(text: str) -> dict[int, str]:
    """/etc/passwd → user names by UID (the first name of a UID wins, as getpwuid's)."""
    users: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            users.setdefault(int(fields[2]), fields[0])
    return users


def container_users(members: list[ProcEntry], proc: str = "/proc") -> dict[int, str]:
    """User names from the container's own /etc/passwd, read through a member's root."""
    for entry in members:
        try:
            with open(f"{proc}/{entry.pid}/root/etc/passwd", encoding="utf-8", errors="replace") as f:
                return parse_passwd(f.read(1 << 20))
        except OSError:
            continue  # gone meanwhile, or the image has no passwd
    return {}


def command_line(cmdline: bytes, comm: str) -> str:
    """What ps shows as CMD: the arguments, or [comm] for a process without any."""
    args = cmdline.rstrip(b"\0").split(b"\0")
    text = " ".join(arg.decode(errors="replace") for arg in args)
    return text if text else f"[{comm}]"


class ProcEntry:
    """What /proc says of one process; plain class to keep dataclasses out of the guest."""

    __slots__ = ("cmd", "nspid", "pid", "pid_ns", "ppid", "state", "ticks", "uid")

    def __init__(
        self, *, pid: int, nspid: int, ppid: int, uid: int, state: str, ticks: int, cmd: str, pid_ns: int
    ) -> None:
        self.pid, self.nspid, self.ppid, self.uid = pid, nspid, ppid, uid
        self.state, self.ticks, self.cmd, self.pid_ns = state, ticks, cmd, pid_ns


def read_process(pid: int, proc: str = "/proc", pid_ns: int | None = None) -> ProcEntry | None:
    """One process's entry; None if it is gone, unreadable, or not in `pid_ns` when given."""
    base = f"{proc}/{pid}"
    try:
        own_ns = os.stat(f"{base}/ns/pid").st_ino
        if pid_ns is not None and own_ns != pid_ns:
            return None
        with open(f"{base}/stat", encoding="utf-8", errors="replace") as f:
            comm, state, ppid, ticks = parse_stat_line(f.read())
        with open(f"{base}/status", encoding="utf-8", errors="replace") as f:
            status = parse_status(f.read())
        with open(f"{base}/cmdline", "rb") as f:
            cmdline = f.read(64 * 1024)
    except (OSError, ValueError, IndexError):
        return None
    return ProcEntry(
        pid=pid,
        nspid=namespace_pid(status),
        ppid=ppid,
        uid=real_uid(status),
        state=state,
        ticks=ticks,
        cmd=command_line(cmdline, comm),
        pid_ns=own_ns,
    )


def all_processes(proc: str = "/proc", pid_ns: int | None = None) -> list[ProcEntry]:
    """Every process, or those of PID namespace `pid_ns` (an inode number)."""
    entries = []
    for name in os.listdir(proc):
        if name.isdigit():
            entry = read_process(int(name), proc, pid_ns)
            if entry is not None:
                entries.append(entry)
    return entries


def top(
    pid_ns: int,
    entries: list[ProcEntry],
    hz: int = 100,
    users: dict[int, str] | None = None,
    *,
    members_only: bool = False,
) -> dict[str, Any]:
    """The processes of PID namespace `pid_ns`, with PIDs as its members see them
    and users by the names the container's /etc/passwd gives (`users`; read
    through the members' root when not given), as `docker top` shows them.

    A parent outside the namespace (the agent's shim) shows as PPID 0, as the
    container's PID 1 sees its own parent. With `members_only` every entry is
    the container's (its cgroup said so), whatever its PID namespace.
    """
    members = sorted((e for e in entries if members_only or e.pid_ns == pid_ns), key=lambda e: e.nspid)
    inside = {e.pid: e.nspid for e in members}
    names = container_users(members) if users is None else users
    rows = [
        [
            names.get(e.uid, str(e.uid)),
            str(e.nspid),
            str(inside.get(e.ppid, 0)),
            e.state,
            format_cpu_time(e.ticks, hz),
            e.cmd,
        ]
        for e in members
    ]
    return {"titles": list(TOP_TITLES), "processes": rows}


# -- stats --------------------------------------------------------------------
def parse_proc_stat(text: str, hz: int = 100) -> dict[str, Any]:
    """/proc/stat's cpu lines → busy time in total and per CPU, and all time, in ns."""
    ns_per_tick = 1_000_000_000 // hz
    total: dict[str, int] = {}
    per_cpu: list[int] = []
    for line in text.splitlines():
        words = line.split()
        if not words or not words[0].startswith("cpu"):
            continue
        values = dict(zip(CPU_FIELDS, (int(w) for w in words[1 : 1 + len(CPU_FIELDS)]), strict=False))
        busy = sum(values.get(name, 0) for name in BUSY_FIELDS) * ns_per_tick
        if words[0] == "cpu":
            total = values
        else:
            per_cpu.append(busy)
    return {
        "total_ns": sum(total.get(name, 0) for name in BUSY_FIELDS) * ns_per_tick,
        "per_cpu_ns": per_cpu,
        "system_ns": sum(total.values()) * ns_per_tick,
        "online_cpus": len(per_cpu),
    }


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo → total, available, used (total - available) and cache, in bytes."""
    kib: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        words = value.split()
        if words and words[0].isdigit():
            kib[name] = int(words[0])
    total = kib.get("MemTotal", 0) * 1024
    # Kernels before 3.14 lack MemAvailable; free memory is its lower bound.
    available = kib.get("MemAvailable", kib.get("MemFree", 0)) * 1024
    return {
        "total": total,
        "available": available,
        "used": max(total - available, 0),
        "cache": (kib.get("Cached", 0) + kib.get("Buffers", 0)) * 1024,
    }


def parse_diskstats(text: str) -> dict[str, dict[str, int]]:
    """/proc/diskstats → traffic of each whole virtio disk (vda, vdb…, not partitions)."""
    disks = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 10 or not VIRTIO_DISK.fullmatch(words[2]):
            continue
        disks[words[2]] = {
            "read_bytes": int(words[5]) * SECTOR_BYTES,
            "write_bytes": int(words[9]) * SECTOR_BYTES,
            "reads": int(words[3]),
            "writes": int(words[7]),
        }
    return disks


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/dev → each interface's counters but the loopback's."""
    networks = {}
    for line in text.splitlines()[2:]:
        name, sep, counters = line.partition(":")
        name = name.strip()
        words = counters.split()
        if not sep or name == "lo" or len(words) < 12:
            continue
        rx, tx = words[0:4], words[8:12]
        entry = {f"rx_{field}": int(value) for field, value in zip(NET_FIELDS, rx, strict=True)}
        entry.update({f"tx_{field}": int(value) for field, value in zip(NET_FIELDS, tx, strict=True)})
        networks[name] = entry
    return networks


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def container_process_count(proc: str = "/proc") -> int:
    """Processes in a PID namespace below the agent's: those of containers."""
    own = os.stat(f"{proc}/self/ns/pid").st_ino
    count = 0
    for name in os.listdir(proc):
        if name.isdigit():
            try:
                count += os.stat(f"{proc}/{name}/ns/pid").st_ino != own
            except OSError:
                continue  # gone meanwhile
    return count


def guest_stats() -> dict[str, Any]:
    return {
        "cpu": parse_proc_stat(_read("/proc/stat"), clock_ticks()),
        "memory": parse_meminfo(_read("/proc/meminfo")),
        "disks": parse_diskstats(_read("/proc/diskstats")),
        "networks": parse_net_dev(_read("/proc/net/dev")),
        "pids": container_process_count(),
    }
