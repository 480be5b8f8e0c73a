"""The host's side of confining QEMU: ids, cgroups, the jail's files, the jailer's command.

hyper.vm.jail decides what a VM's confinement is (pure); this module makes it
so before QEMU starts (an id lease, a cgroup with limits, files QEMU must
open itself made readable to its uid only) and undoes it after (the cgroup
and the lease go once nothing of the VM runs). hyper.vm.jailer does the part
that must happen inside the new process.

| variable | meaning | default |
|---|---|---|
| HYPER_JAIL_ID_BASE | first id of the VMs' uid/gid range (65536 ids) | 1879048192 (0x70000000) |
| HYPER_CGROUP_PARENT | the cgroup, in each hierarchy, under which VMs' cgroups go | hyper |
"""

from __future__ import annotations

import functools
import json
import os
import stat
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hyper.errors import FailedPrecondition, InvalidArgument
from hyper.vm import cgroups
from hyper.vm.jail import (
    BASE_DEVICES,
    JAIL_ID_BASE,
    JAIL_ID_SLOTS,
    KVM_DEVICE,
    LIBRARY_DIRS,
    LOADER_FILES,
    TUN_DEVICE,
    ConfinementFacts,
    HostLayout,
    JailMode,
    JailSpec,
    cgroup_limits,
)
from hyper.vm.jail_ids import IdPool, Lease

if TYPE_CHECKING:
    from hyper.vm.driver import VmSpec

JAILER = Path(__file__).with_name("jailer.py")
JAIL_DIRECTORY = Path("/run/hyper-jail")


@dataclass(frozen=True)
class JailConfig:
    id_base: int = JAIL_ID_BASE
    cgroup_parent: str = "hyper"
    directory: Path = JAIL_DIRECTORY

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> JailConfig:
        env = os.environ if environ is None else environ
        text = env.get("HYPER_JAIL_ID_BASE", str(JAIL_ID_BASE))
        try:
            base = int(text, 0)
        except ValueError:
            raise InvalidArgument(f"HYPER_JAIL_ID_BASE={text!r} is not a number") from None
        if base <= 0 or base + JAIL_ID_SLOTS >= 1 << 31:
            raise InvalidArgument(
                f"HYPER_JAIL_ID_BASE={text} leaves no room for {JAIL_ID_SLOTS} ids below 2^31"
            )
        parent = env.get("HYPER_CGROUP_PARENT", "hyper").strip("/")
        if not parent or ".." in Path(parent).parts:
            raise InvalidArgument(f"HYPER_CGROUP_PARENT={parent!r} is not a relative cgroup path")
        return cls(base, parent)

    def pool(self) -> IdPool:
        return IdPool(self.directory, self.id_base)


@functools.cache
def config() -> JailConfig:
    return JailConfig.from_env()


def user_namespaces() -> tuple[bool, str]:
    """Whether this user may make a user namespace, and if not why (the sysctls that say)."""
    for path, refused in (
        ("/proc/sys/user/max_user_namespaces", "0"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"),
    ):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value == refused and os.geteuid() != 0:
            return False, f"{path} is {value}"
    return True, ""


@functools.cache
def mode() -> JailMode:
    """The confinement this process can give its VMs (the jailer may still fall
    back from a user namespace to MINIMAL, and says so)."""
    if os.geteuid() == 0:
        return JailMode.PRIVILEGED
    return JailMode.USER_NAMESPACE if user_namespaces()[0] else JailMode.MINIMAL


def facts(qemu_binary: str) -> ConfinementFacts:
    """What `hyper info` reports: it asks QEMU whether it knows -sandbox."""
    allowed, reason = user_namespaces()
    host = cgroups.probe()
    try:
        helped = subprocess.run([qemu_binary, "-help"], capture_output=True, text=True, check=False)
        seccomp = "-sandbox" in helped.stdout
    except OSError:
        seccomp = False
    return ConfinementFacts(
        is_root=os.geteuid() == 0,
        user_namespaces=allowed,
        user_namespaces_reason=reason,
        cgroup_version=host.version if host else None,
        cgroup_controllers=host.controllers if host else (),
        qemu_seccomp=seccomp,
    )


def host_layout() -> HostLayout:
    links: dict[str, str] = {}
    present: set[str] = set()
    for path in (*LIBRARY_DIRS, *LOADER_FILES, *BASE_DEVICES, KVM_DEVICE, TUN_DEVICE):
        if os.path.lexists(path):
            present.add(path)
            if os.path.islink(path) and path in LIBRARY_DIRS:
                links[path] = os.readlink(path)
    return HostLayout(links, frozenset(present))


@dataclass
class PreparedJail:
    """A VM's confinement, made and not yet entered: the jailer takes the lease lock over."""

    spec: JailSpec
    lease: Lease | None

    def hand_over(self) -> None:
        """The jailer holds the lease lock now (or failed): drop this process's hold."""
        if self.lease is not None:
            os.close(self.lease.fd)
            self.lease = None


def prepare(spec: VmSpec) -> PreparedJail:
    """Everything a VM's jail needs from the host before the jailer runs. Blocking."""
    jail_mode = mode()
    if jail_mode is not JailMode.PRIVILEGED:
        if spec.memory_file is not None:  # bound into the jail: it must exist first
            os.close(os.open(spec.memory_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        return PreparedJail(JailSpec(jail_mode), None)
    for path in (spec.kernel, spec.initrd):
        _readable_by_vms(path)
    groups: list[int] = []
    cfg = config()
    if spec.memory_file is not None:
        share_with_vms(spec.memory_file)
        groups.append(cfg.id_base)
    if spec.accel.value == "kvm":
        groups.append(os.stat(KVM_DEVICE).st_gid)
    host = cgroups.probe()
    limits = cgroup_limits(spec.memory_mib, spec.cpus)
    usable = host if host is not None and host.controllers else None

    def cgroup_name(uid: int) -> str:
        return f"{spec.name}-{uid}"

    def planned(uid: int) -> tuple[str, ...]:
        if usable is None:
            return ()
        return tuple(str(d) for d in usable.directories(cfg.cgroup_parent, cgroup_name(uid)))

    pool = cfg.pool()
    lease = pool.allocate(spec.name, planned)
    try:
        made = (
            ()
            if usable is None
            else cgroups.create(usable, cfg.cgroup_parent, cgroup_name(lease.uid), limits)
        )
    except BaseException:
        os.close(lease.fd)
        pool.release(str(lease.path))
        raise
    jail = JailSpec(
        JailMode.PRIVILEGED,
        uid=lease.uid,
        gid=lease.uid,
        groups=tuple(groups),
        cgroups=made,
        limits=limits if made else None,
        lease=str(lease.path),
    )
    return PreparedJail(jail, lease)


def release(jail: JailSpec | None) -> None:
    """After the VM: kill what is left in its cgroup, remove the cgroup, end the lease. Blocking."""
    if jail is None or jail.mode is not JailMode.PRIVILEGED:
        return
    cgroups.kill(jail.cgroups)
    if jail.lease is not None:
        config().pool().release(jail.lease)
    else:
        cgroups.remove(jail.cgroups)


def sweep() -> list[int]:
    """Leases and cgroups of VMs that are gone (hyperd's start-up). Blocking; root only."""
    if mode() is not JailMode.PRIVILEGED:
        return []
    cfg = config()
    host = cgroups.probe()
    leftovers = cgroups.children(host, cfg.cgroup_parent) if host is not None else []
    return cfg.pool().sweep(leftovers)


def share_with_vms(path: Path) -> None:
    """A template's memory file: read-write for the template group (which each VM
    started from a template is in), nobody else. QEMU 7.2 opens guest RAM's file
    read-write even for a private, copy-on-write mapping."""
    if mode() is not JailMode.PRIVILEGED:
        return
    group = config().id_base
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (0, group):
            os.fchown(fd, 0, group)
        if stat.S_IMODE(st.st_mode) != 0o660:
            os.fchmod(fd, 0o660)
    finally:
        os.close(fd)


def _readable_by_vms(path: Path) -> None:
    """The kernel and the appliance are public (Debian's kernel; the host's own
    Python and Hyper's agent): QEMU reads them by path, as the VM's uid."""
    st = path.stat()
    if st.st_mode & stat.S_IROTH:
        return
    if st.st_uid != os.geteuid():
        raise FailedPrecondition(
            f"{path} is not readable by the VMs' users", hint=f"make it readable: chmod o+r {path}"
        )
    os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IROTH)


def jailer_command(document: Mapping[str, object]) -> list[str]:
    """The jailer in a fresh, isolated interpreter: no site-packages, no PYTHON* variables."""
    return [sys.executable, "-I", "-S", str(JAILER), json.dumps(document, separators=(",", ":"))]


def belongs_to(pid: int, jail: JailSpec | None, marker: str) -> bool:
    """Whether `pid` is still the VM's QEMU (not a reused pid): its uid where the VM
    has its own, and a command line naming `marker` (its run directory)."""
    try:
        if jail is not None and jail.uid is not None and os.stat(f"/proc/{pid}").st_uid != jail.uid:
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline
