"""What confines a VM's QEMU, decided as pure data: ids, cgroup limits, the jail's files.

Every QEMU runs through the jailer (`hyper.vm.jailer`), which builds what is
described here and then executes QEMU, the way Firecracker's jailer does:

- as root (`JailMode.PRIVILEGED`): a uid and gid of the VM's own from a
  documented range (`JAIL_ID_BASE`), a cgroup of its own with memory, CPU and
  pids limits sized from the VM, new mount, IPC and network namespaces whose
  root is a tmpfs holding only the files QEMU needs (read-only, at the same
  paths as on the host), no capabilities (bounding set emptied too),
  no_new_privs, and QEMU's own seccomp sandbox;
- as another user (`JailMode.USER_NAMESPACE`): the same namespaces and root
  inside a user namespace of its own, capabilities dropped, no_new_privs and
  the sandbox; no uid or cgroup of its own (those need root);
- where user namespaces are not allowed (`JailMode.MINIMAL`): no_new_privs and
  the sandbox only.

QEMU opens no file of the VM by path but the kernel, the initrd and a
template's memory file (QEMU 7.2 opens those itself): its disks, console log
and sockets are descriptors the host opened and passed in (`-add-fd`, as
libvirt does), so the VM's uid needs no right on them and hyperd's files are
not in its root at all. docs/confinement.md says what each layer blocks.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyper.vm.driver import VmSpec

# Ids: JAIL_ID_BASE is the group of template memory files; each VM gets
# uid = gid = JAIL_ID_BASE + slot, slot 1..JAIL_ID_SLOTS-1. 0x70000000 starts
# the range systemd leaves unused above its container uids (0x00080000-0x6FFFFFFF).
JAIL_ID_BASE = 0x70000000
JAIL_ID_SLOTS = 65536

# Memory QEMU needs beyond guest RAM, measured under TCG (docs/confinement.md):
# its translation buffer, bounded at TCG_TB_MIB (a cold boot of the appliance
# fills 190 MiB of an unbounded one; a busy clone of a template used 32 MiB),
# plus 53 MiB seen for the rest: binary and libraries 26, heap 19, kernel
# memory 7, page tables 1. Rounded up.
# 64 and not less, measured (bench/idle.py, docs/pool.md "Idle memory"): an
# idle pod resumed from a template holds 50 MiB of it; 32 or 16 MiB cut its
# PSS from 107 to 84 or 66 MiB, but a run then retranslates the agent's
# interpreter each time the buffer fills: `run --rm … true` took 1.5 times as
# long with either (1.5-2.2x in two runs), a CPU-bound loop up to 1.6 times.
# The first target is a run's latency; KVM has no such buffer.
TCG_TB_MIB = 64
QEMU_OVERHEAD_MIB = TCG_TB_MIB + 64
CPU_PERIOD_US = 100_000
# QEMU's threads: main loop, RCU, one per vCPU, up to 64 block I/O workers
# (its thread pool's maximum), the migration thread and a few helpers. A
# thread QEMU cannot create aborts it, so the limit leaves room.
QEMU_BASE_THREADS = 96

# Device nodes a QEMU may use (bound from the host's /dev when present).
BASE_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")
KVM_DEVICE = "/dev/kvm"
TUN_DEVICE = "/dev/net/tun"
# What the dynamic loader and QEMU's data files need; the rest of /etc stays out.
LIBRARY_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32")
LOADER_FILES = ("/etc/ld.so.cache",)


class JailMode(enum.Enum):
    PRIVILEGED = "privileged"
    USER_NAMESPACE = "user-namespace"
    MINIMAL = "minimal"


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int
    cpu_quota_us: int
    cpu_period_us: int
    pids: int


def cgroup_limits(memory_mib: int, cpus: int) -> CgroupLimits:
    """Limits for a VM's cgroup: guest RAM plus QEMU's measured overhead, its vCPUs
    as CPU time per period, and room for QEMU's threads."""
    return CgroupLimits(
        memory_bytes=(memory_mib + QEMU_OVERHEAD_MIB) << 20,
        cpu_quota_us=cpus * CPU_PERIOD_US,
        cpu_period_us=CPU_PERIOD_US,
        pids=QEMU_BASE_THREADS + 2 * cpus,
    )


@dataclass(frozen=True)
class JailSpec:
    """How one VM's QEMU is confined; recorded with the VM so that a later
    hyperd adopting it, or cleaning up after it, finds its uid and cgroup again."""

    mode: JailMode
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    cgroups: tuple[str, ...] = ()  # directories, one per cgroup hierarchy
    limits: CgroupLimits | None = None
    lease: str | None = None  # the id lease file (jail_ids) that reserves uid and gid

    def document(self) -> dict[str, Any]:
        limits = self.limits
        return {
            "mode": self.mode.value,
            "uid": self.uid,
            "gid": self.gid,
            "groups": list(self.groups),
            "cgroups": list(self.cgroups),
            "limits": None
            if limits is None
            else {
                "memory_bytes": limits.memory_bytes,
                "cpu_quota_us": limits.cpu_quota_us,
                "cpu_period_us": limits.cpu_period_us,
                "pids": limits.pids,
            },
            "lease": self.lease,
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any] | None) -> JailSpec | None:
        if not doc:
            return None
        limits = doc.get("limits")
        return cls(
            mode=JailMode(doc["mode"]),
            uid=doc.get("uid"),
            gid=doc.get("gid"),
            groups=tuple(int(g) for g in doc.get("groups") or ()),
            cgroups=tuple(str(c) for c in doc.get("cgroups") or ()),
            limits=None if not limits else CgroupLimits(**{k: int(v) for k, v in limits.items()}),
            lease=doc.get("lease"),
        )


@dataclass(frozen=True)
class HostLayout:
    """The host facts the jail's root depends on, gathered at the edge."""

    links: Mapping[str, str]  # entries of LIBRARY_DIRS that are symlinks, and their targets
    present: frozenset[str]  # which of LIBRARY_DIRS, LOADER_FILES and devices exist


@dataclass(frozen=True)
class JailMount:
    source: str
    target: str  # inside the jail; the same path as on the host
    kind: str  # "dir", "file" or "device"
    writable: bool = False


def jail_mounts(spec: VmSpec, qemu_binary: str, host: HostLayout) -> tuple[JailMount, ...]:
    """The bind mounts that make up a VM's root, parents before children."""
    mounts = [
        JailMount(path, path, "dir")
        for path in LIBRARY_DIRS
        if path in host.present and path not in host.links
    ]
    mounts += [JailMount(path, path, "file") for path in LOADER_FILES if path in host.present]
    if not any(_under(qemu_binary, m.target) for m in mounts):
        mounts.append(JailMount(qemu_binary, qemu_binary, "file"))
    for path in (str(spec.kernel), str(spec.initrd)):
        mounts.append(JailMount(path, path, "file"))
    if spec.memory_file is not None:
        # QEMU 7.2 opens guest RAM's file read-write even for a private
        # mapping; it writes nothing to it unless memory_shared.
        mounts.append(JailMount(str(spec.memory_file), str(spec.memory_file), "file", writable=True))
    devices = [*BASE_DEVICES, TUN_DEVICE]
    if spec.accel.value == "kvm":
        devices.append(KVM_DEVICE)
    mounts += [JailMount(d, d, "device", writable=True) for d in devices if d in host.present]
    return tuple(sorted(mounts, key=lambda m: m.target.count("/")))


def jail_symlinks(host: HostLayout) -> tuple[tuple[str, str], ...]:
    """Merged-/usr hosts' /lib, /lib64… links, recreated as they are."""
    return tuple((path, host.links[path]) for path in LIBRARY_DIRS if path in host.links)


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def jailer_document(
    *,
    jail: JailSpec,
    argv: Sequence[str],
    binary: str,
    fds: Sequence[tuple[int, int]],
    root: str,
    mounts: Sequence[JailMount],
    symlinks: Sequence[tuple[str, str]],
    report_fd: int,
    lease_fd: int | None,
    detach: bool,
    die_with_parent: bool,
    host_uid: int,
    host_gid: int,
) -> dict[str, Any]:
    """The jailer's instructions (hyper.vm.jailer reads this JSON)."""
    return {
        "mode": jail.mode.value,
        "argv": list(argv),
        "binary": binary,
        "fds": [list(pair) for pair in fds],
        "root": root,
        "mounts": [
            {"source": m.source, "target": m.target, "kind": m.kind, "writable": m.writable} for m in mounts
        ],
        "symlinks": [list(link) for link in symlinks],
        "cgroups": list(jail.cgroups),
        "uid": jail.uid,
        "gid": jail.gid,
        "groups": list(jail.groups),
        "host_uid": host_uid,
        "host_gid": host_gid,
        "report_fd": report_fd,
        "lease_fd": lease_fd,
        "detach": detach,
        "die_with_parent": die_with_parent,
    }


@dataclass(frozen=True)
class ConfinementFacts:
    """What `hyper info` reports from: who runs Hyper and what the host allows."""

    is_root: bool
    user_namespaces: bool
    user_namespaces_reason: str
    cgroup_version: str | None  # "v1", "v2" or None
    cgroup_controllers: tuple[str, ...]  # of memory, cpu, pids: those Hyper can use
    qemu_seccomp: bool


def jail_mode_for(facts: ConfinementFacts) -> JailMode:
    if facts.is_root:
        return JailMode.PRIVILEGED
    return JailMode.USER_NAMESPACE if facts.user_namespaces else JailMode.MINIMAL


def confinement_lines(facts: ConfinementFacts) -> list[tuple[str, bool, str]]:
    """(layer, in effect, why) for each layer of QEMU's confinement."""
    mode = jail_mode_for(facts)
    namespaces = mode is not JailMode.MINIMAL
    missing = [c for c in ("memory", "cpu", "pids") if c not in facts.cgroup_controllers]
    if not facts.is_root:
        cgroup = (False, "needs root")
    elif facts.cgroup_version is None:
        cgroup = (False, "no cgroup filesystem is mounted")
    elif missing:
        cgroup = (
            True,
            f"cgroup {facts.cgroup_version}; no {', '.join(missing)} controller, so no limit on it",
        )
    else:
        cgroup = (True, f"cgroup {facts.cgroup_version}: memory, CPU and pids limits sized from the VM")
    return [
        (
            "own uid and gid",
            facts.is_root,
            f"from {JAIL_ID_BASE + 1}-{JAIL_ID_BASE + JAIL_ID_SLOTS - 1}" if facts.is_root else "needs root",
        ),
        (
            "seccomp sandbox",
            facts.qemu_seccomp,
            "QEMU's -sandbox with obsolete, elevateprivileges, spawn and resourcecontrol denied"
            if facts.qemu_seccomp
            else "this QEMU was built without seccomp",
        ),
        ("no_new_privs", True, "set by the jailer before QEMU starts"),
        (
            "capabilities",
            True,
            "none: dropped with the uid change" if facts.is_root else "none: QEMU runs as this user",
        ),
        (
            "own root and namespaces",
            namespaces,
            (
                "mount, IPC and network namespaces; a root of only its own files"
                if facts.is_root
                else "in a user namespace: mount, IPC and network namespaces; a root of only its own files"
            )
            if namespaces
            else f"user namespaces are not available ({facts.user_namespaces_reason})",
        ),
        ("own cgroup", *cgroup),
    ]
