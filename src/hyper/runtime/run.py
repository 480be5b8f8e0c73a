"""`hyper run` in the foreground: one container in a pod of one VM.

The steps: resolve the image and its layer disks, make the container's
writable disk, boot the VM, mount the container root, start the process,
stream stdio and signals until it exits, then power the VM off. Every
resource made on the way (QEMU process, sockets, disks, directories) is
released on every path, including errors and Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyper import trace
from hyper.agent.host import AgentClient, AgentRequestError, ProcessChannel
from hyper.errors import Category, FailedPrecondition, HyperError, InvalidArgument
from hyper.image import Image, ImageStore, LayerDisk
from hyper.network.pod import PodNetwork, no_network
from hyper.network.request import NetworkConfig, request_for
from hyper.network.usermode import foreground_network
from hyper.paths import HyperPaths
from hyper.runtime import resources, templates
from hyper.runtime import spec as specs
from hyper.runtime.boot import boot_agent
from hyper.runtime.seccomp import kernel_version
from hyper.runtime.settings import Settings
from hyper.runtime.stdio import FORWARDED_SIGNALS, Attachment, pump_output, raw_terminal, start_stdin_reader
from hyper.runtime.teardown import STOP_SIGNALS, ForegroundStop
from hyper.storage import mounts as storage_mounts
from hyper.storage import plan as storage_plan
from hyper.storage.share import ProxyShare, ShareEntry, share_mode, share_unavailable
from hyper.storage.volume_disk import MKFS_SPARSE_EXT4
from hyper.storage.volumes import VolumeStore
from hyper.vm.accel import AccelChoice, choose_accel, probe_host
from hyper.vm.appliance import Appliance, ensure_appliance
from hyper.vm.driver import DiskSpec, HotDisk, VmSpec
from hyper.vm.kernel import Kernel, resolve_kernel
from hyper.vm.qemu import QemuDriver, VmStartError

if TYPE_CHECKING:
    from hyper.runtime.pool import ReadyVm, VmPool

WRITABLE_DISK_BYTES = templates.SLOT_BYTES  # sparse; Docker's classic base size, 10 GiB
SHUTDOWN_TIMEOUT = 10.0
# ext4 of the container's writable disk: `discard` hands freed blocks back to
# the host file at once (the drive unmaps them), so deleting shrinks it.
WRITABLE_MOUNT_OPTIONS = "noinit_itable,discard"
MAX_SOCKET_PATH = 107
MAIN_PROCESS = 1


class ContainerExit(HyperError):
    """The container's process could not be started; `status` is Docker's 126 or 127.

    The image or the command is at fault, not Hyper: a failed precondition."""

    category = Category.FAILED_PRECONDITION

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Prepared:
    image: Image
    process: specs.ProcessSpec
    inputs: VmInputs
    layers: list[LayerDisk]


@dataclass(frozen=True)
class Launched:
    vm: QemuDriver
    agent: AgentClient
    channel: ProcessChannel


@dataclass(frozen=True)
class VmInputs:
    kernel: Kernel
    appliance: Appliance
    accel: AccelChoice


def new_container_id() -> str:
    return secrets.token_hex(32)


def notify_stderr(message: str) -> None:
    """One line on stderr for the slow first-time steps, so a long first run explains itself."""
    print(f"hyper: {message}", file=sys.stderr, flush=True)


async def prepare_vm_inputs(
    paths: HyperPaths,
    settings: Settings,
    kernel_path: Path | None,
    notify: Callable[[str], None] | None = None,
) -> VmInputs:
    say = notify or (lambda message: None)
    kernel = await asyncio.to_thread(resolve_kernel, kernel_path or settings.kernel, paths.kernels, say)
    appliance = await asyncio.to_thread(ensure_appliance, paths.appliances, kernel, None, notify)
    kernel_is_pvm = settings.kernel_is_pvm or kernel.config_value("CONFIG_PVM_GUEST") == "y"
    accel = choose_accel(settings.accel, probe_host(), kernel_is_pvm)
    return VmInputs(kernel, appliance, accel)


def make_writable_disk(path: Path, size: int = WRITABLE_DISK_BYTES) -> None:
    """A sparse ext4 image: the container's writable layer."""
    with path.open("wb") as f:
        f.truncate(size)
    try:
        subprocess.run(
            [*MKFS_SPARSE_EXT4, str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
    except FileNotFoundError as exc:
        raise FailedPrecondition("mkfs.ext4 is missing", hint="install Debian's e2fsprogs") from exc
    except subprocess.CalledProcessError as exc:
        raise FailedPrecondition(f"mkfs.ext4 failed for {path}: {exc.stderr.strip()}") from exc


class ContainerRun:
    """One foreground run; owns the container's directories, disk and VM."""

    def __init__(
        self,
        options: specs.RunOptions,
        paths: HyperPaths,
        settings: Settings,
        *,
        detached: bool = False,
        container_id: str | None = None,
    ) -> None:
        self.options = options
        self.detached = detached  # hyperd's VMs outlive hyperd
        self.paths = paths.scoped(options.owner)  # a tenant's own images and VM templates
        self.settings = settings
        self.id = container_id or new_container_id()
        self.dir = paths.containers / self.id
        # hyperd's VMs have their run directories at the runtime directory's
        # top (it reaps those it does not own at start-up); the CLI's own
        # foreground VMs, which die with it, are kept apart from them.
        self.run_dir = paths.runtime / (self.id[:12] if detached else f"foreground/{self.id[:12]}")
        self.record: dict[str, object] = {}
        self.fresh = True  # whether this run made the container's directory
        self.stop: ForegroundStop | None = None  # a foreground run's SIGINT/SIGTERM handling
        # The pod's network for this run (hyperd's NetworkManager makes it); None: loopback only.
        self.network: PodNetwork | None = None
        self._device_macs: tuple[str, ...] = ()
        self._resumed = False  # from a template: its NICs' drivers negotiate again
        # The container's volumes and host directories in its VM's share, and
        # the mounts the guest makes of them (hyper.storage).
        self.share_entries: tuple[ShareEntry, ...] = ()
        self.guest_mounts: list[dict[str, object]] = []
        # hyperd's pool of ready VMs (hyper.runtime.pool), which a run may take one from.
        self.pool: VmPool | None = None
        # The serials of the disks the guest mounts: the template's slots, or a
        # claimed pool VM's hot-added disks.
        self._serials: tuple[list[str], str] | None = None

    def save_record(self, **changes: object) -> None:
        self.record.update(changes)
        tmp = self.dir / "config.json.tmp"
        tmp.write_text(json.dumps(self.record, indent=2))
        tmp.rename(self.dir / "config.json")

    async def _make_files(self, image: Image, process: specs.ProcessSpec) -> Path:
        """The container's directory, record and writable disk, and the VM's run directory.

        A container started again (hyperd's start after stop, restart policies)
        keeps its directory and writable disk: only the run directory is new.
        """
        socket_path = self.run_dir / "agent.sock"
        if len(str(socket_path)) > MAX_SOCKET_PATH:
            raise InvalidArgument(
                f"the runtime directory {self.paths.runtime} is too deep for unix sockets",
                hint="set HYPER_RUNTIME_DIR to a shorter path",
            )
        self.fresh = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=not self.fresh)
            self.save_record(
                id=self.id,
                name=self.options.name or "",
                image=self.options.image,
                image_id=image.id,
                args=list(process.args),
                created=time.time(),
                state=specs.ContainerState.CREATED.value,
            )
            writable = self.dir / "writable.ext4"
            if not writable.exists():
                partial = self.dir / "writable.ext4.partial"
                size = storage_mounts.storage_size(self.options.storage_opt) or WRITABLE_DISK_BYTES
                # One made ahead by the pool, when there is one of this size: no mkfs here.
                made = (
                    self.pool is not None and size == WRITABLE_DISK_BYTES and self.pool.take_writable(partial)
                )
                if not made:
                    await asyncio.to_thread(make_writable_disk, partial, size)
                partial.rename(writable)
            trace.mark("writable disk ready", self.id)
            return writable
        except BaseException:
            self.release_files(remove=self.fresh)
            raise

    def release_files(self, *, remove: bool) -> None:
        """Drop the VM's run directory, and with `remove` the container's own."""
        self._keep_console_log()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.release_volumes(anonymous=True)

    def release_volumes(self, *, anonymous: bool) -> None:
        """The container no longer uses its volumes; with `anonymous` its anonymous
        ones go too (Docker's --rm and rm -v). Blocking."""
        if not self.paths.volumes.exists():
            return
        with VolumeStore(self.paths.volumes, self.paths.containers) as volumes:
            storage_plan.release_volumes(volumes, self.id, anonymous=anonymous)

    @contextlib.asynccontextmanager
    async def _container_files(self, image: Image, process: specs.ProcessSpec) -> AsyncIterator[Path]:
        writable = await self._make_files(image, process)
        try:
            yield writable
        finally:
            self.release_files(remove=self.options.remove)

    @contextlib.asynccontextmanager
    async def _own_network(self, image: Image) -> AsyncIterator[None]:
        """A foreground run's network, which ends with the run (hyper.network.usermode);
        hyperd's pods get theirs from hyperd."""
        self.network, passt = await foreground_network(
            request_for(self.options, image.config.exposed_ports),
            hostname=self.options.hostname or self.id[:12],
            run_dir=self.run_dir,
            name=self.id[:12],
            default_bridge=NetworkConfig.from_env().default_bridge,
        )
        try:
            yield
        finally:
            self.network.close()
            if passt is not None:
                await asyncio.shield(asyncio.to_thread(passt.stop))

    def _keep_console_log(self) -> None:
        target_dir = self.settings.console_log_dir
        log = self.run_dir / "console.log"
        if target_dir is not None and log.exists():
            target_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, target_dir / f"{self.id[:12]}-console.log")

    async def prepare(self) -> Prepared:
        """Resolve the image and what runs, and make sure kernel, appliance and disks exist."""
        store = ImageStore(self.paths.images)
        image = await asyncio.to_thread(store.get, self.options.image)
        # `-e NAME` takes NAME from the environment of whoever asked: for hyperd's
        # pods that is the client, which resolves it before asking (as docker does).
        with open("/proc/meminfo") as f:
            meminfo = f.read()
        if not specs.joins_another_vm(self.options):  # a VM it joins was admitted when it started
            specs.admit_vm_size(
                self.options.memory_mib, self.vm_cpus(), specs.host_memory_mib(meminfo), os.cpu_count() or 1
            )
        host_env = {} if self.detached else dict(os.environ)
        specs.process_spec(
            image.config, self.options, host_env
        )  # bad options fail before the kernel is fetched
        inputs = await prepare_vm_inputs(self.paths, self.settings, None, notify_stderr)
        kernel = kernel_version(inputs.kernel.release)
        process = specs.process_spec(image.config, self.options, host_env, kernel)
        layers = await asyncio.to_thread(store.layer_disks, image)
        await asyncio.to_thread(self._plan_storage, image)
        trace.mark("image prepared", self.id)
        return Prepared(image, process, inputs, layers)

    def vm_cpus(self) -> int:
        """A pod of one's vCPUs: its --cpus, enough for its --cpuset-cpus (hyper.runtime.resources)."""
        return resources.single_vm_cpus(specs.container_resources(self.options), self.options.cpus)

    def _plan_storage(self, image: Image) -> None:
        """Volumes named and made, host paths checked, the share's entries and the
        guest's mounts decided: before any VM boots. Blocking."""
        with VolumeStore(self.paths.volumes, self.paths.containers) as volumes:
            mounts = storage_plan.resolve_mounts(
                volumes, self.options.mounts, image.config.volumes, self.id, owner=self.options.owner
            )
            self.options = dataclasses.replace(self.options, mounts=mounts)
            plan = storage_plan.share_plan(volumes, mounts, self.id[:12])
        if plan.needs_share and share_mode() is None:
            raise FailedPrecondition(f"volumes cannot be shared with a VM here: {share_unavailable()}")
        self.share_entries, self.guest_mounts = plan.entries, list(plan.guest)

    def _base_spec(self, inputs: VmInputs) -> VmSpec:
        with open("/proc/cpuinfo") as f:
            tsc = specs.host_tsc_khz(f.read())
        cmdline = specs.kernel_cmdline(inputs.appliance, inputs.accel.accel, tsc, self.settings.kernel_params)
        return VmSpec(
            name=self.id[:12],
            kernel=inputs.kernel.boot_image(self.settings.kaslr),
            initrd=inputs.appliance.initrd,
            cmdline=cmdline,
            accel=inputs.accel.accel,
            memory_mib=self.options.memory_mib,
            cpus=self.vm_cpus(),
            run_dir=self.run_dir,
            nics=self._pod_network().nics,
            file_share=share_mode() is not None,
            scsi=True,
        )

    def _pod_network(self) -> PodNetwork:
        if self.network is not None:
            return self.network
        hostname = self.options.hostname or self.id[:12]
        try:
            resolv = Path("/etc/resolv.conf").read_text()
        except OSError:
            resolv = ""
        files = specs.etc_files(hostname, resolv)
        return no_network(files["hosts"], files["resolv.conf"])

    async def launch(self, prepared: Prepared) -> Launched:
        """Make the container's files and VM and start its process, for an owner
        that keeps them beyond one call (hyperd). On failure nothing is left."""
        vm, agent = await self.launch_for_files(prepared)
        try:
            channel = await start_process(
                agent,
                "start",
                container=self.id[:12],
                stream=MAIN_PROCESS,
                process=prepared.process,
                size=(24, 80),
                keepalive=self.options.infra,
            )
            self.save_record(state=specs.ContainerState.RUNNING.value, started=time.time())
        except BaseException:
            await agent.close()
            await vm.close()
            self.release_files(remove=self.fresh)
            raise
        return Launched(vm, agent, channel)

    def layer_serials(self, count: int) -> list[str]:
        """The serials the VM's layer disks carry in the guest: a template's or a
        boot's slots, or a pool VM's hot-added disks."""
        return self._serials[0] if self._serials else [templates.layer_serial(i) for i in range(count)]

    async def make_files(self, prepared: Prepared) -> Path:
        """The container's directory and writable disk (for a container joining
        a running VM, hyper.daemon.members); returns the disk."""
        return await self._make_files(prepared.image, prepared.process)

    async def launch_for_files(self, prepared: Prepared) -> tuple[QemuDriver, AgentClient]:
        """A VM with the container's root mounted and nothing running in it (yet):
        `launch` starts the container's process in it; hyperd also copies files in
        or out of a stopped container with one, then powers it off."""
        writable = await self._make_files(prepared.image, prepared.process)
        try:
            vm, agent = await self._start_vm(self._base_spec(prepared.inputs), prepared.layers, writable)
            try:
                await self._mount_container(agent, prepared.layers)
            except BaseException:
                await agent.close()
                await vm.close()
                raise
        except BaseException:
            self.release_files(remove=self.fresh)
            raise
        return vm, agent

    async def execute(self, attachment: Attachment) -> int:
        prepared = await self.prepare()
        async with (
            self._container_files(prepared.image, prepared.process) as writable,
            self._own_network(prepared.image),
        ):
            base = self._base_spec(prepared.inputs)
            vm, agent = await self._start_vm(base, prepared.layers, writable)
            try:
                try:
                    channel = await self._start_process(
                        agent, prepared.layers, prepared.process, attachment.terminal_size()
                    )
                    status = await self._attach(agent, channel, prepared.process, attachment)
                    try:
                        self.save_record(
                            state=specs.ContainerState.EXITED.value, exit_code=status, finished=time.time()
                        )
                    except OSError as exc:
                        # The container's status still reaches the user; only its record is stale.
                        notify_stderr(f"could not record the container's exit in {self.dir}: {exc.strerror}")
                    torn_down = self.stop is not None and self.stop.status is not None
                    if not self.options.remove and not torn_down:
                        # The writable disk is kept: unmount it cleanly before power-off.
                        with contextlib.suppress(HyperError):
                            await agent.request("shutdown", timeout=SHUTDOWN_TIMEOUT)
                        await vm.stop(SHUTDOWN_TIMEOUT)
                    if vm.io_error is not None:
                        notify_stderr(f"{vm.io_error}: the container's writes failed with I/O errors")
                    # With --rm every disk the VM wrote is about to be deleted; close() kills it.
                    return status
                finally:
                    await agent.close()
            finally:
                await vm.close()

    async def _start_vm(
        self, base: VmSpec, layers: list[LayerDisk], writable: Path
    ) -> tuple[QemuDriver, AgentClient]:
        """Start from a template when the disks fit one; boot when not, or when it fails."""
        layer_paths = [layer.path for layer in layers]
        if shutil.which(self.settings.qemu_binary) is None:
            raise VmStartError(
                f"{self.settings.qemu_binary} is not installed",
                command=[self.settings.qemu_binary],
                exit_status=None,
                console_tail="",
                hint="install Debian's qemu-system-x86 (make demo does it), or set HYPER_QEMU",
            )
        fits_template = len(layers) <= templates.LAYER_SLOTS and len(base.nics) <= templates.NIC_SLOTS
        if self.settings.templates and self.pool is not None and self._poolable(base):
            ready = await self.pool.claim(self._template_config(base))
            if ready is not None:
                trace.mark("pool vm claimed", self.id)
                return await self._take_ready(ready, layer_paths, writable)
        if self.settings.templates and fits_template:
            # A template's guest knows its writable disk as SLOT_BYTES long; a
            # disk of another size (--storage-opt) boots, so the guest sees its
            # real end and the host file cannot grow past it.
            fits = await asyncio.to_thread(
                lambda: (
                    all(templates.fits_slot(p) for p in layer_paths)
                    and writable.stat().st_size == templates.SLOT_BYTES
                )
            )
            if fits:
                cache = templates.TemplateCache(self.paths.templates, self.settings.console_log_dir)
                # A template that cannot be made means a guest that cannot boot:
                # that error is the user's answer, so it is not caught here.
                template = await cache.ensure(
                    self._template_config(base), self.settings.boot_timeout, notify_stderr
                )
                try:
                    return await self._resume_template(base, layer_paths, writable, cache, template)
                except VmStartError as exc:
                    print(
                        f"hyper: starting from the VM template failed, booting instead: {exc.message}",
                        file=sys.stderr,
                    )
                    cache.discard(template)
                    self._reset_run_dir()
        exact = tuple(DiskSpec(path, templates.layer_serial(i), True) for i, path in enumerate(layer_paths))
        spec = dataclasses.replace(base, disks=(*exact, DiskSpec(writable, templates.WRITABLE_SERIAL, False)))
        return await self._boot(spec)

    def _poolable(self, base: VmSpec) -> bool:
        """Whether a pool VM can be this run's: no NIC of its own (QEMU binds a NIC's
        backend at start) and nothing shared from the host (the share's entries
        are fixed when its helper starts)."""
        networked = self.network is not None and (self.network.interfaces or self.network.fds)
        return base.scsi and not networked and not self.share_entries

    async def _take_ready(
        self, ready: ReadyVm, layer_paths: list[Path], writable: Path
    ) -> tuple[QemuDriver, AgentClient]:
        """A claimed pool VM made this container's: its disks hot-added (SCSI), its
        run directory the container's VM's from now on."""
        from hyper.runtime.pool import hot_serials

        layer_serials, writable_serial = hot_serials(len(layer_paths))
        try:
            for target, (path, serial) in enumerate(zip(layer_paths, layer_serials, strict=True)):
                await ready.vm.attach_disk(HotDisk(path, serial, True, target))
            await ready.vm.attach_disk(HotDisk(writable, writable_serial, False, len(layer_paths)))
        except BaseException:
            await ready.discard()
            raise
        trace.mark("disks hot-added", self.id)
        with contextlib.suppress(OSError):
            self.run_dir.rmdir()  # made for a VM of its own, still empty
        self.run_dir = ready.run_dir
        self._serials = (layer_serials, writable_serial)
        self._device_macs = tuple(nic.mac for nic in ready.vm.spec.nics)
        if self.stop is not None:
            self.stop.kill_vm = ready.vm.kill_now
        return ready.vm, ready.agent

    def vm_shape(self, inputs: VmInputs) -> templates.TemplateConfig:
        """The shape (template configuration) of this run's VM: the pool's key."""
        return self._template_config(self._base_spec(inputs))

    def _template_config(self, base: VmSpec) -> templates.TemplateConfig:
        return templates.TemplateConfig(
            kernel=base.kernel,
            initrd=base.initrd,
            cmdline=base.cmdline,
            accel=base.accel,
            memory_mib=base.memory_mib,
            cpus=base.cpus,
            qemu_binary=self.settings.qemu_binary,
            file_share=base.file_share,
            scsi=base.scsi,
        )

    async def _resume_template(
        self,
        base: VmSpec,
        layer_paths: list[Path],
        writable: Path,
        cache: templates.TemplateCache,
        template: templates.Template,
    ) -> tuple[QemuDriver, AgentClient]:
        for path in layer_paths:
            try:
                await asyncio.to_thread(templates.pad_to_slot, path)
            except OSError as exc:
                raise VmStartError(
                    f"cannot size the layer disk {path} for the template: {exc.strerror}",
                    command=[],
                    exit_status=None,
                    console_tail="",
                ) from exc
        spec = dataclasses.replace(
            base,
            disks=templates.slot_disks(layer_paths, writable, cache.placeholder()),
            memory_file=template.memory,
            incoming_state=template.state,
            nics=templates.template_nics(base.nics),
        )
        return await self._boot(spec)

    async def _boot(self, spec: VmSpec) -> tuple[QemuDriver, AgentClient]:
        nic_fds = self.network.fds if self.network is not None else ()
        share = ProxyShare(spec.run_dir, self.share_entries) if spec.file_share else None
        vm = QemuDriver(spec, self.settings.qemu_binary, detached=self.detached, nic_fds=nic_fds, share=share)
        self._device_macs = tuple(nic.mac for nic in spec.nics)
        self._resumed = spec.incoming_state is not None
        if self.stop is not None:
            self.stop.kill_vm = vm.kill_now
        try:
            await vm.start()
            # hyperd acknowledges output itself, once it is on disk.
            agent = await boot_agent(vm, self.settings.boot_timeout, auto_ack=not self.detached)
            trace.mark("vm resumed" if self._resumed else "vm booted", self.id)
            return vm, agent
        except BaseException:
            await vm.close()
            raise

    def _reset_run_dir(self) -> None:
        self._keep_console_log()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)

    async def _start_process(
        self,
        agent: AgentClient,
        layers: list[LayerDisk],
        process: specs.ProcessSpec,
        size: tuple[int, int],
    ) -> ProcessChannel:
        """Set the VM up as this container's pod and start its main process."""
        await self._mount_container(agent, layers)
        channel = await start_process(
            agent, "start", container=self.id[:12], stream=MAIN_PROCESS, process=process, size=size
        )
        self.save_record(state=specs.ContainerState.RUNNING.value, started=time.time())
        return channel

    async def _mount_container(self, agent: AgentClient, layers: list[LayerDisk]) -> None:
        """The guest's hostname, clock and entropy, and the container's root mounted."""
        hostname = self.options.hostname or self.id[:12]
        network = self._pod_network()
        await agent.request(
            "setup",
            hostname=hostname,
            etc_files={
                "hostname": f"{hostname}\n",
                "hosts": network.hosts,
                "resolv.conf": network.resolv_conf,
            },
            network=network.guest_request(self._device_macs, resumed=self._resumed),
            # A VM resumed from a template has the template's clock and CRNG state.
            time_ns=time.time_ns(),
            entropy=secrets.token_hex(64),
        )
        trace.mark("guest set up", self.id)
        layer_serials, writable_serial = self._serials or (
            [templates.layer_serial(i) for i in range(len(layers))],
            templates.WRITABLE_SERIAL,
        )
        await agent.request(
            "mount_container",
            timeout=60,
            container=self.id[:12],
            layers=[{"serial": layer_serials[i], "fstype": layer.fs_type} for i, layer in enumerate(layers)],
            writable={
                "serial": writable_serial,
                "fstype": "ext4",
                "options": WRITABLE_MOUNT_OPTIONS,
            },
            privileged=self.options.privileged,
            shm_size=self.options.shm_size or None,
            mounts=self.guest_mounts,
            read_only=self.options.read_only,
            resources=specs.container_resources(self.options).message(),
        )
        trace.mark("container mounted", self.id)

    async def _attach(
        self,
        agent: AgentClient,
        channel: ProcessChannel,
        process: specs.ProcessSpec,
        attachment: Attachment,
    ) -> int:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        async def request(kind: str, **fields: int) -> None:
            with contextlib.suppress(HyperError):
                await agent.request(kind, process=MAIN_PROCESS, **fields)

        def spawn(coro: Coroutine[None, None, None]) -> None:
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def forward(signum: int) -> None:
            spawn(request("signal", signal=signum))

        def forward_stop(signum: int) -> bool:
            if process.tty and signum == signal.SIGINT and attachment.stdin_is_tty():
                return False  # a terminal's Ctrl-C reaches the container as a keystroke
            forward(signum)
            return True

        def resize() -> None:
            rows, cols = attachment.terminal_size()
            spawn(request("resize", rows=rows, cols=cols))

        output = asyncio.create_task(pump_output(channel, attachment))
        stdin_task = asyncio.create_task(self._forward_stdin(agent, attachment)) if process.stdin else None
        installed = []
        for signum in FORWARDED_SIGNALS:
            if signum in STOP_SIGNALS and self.stop is not None:
                continue  # the run's stopper forwards them, and tears down if they go unheard
            if not (process.tty and signum == signal.SIGINT and attachment.stdin_is_tty()):
                loop.add_signal_handler(signum, forward, signum)
                installed.append(signum)
        if process.tty:
            loop.add_signal_handler(signal.SIGWINCH, resize)
            installed.append(signal.SIGWINCH)
        if self.stop is not None:
            self.stop.attached(forward_stop)
        try:
            with raw_terminal(attachment.stdin_fd, process.tty and process.stdin):
                status = await self._exit_status(channel)
                if self.stop is None or self.stop.status is None:
                    await asyncio.wait_for(output, 30)
            return status
        finally:
            if self.stop is not None:
                self.stop.attached(None)
            current = asyncio.current_task()
            for signum in installed:
                loop.remove_signal_handler(signum)
                if signum in STOP_SIGNALS and current is not None:
                    loop.add_signal_handler(signum, current.cancel)  # back to "cancel the run"
            for task in (output, stdin_task, *tasks):
                if task is not None:
                    task.cancel()

    async def _exit_status(self, channel: ProcessChannel) -> int:
        """The container's exit status, or the status of a local tear-down (the VM is dead then)."""
        if self.stop is None:
            return await channel.exit_status
        exited = asyncio.ensure_future(channel.exit_status)
        try:
            await asyncio.wait({exited, self.stop.torn_down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not exited.done():
                exited.cancel()
        if self.stop.status is not None:
            return self.stop.status
        return exited.result()

    async def _forward_stdin(self, agent: AgentClient, attachment: Attachment) -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue(16)
        start_stdin_reader(attachment.stdin_fd, queue)
        while data := await queue.get():
            await agent.write_stdin(MAIN_PROCESS, data)
        await agent.close_stdin(MAIN_PROCESS)


async def start_process(
    agent: AgentClient,
    kind: str,
    *,
    container: str,
    stream: int,
    process: specs.ProcessSpec,
    size: tuple[int, int],
    keepalive: bool = False,
    pid_namespace: str | None = None,
) -> ProcessChannel:
    """Ask the agent to `start` a container's main process or `exec` one into it;
    a command that cannot run raises ContainerExit with Docker's 126 or 127."""
    channel = agent.open_process(stream, keep=kind == "start")
    rows, cols = size
    try:
        confinement = None if process.confinement is None else process.confinement.message()
        extra: dict[str, Any] = {}  # only when asked: other requests stay as they were
        if keepalive:
            extra["keepalive"] = True
        if pid_namespace:
            extra["pid_namespace"] = pid_namespace
        await agent.request(
            kind,
            container=container,
            process=stream,
            args=list(process.args),
            env=list(process.env),
            cwd=process.cwd,
            user=process.user,
            tty=process.tty,
            stdin=process.stdin,
            rows=rows,
            cols=cols,
            confinement=confinement,
            init=process.init,
            **extra,
        )
    except AgentRequestError as exc:
        if exc.stage in ("exec", "user", "cwd"):
            raise ContainerExit(exc.message, specs.start_failure_status(exc.stage, exc.errno)) from exc
        raise
    trace.mark("process started" if kind == "start" else "exec started", container)
    return channel


async def run_foreground(
    options: specs.RunOptions, paths: HyperPaths, settings: Settings, attachment: Attachment
) -> int:
    """Run one container to completion; a Ctrl-C before it starts cancels cleanly,
    and a second SIGINT/SIGTERM always ends the run (hyper.runtime.teardown).

    Raises ContainerExit when the command cannot be started (Docker's 126/127).
    """
    run = ContainerRun(options, paths, settings)
    task = asyncio.current_task()
    assert task is not None
    run.stop = ForegroundStop(task)
    run.stop.install()
    try:
        return await run.execute(attachment)
    except (asyncio.CancelledError, HyperError):
        if run.stop.status is None:
            raise
        return run.stop.status  # torn down here: everything is cleaned up by now
    finally:
        with contextlib.suppress(ValueError, RuntimeError):
            run.stop.uninstall()
