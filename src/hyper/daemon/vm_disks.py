"""The disks hot-added to a running VM for the containers that join it
(hyper.daemon.members), on its virtio-SCSI controller: each file once, with
the containers using it, so that a layer two of them share stays in the VM
until both are gone."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from hyper.errors import FailedPrecondition, HyperError
from hyper.vm.driver import HotDisk
from hyper.vm.qemu import QemuDriver

MAX_SCSI_TARGETS = 255  # virtio-scsi's targets per controller (LUN 0 each)
# The first target for members' disks: those below are a pool VM's own
# (hyper.runtime.pool hot-adds a container's layers and writable from 0 up).
FIRST_TARGET = 32


@dataclass
class VmDisks:
    """The disks hot-added to one VM for its members: each file once, with the
    members using it (a layer two members share stays until both are gone)."""

    disks: dict[str, HotDisk] = field(default_factory=dict)  # by file path
    owners: dict[str, set[str]] = field(default_factory=dict)

    def _free_target(self) -> int:
        used = {disk.target for disk in self.disks.values()}
        for target in range(FIRST_TARGET, MAX_SCSI_TARGETS):
            if target not in used:
                return target
        raise FailedPrecondition("the VM has no free SCSI target for another disk")

    async def take(self, vm: QemuDriver, path: Path, *, read_only: bool, owner: str) -> HotDisk:
        key = str(path)
        disk = self.disks.get(key)
        if disk is None:
            target = self._free_target()
            disk = HotDisk(path, f"hot{target}", read_only, target)
            await vm.attach_disk(disk)
            self.disks[key] = disk
        self.owners.setdefault(key, set()).add(owner)
        return disk

    def adopt(self, disk: HotDisk, owner: str) -> None:
        """A disk an earlier hyperd hot-added for `owner` (an adopted VM)."""
        key = str(disk.path)
        self.disks.setdefault(key, disk)
        self.owners.setdefault(key, set()).add(owner)

    async def release(self, vm: QemuDriver | None, owner: str) -> None:
        """The owner is gone from the guest: its disks nobody else uses leave the VM."""
        for key in [k for k, owners in self.owners.items() if owner in owners]:
            self.owners[key].discard(owner)
            if self.owners[key]:
                continue
            del self.owners[key]
            disk = self.disks.pop(key)
            if vm is not None:
                with contextlib.suppress(HyperError):
                    await vm.detach_disk(disk)
