"""A pool of ready VMs in hyperd: a run takes one that is already up.

For each VM shape in use (the template's configuration: kernel, appliance,
memory, vCPUs, accelerator, devices), hyperd keeps up to `size` VMs resumed
from the shape's template, their agent connected and waiting, with no disk
of any container: every disk slot holds the template's placeholder (the
writable slot a sparse file of the VM's own). A container's run claims one
(`claim`), hot-adds its layer disks and its writable disk on the VM's SCSI
controller (hyper.vm.qemu's `attach_disk`), and mounts and starts as usual:
no QEMU start, no resume, no boot on the critical path. The pool refills
itself in the background, one VM at a time.

Bounds: at most `size` VMs per shape, their guests' RAM together at most
`memory_mib`, and none started while the host's available memory is below
twice the VM's size (a running pod's memory comes first). A pool VM that
died while waiting is never handed out (its QEMU and agent are checked at the
claim). hyperd kills every pool VM when it stops; after a crash, the next
hyperd reaps them as orphans (hyper.vm.orphans: their run directories are
named like any VM's and no record owns them).

What a pool VM cannot take after the fact is served the usual way: a NIC
(a microvm cannot hot-plug one, and QEMU binds a NIC's backend at start),
so only pods with no network use the pool; and shared host directories
(the share's entries are fixed when its helper starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from hyper.agent.host import AgentClient
from hyper.errors import HyperError
from hyper.network.pod import no_network
from hyper.paths import HyperPaths
from hyper.runtime import templates
from hyper.runtime.boot import boot_agent
from hyper.runtime.settings import Settings
from hyper.storage.share import ProxyShare
from hyper.vm.driver import VmSpec
from hyper.vm.qemu import QemuDriver

DEFAULT_SIZE = 0  # off unless asked: a ready VM holds host memory while it waits
DEFAULT_MEMORY_MIB = 2048
WRITABLE_PLACEHOLDER = "pool-writable.img"
LAYER_SERIAL_PREFIX = "pl"  # hot-added disks' serials, apart from the template slots' own
WRITABLE_SERIAL = "pw"


@dataclass(frozen=True)
class PoolConfig:
    """`hyperd --pool N --pool-memory SIZE` (0 disables)."""

    size: int = DEFAULT_SIZE
    memory_mib: int = DEFAULT_MEMORY_MIB


@dataclass
class ReadyVm:
    """A VM resumed from its shape's template, its agent waiting; owned by the pool
    until claimed, then by the run that claimed it."""

    vm: QemuDriver
    agent: AgentClient
    shape: templates.TemplateConfig

    @property
    def run_dir(self) -> Path:
        return self.vm.spec.run_dir

    async def alive(self) -> bool:
        if self.agent.failure is not None:
            return False
        try:
            return await asyncio.wait_for(self.vm.query_status(), 5) == "running"
        except Exception:  # QMP gone with its QEMU, or a guest that no longer answers
            return False

    async def discard(self) -> None:
        await self.agent.close()
        await self.vm.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


class VmPool:
    """hyperd's ready VMs, by shape (see the module's docstring)."""

    def __init__(self, paths: HyperPaths, settings: Settings, config: PoolConfig) -> None:
        self.paths = paths
        self.settings = settings
        self.config = config
        self._ready: dict[templates.TemplateConfig, list[ReadyVm]] = {}
        self._filling: dict[templates.TemplateConfig, asyncio.Task[None]] = {}
        self._closed = False
        # Containers' writable disks made ahead (mkfs is not on a run's critical
        # path); on the state directory's file system, so a take is a rename.
        self.disks_dir = paths.state / "pool-disks"
        self._disks: list[Path] = []
        self._making: asyncio.Task[None] | None = None
        self.claimed = 0  # runs served by a ready VM
        self.missed = 0  # runs of a pooled shape that found none ready

    @property
    def enabled(self) -> bool:
        return self.config.size > 0 and self.config.memory_mib > 0 and not self._closed

    def status(self) -> dict[str, object]:
        """What `hyper info` shows."""
        return {
            "size": self.config.size,
            "memory_mib": self.config.memory_mib,
            "ready": sum(len(vms) for vms in self._ready.values()),
            "shapes": [
                {"memory_mib": shape.memory_mib, "cpus": shape.cpus, "ready": len(vms)}
                for shape, vms in self._ready.items()
            ],
            "writable_disks": len(self._disks),
            "claimed": self.claimed,
            "missed": self.missed,
        }

    async def claim(self, shape: templates.TemplateConfig) -> ReadyVm | None:
        """A live ready VM of `shape`, now the caller's; None when there is none
        (the pool then fills for this shape, for the next run)."""
        if not self.enabled:
            return None
        vms = self._ready.setdefault(shape, [])
        found = None
        while vms:
            candidate = vms.pop(0)
            if await candidate.alive():
                found = candidate
                break
            await candidate.discard()  # died while it waited: never handed out
        if found is None:
            self.missed += 1
        else:
            self.claimed += 1
        self.fill(shape)
        return found

    def take_writable(self, dest: Path) -> bool:
        """Move a writable disk made ahead to `dest`; False when none is ready."""
        if not self.enabled:
            return False
        taken = False
        while self._disks and not taken:
            disk = self._disks.pop()
            try:
                os.rename(disk, dest)
                taken = True
            except OSError:
                continue
        self._make_disks()
        return taken

    def _make_disks(self) -> None:
        if self.enabled and (self._making is None or self._making.done()):
            self._making = asyncio.create_task(self._fill_disks())

    async def _fill_disks(self) -> None:
        from hyper.runtime.run import make_writable_disk

        while not self._closed and len(self._disks) < self.config.size:
            partial = self.disks_dir / f"{secrets.token_hex(8)}.partial"
            try:
                await asyncio.to_thread(make_writable_disk, partial)
                disk = partial.with_suffix(".ext4")
                partial.rename(disk)
            except (HyperError, OSError) as exc:
                partial.unlink(missing_ok=True)
                print(f"hyperd: the pool could not make a writable disk: {exc}", file=sys.stderr, flush=True)
                return
            self._disks.append(disk)

    def start(self) -> None:
        """Begin: the disks made ahead (an earlier hyperd's are remade: they may be half made)."""
        if not self.enabled:
            return
        shutil.rmtree(self.disks_dir, ignore_errors=True)
        self.disks_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._make_disks()

    def fill(self, shape: templates.TemplateConfig) -> None:
        """Start filling `shape`'s pool in the background (once at a time)."""
        if not self.enabled:
            return
        running = self._filling.get(shape)
        if running is not None and not running.done():
            return
        self._filling[shape] = asyncio.create_task(self._fill(shape))

    def _room_for(self, shape: templates.TemplateConfig) -> bool:
        vms = self._ready.get(shape, [])
        held = sum(vm.shape.memory_mib for ready in self._ready.values() for vm in ready)
        if len(vms) >= self.config.size or held + shape.memory_mib > self.config.memory_mib:
            return False
        return available_mib() >= 2 * shape.memory_mib

    async def _fill(self, shape: templates.TemplateConfig) -> None:
        while not self._closed and self._room_for(shape):
            try:
                ready = await self._start(shape)
            except (HyperError, OSError, TimeoutError) as exc:
                print(f"hyperd: the pool could not start a VM: {exc}", file=sys.stderr, flush=True)
                return
            if self._closed:
                await ready.discard()
                return
            self._ready.setdefault(shape, []).append(ready)

    async def _start(self, shape: templates.TemplateConfig) -> ReadyVm:
        cache = templates.TemplateCache(self.paths.templates, self.settings.console_log_dir)
        template = await cache.ensure(shape, self.settings.boot_timeout, None)
        # Twelve hex digits, as a container's VM: a crashed hyperd's pool VMs are reaped as orphans.
        run_dir = self.paths.runtime / secrets.token_hex(6)
        run_dir.mkdir(mode=0o700)
        try:
            writable = run_dir / WRITABLE_PLACEHOLDER
            with writable.open("wb") as f:
                f.truncate(templates.SLOT_BYTES)  # the slot's size the guest knows; never written
            spec = VmSpec(
                name=run_dir.name,
                kernel=shape.kernel,
                initrd=shape.initrd,
                cmdline=shape.cmdline,
                accel=shape.accel,
                memory_mib=shape.memory_mib,
                cpus=shape.cpus,
                run_dir=run_dir,
                nics=templates.template_nics(no_network("", "").nics),
                file_share=shape.file_share,
                scsi=shape.scsi,
                disks=templates.slot_disks([], writable, cache.placeholder()),
                memory_file=template.memory,
                incoming_state=template.state,
            )
            share = ProxyShare(run_dir, ()) if spec.file_share else None
            vm = QemuDriver(spec, self.settings.qemu_binary, detached=True, share=share)
            try:
                await vm.start()
                agent = await boot_agent(vm, self.settings.boot_timeout, auto_ack=False)
            except BaseException:
                await vm.close()
                raise
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return ReadyVm(vm, agent, shape)

    async def close(self) -> None:
        """hyperd stops: every pool VM is killed and its files removed. Idempotent."""
        self._closed = True
        tasks = [*self._filling.values(), *([self._making] if self._making is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        shutil.rmtree(self.disks_dir, ignore_errors=True)
        self._disks.clear()
        ready = [vm for vms in self._ready.values() for vm in vms]
        self._ready.clear()
        for vm in ready:
            with contextlib.suppress(Exception):
                await vm.discard()


def hot_serials(layers: int) -> tuple[list[str], str]:
    """The serials a claimed VM's hot-added disks carry: the layers', the writable's."""
    return [f"{LAYER_SERIAL_PREFIX}{i}" for i in range(layers)], WRITABLE_SERIAL


def available_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def config_from(size: int | None, memory: str | None, environ: dict[str, str] | None = None) -> PoolConfig:
    """The pool's bounds: the flags, else HYPER_POOL / HYPER_POOL_MEMORY (so that a
    hyperd the CLI starts takes them from its environment), else the defaults."""
    from hyper.errors import InvalidArgument
    from hyper.humanize import parse_size

    env = os.environ if environ is None else environ
    if size is None:
        text = env.get("HYPER_POOL", "")
        try:
            size = int(text) if text else DEFAULT_SIZE
        except ValueError as exc:
            raise InvalidArgument(f"HYPER_POOL={text!r} is not a number of VMs") from exc
    if size < 0:
        raise InvalidArgument("the pool's size cannot be negative", hint="0 disables it")
    memory = memory if memory is not None else env.get("HYPER_POOL_MEMORY") or None
    memory_mib = DEFAULT_MEMORY_MIB if memory is None else parse_size(memory, "--pool-memory") >> 20
    return dataclasses.replace(PoolConfig(), size=size, memory_mib=memory_mib)
