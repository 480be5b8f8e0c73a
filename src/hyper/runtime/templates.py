"""VM templates: boot the appliance once, then start VMs from its saved state.

A template is a VM booted to a waiting agent, paused, and saved: its RAM in
a memory file (written through a shared mapping) and its device state in a
small state file. A new VM maps the memory file privately, copy-on-write,
loads the device state and continues; it skips the kernel boot, the agent's
start and its module loading, and shares the template's pages with every
other VM started from it. This is the approach of Kata Containers' VM
templating, with QEMU's `x-ignore-shared` migration capability.

Because a microvm cannot hot-plug disks, a template has a fixed set of disk
slots: LAYER_SLOTS read-only ones and one writable one, each exactly
SLOT_BYTES long as the guest sees it (the guest read every size at template
time and keeps it). Unused slots point at a sparse placeholder. What differs
per VM, wall clock and randomness, the host hands to the agent after the
resume (see the agent's `setup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hyper.network.pod import UNCONNECTED_MAC
from hyper.runtime.boot import boot_agent
from hyper.storage.share import ProxyShare
from hyper.vm.accel import Accel
from hyper.vm.driver import DiskSpec, NicSpec, VmSpec
from hyper.vm.qemu import QemuDriver

TEMPLATE_VERSION = "2"  # 2: every template has one NIC
LAYER_SLOTS = 12
# A microvm cannot hot-plug a NIC either: a template has one, connected to
# nothing; a pod's VM resumed from it gets its own backend behind that device
# (QEMU migrates a device's state, never its backend), and its own MAC from
# the agent. A pod on more networks boots the classic way.
NIC_SLOTS = 1
SLOT_BYTES = 10 << 30
# Each shape (kernel, appliance, memory, vCPUs) makes a template of about its
# guest's RAM on disk; past this many the least recently used go.
MAX_TEMPLATES = 8
WRITABLE_SERIAL = "hw0"


def layer_serial(slot: int) -> str:
    return f"hl{slot}"


@dataclass(frozen=True)
class TemplateConfig:
    """Everything that must be equal for a VM to start from a template."""

    kernel: Path
    initrd: Path
    cmdline: str
    accel: Accel
    memory_mib: int
    cpus: int
    qemu_binary: str
    file_share: bool = False  # the virtio-9p device (hyper.storage.share)
    scsi: bool = False  # the virtio-SCSI controller for hot-added disks

    def key(self) -> str:
        digest = hashlib.sha256(f"template {TEMPLATE_VERSION} {LAYER_SLOTS} {SLOT_BYTES}\n".encode())
        for path in (self.kernel, self.initrd, Path(shutil.which(self.qemu_binary) or self.qemu_binary)):
            st = path.stat()
            digest.update(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        digest.update(f"{self.cmdline}\n{self.accel.value} {self.memory_mib} {self.cpus}\n".encode())
        if self.file_share:
            digest.update(b"file share\n")
        if self.scsi:
            digest.update(b"scsi\n")
        return digest.hexdigest()


@dataclass(frozen=True)
class Template:
    directory: Path

    @property
    def memory(self) -> Path:
        return self.directory / "memory"

    @property
    def state(self) -> Path:
        return self.directory / "state"


def _last_used(directory: Path) -> float:
    try:
        return directory.stat().st_mtime
    except OSError:
        return 0.0


def slot_disks(layers: list[Path], writable: Path, placeholder: Path) -> tuple[DiskSpec, ...]:
    """The fixed disk layout of a template VM: layer slots, then the writable slot."""
    if len(layers) > LAYER_SLOTS:
        raise ValueError(f"{len(layers)} layers do not fit {LAYER_SLOTS} slots")
    disks = [
        DiskSpec(layers[slot] if slot < len(layers) else placeholder, layer_serial(slot), True)
        for slot in range(LAYER_SLOTS)
    ]
    disks.append(DiskSpec(writable, WRITABLE_SERIAL, False))
    return tuple(disks)


def template_nics(nics: tuple[NicSpec, ...]) -> tuple[NicSpec, ...]:
    """A pod's NICs as a VM resumed from a template has them: the template's
    device (and MAC), the pod's backend."""
    if len(nics) > NIC_SLOTS:
        raise ValueError(f"{len(nics)} NICs do not fit {NIC_SLOTS} slot")
    return tuple(NicSpec(UNCONNECTED_MAC, nic.backend) for nic in nics)


def fits_slot(path: Path) -> bool:
    return path.stat().st_size <= SLOT_BYTES


def pad_to_slot(path: Path) -> None:
    """Grow a disk image, sparsely, to the slot size the template's guest expects.

    Filesystems ignore the zeros past their end; the data is not touched, so a
    layer disk shared by many VMs stays valid while this runs.
    """
    st = path.stat()
    if st.st_size >= SLOT_BYTES:
        return
    try:
        os.truncate(path, SLOT_BYTES)
    except PermissionError:
        if st.st_uid != os.getuid():
            raise
        # The store keeps layer disks read-only; their owner may lift that
        # for a moment, since growing a sparse tail changes no data.
        os.chmod(path, st.st_mode | 0o200)
        try:
            os.truncate(path, SLOT_BYTES)
        finally:
            os.chmod(path, st.st_mode & 0o7777)


class TemplateCache:
    """Templates under `root`, one directory per TemplateConfig key."""

    def __init__(self, root: Path, console_log_dir: Path | None = None) -> None:
        self.root = root
        self.console_log_dir = console_log_dir

    def placeholder(self) -> Path:
        path = self.root / "empty-slot.img"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, delete=False) as f:
                f.truncate(SLOT_BYTES)
            os.replace(f.name, path)
        return path

    def discard(self, template: Template) -> None:
        """Remove a template that failed to start a VM; the next run makes a new one."""
        shutil.rmtree(template.directory, ignore_errors=True)

    def prune(self, keep: Template, limit: int | None = None) -> None:
        """At most `limit` templates (MAX_TEMPLATES): the least recently used
        go. A VM started from one keeps its mapping; only new starts need it."""
        limit = MAX_TEMPLATES if limit is None else limit
        found = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        by_use = sorted(found, key=_last_used, reverse=True)
        for stale in [p for p in by_use if p != keep.directory][max(limit - 1, 0) :]:
            shutil.rmtree(stale, ignore_errors=True)

    def find(self, config: TemplateConfig) -> Template | None:
        template = Template(self.root / config.key())
        if not template.state.exists():
            return None
        with contextlib.suppress(OSError):
            os.utime(template.directory)  # its last use, for prune
        return template

    async def ensure(
        self, config: TemplateConfig, boot_timeout: float, notify: Callable[[str], None] | None = None
    ) -> Template:
        """The template for `config`, booting and saving it first if there is none."""
        found = self.find(config)
        if found is not None:
            return found
        self.root.mkdir(parents=True, exist_ok=True)
        lock = (self.root / ".lock").open("a")
        try:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            found = self.find(config)
            if found is not None:
                return found  # another process made it while we waited
            if notify is not None:
                notify("booting a VM template (once per kernel, appliance, memory and CPUs)")
            return await self._build(config, boot_timeout)
        finally:
            lock.close()

    async def _build(self, config: TemplateConfig, boot_timeout: float) -> Template:
        final = Template(self.root / config.key())
        work = Path(tempfile.mkdtemp(dir=self.root, prefix=".build-"))
        # Sockets need a short path: the VM's run directory lives under /tmp.
        run_dir = Path(tempfile.mkdtemp(prefix="hyper-tpl-"))
        try:
            scratch = work / "writable-slot.img"
            with scratch.open("wb") as f:
                f.truncate(SLOT_BYTES)
            spec = VmSpec(
                name=f"template-{config.key()[:8]}",
                kernel=config.kernel,
                initrd=config.initrd,
                cmdline=config.cmdline,
                accel=config.accel,
                memory_mib=config.memory_mib,
                cpus=config.cpus,
                run_dir=run_dir,
                disks=slot_disks([], scratch, self.placeholder()),
                memory_file=work / "memory",
                memory_shared=True,
                nics=(NicSpec(UNCONNECTED_MAC, "none"),),
                file_share=config.file_share,
                scsi=config.scsi,
            )
            # The template's share is empty and never mounted: a mounted 9p export
            # would block saving the VM (QEMU's migration blocker).
            share = ProxyShare(run_dir) if config.file_share else None
            driver = QemuDriver(spec, config.qemu_binary, share=share)
            try:
                await driver.start()
                agent = await boot_agent(driver, boot_timeout)
                await agent.close()
                # The agent now waits for the next host to connect: the state every
                # VM started from this template resumes in.
                await asyncio.sleep(0.1)
                await driver.save_state(work / "state")
            finally:
                await driver.close()
            scratch.unlink()
            work.rename(final.directory)
            self.prune(keep=final)
            return final
        finally:
            log = run_dir / "console.log"
            if self.console_log_dir is not None and log.exists():
                self.console_log_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, self.console_log_dir / f"template-{config.key()[:12]}-console.log")
            shutil.rmtree(run_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(work)
