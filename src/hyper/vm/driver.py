"""The narrow interface every hypervisor driver implements, and the VM's description.

A `VmSpec` is a pure description (frozen); a driver turns it into a running
VM. Only QEMU is implemented: Cloud Hypervisor or Firecracker would be added
behind the same protocol once their binaries are at hand to test.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hyper.vm.accel import Accel
from hyper.vm.jail import JailSpec


@dataclass(frozen=True)
class DiskSpec:
    path: Path
    serial: str  # how the guest finds it: /sys/block/*/serial
    read_only: bool


SCSI_CONTROLLER = "scsi0"


@dataclass(frozen=True)
class HotDisk:
    """A disk hot-added to a running VM on its SCSI controller: the file, how the
    guest finds it (`serial`), and QEMU's names for it (its fd set, block node,
    device and SCSI target), kept so that it can be removed again, also by a
    later process that adopted the VM."""

    path: Path
    serial: str
    read_only: bool
    target: int  # SCSI target id on the controller (LUN 0); also numbers node, device and fd set

    @property
    def node(self) -> str:
        return f"hot{self.target}"

    @property
    def device(self) -> str:
        return f"hotdev{self.target}"

    @property
    def fdset(self) -> int:
        return HOT_FDSET_BASE + self.target


# Fd sets of hot-added disks: above those the command line uses (1 for the console, 2.. for disks).
HOT_FDSET_BASE = 1000


@dataclass(frozen=True)
class NicSpec:
    """A virtio-net device and its host side.

    `backend` is "tap" (a tap device the host opened: its descriptor is
    passed to QEMU, see QemuDriver's `nic_fds`), "stream" (a connected
    socket of a user-mode network such as passt, passed the same way) or
    "none" (a device connected to nothing: a VM template's, or --network none).
    `mac` is the device's address on QEMU's command line; the guest agent
    sets the pod's own (a VM resumed from a template has the template's).
    """

    mac: str
    backend: str = "none"


@dataclass(frozen=True)
class VmSpec:
    name: str
    kernel: Path
    initrd: Path
    cmdline: str
    accel: Accel
    memory_mib: int
    cpus: int
    run_dir: Path  # sockets, console log and pid file of this VM
    disks: tuple[DiskSpec, ...] = ()
    # Guest RAM backed by this file: shared (written through) when making a
    # template, private copy-on-write when starting from one.
    memory_file: Path | None = None
    memory_shared: bool = False
    # Device state of a paused template VM to resume instead of booting.
    incoming_state: Path | None = None
    # How its QEMU is confined: decided when it starts (hyper.vm.confine),
    # kept so that adoption and clean-up find its uid and cgroup again.
    jail: JailSpec | None = None
    nics: tuple[NicSpec, ...] = ()
    # A virtio-9p device (tag "hyper") served by a FileShare: every VM has one
    # where shares can run, templates too, since a microvm cannot hot-plug it.
    file_share: bool = False
    # A virtio-SCSI controller (id SCSI_CONTROLLER) that takes disks hot-added
    # over QMP while the VM runs: the disks of containers that join a pod.
    scsi: bool = False

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / "agent.sock"


class VmState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"


# Which state may follow which; a method called in another state raises.
VM_TRANSITIONS: dict[VmState, frozenset[VmState]] = {
    VmState.CREATED: frozenset({VmState.STARTING, VmState.STOPPED}),
    VmState.STARTING: frozenset({VmState.RUNNING, VmState.STOPPING, VmState.STOPPED}),
    VmState.RUNNING: frozenset({VmState.PAUSED, VmState.STOPPING, VmState.STOPPED}),
    VmState.PAUSED: frozenset({VmState.RUNNING, VmState.STOPPING, VmState.STOPPED}),
    VmState.STOPPING: frozenset({VmState.STOPPED}),
    VmState.STOPPED: frozenset(),
}


class FileShare(Protocol):
    """The server behind a VM's virtio-9p device; it runs before QEMU starts
    (QEMU checks the share's root as it builds the device) and ends after it."""

    def start(self) -> int:
        """Start serving; returns QEMU's end of the server's socket, which the caller closes."""

    def close(self) -> None:
        """Stop serving, once QEMU is gone. Idempotent."""


class VmDriver(Protocol):
    """What the runtime needs of a hypervisor."""

    @property
    def spec(self) -> VmSpec: ...

    @property
    def state(self) -> VmState: ...

    async def start(self) -> None:
        """Boot the VM; raise VmStartError (with command, status and console tail) on failure."""

    async def wait(self, timeout: float | None = None) -> int | None:
        """The hypervisor's exit status once it has exited, or None after `timeout` seconds."""

    async def stop(self, timeout: float) -> None:
        """Ask the VM to power off, then kill it if it has not within `timeout` seconds."""

    async def kill(self) -> None:
        """End the hypervisor process now. Idempotent."""

    async def close(self) -> None:
        """Kill if still running and release sockets and files. Idempotent."""
