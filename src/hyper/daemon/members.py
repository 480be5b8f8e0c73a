"""Containers that run in another container's VM: `--network container:NAME`
and the containers of a pod (hyper.daemon.named_pods).

A member shares its host's VM, so its network (one address, `localhost`
between them), hostname, IPC namespace and file share; it has its own root,
process tree, cgroup (its --memory, --cpus...), log, exit status and restart
policy. To start, it needs its host running: its layers (those the VM does
not have yet) and its writable disk are hot-added on the VM's SCSI
controller, its volumes join the VM's file share, and the guest mounts its
root beside the others. When it stops the guest removes it (its processes
killed, its mounts gone) and its disks are taken out of the VM again; when
the host's VM powers off its members stop first.

A hyperd restart adopts hosts, not their members yet: a member found running
is taken out of its host's VM and recorded as exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hyper.agent.host import AgentClient, ProcessChannel
from hyper.daemon.pod_requests import SHUTDOWN_SECONDS
from hyper.daemon.pods import EXIT_VM_DIED, OOM_REASON, Pod, State
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument
from hyper.runtime import resources
from hyper.runtime import spec as specs
from hyper.runtime.run import WRITABLE_MOUNT_OPTIONS, ContainerRun, Launched, start_process
from hyper.storage.share import ProxyShare
from hyper.vm.driver import HotDisk
from hyper.vm.qemu import QemuDriver

CONTAINER_MODE = "container:"
SHARE_PID_LABEL = "hyper.pod.share-pid"  # on a pod's infra container whose containers share its PID namespace

# A member cannot have these of its own: they are its host's (RunOptions field → flag).
HOST_OWNED = {
    "hostname": "--hostname",
    "network_aliases": "--network-alias",
    "ip": "--ip",
    "publish": "--publish",
    "publish_all": "--publish-all",
    "dns": "--dns",
    "dns_search": "--dns-search",
    "dns_options": "--dns-option",
    "extra_hosts": "--add-host",
    "mac_address": "--mac-address",
}


def host_reference(options: specs.RunOptions) -> str | None:
    """The container whose VM this one joins (`--network container:NAME`), or None."""
    if not options.network.startswith(CONTAINER_MODE):
        return None
    ref = options.network[len(CONTAINER_MODE) :]
    if not ref:
        raise InvalidArgument("--network container: needs a container", hint="--network container:NAME")
    return ref


is_member = specs.joins_another_vm


def check_member(options: specs.RunOptions, host_name: str) -> None:
    """A container joining another's VM asks nothing of the network: Docker's
    refusals for `--network container:` (before anything is made)."""
    default = specs.RunOptions(image="")
    for name, flag in HOST_OWNED.items():
        if hasattr(options, name) and getattr(options, name) != getattr(default, name):
            raise InvalidArgument(
                f"conflicting options: {flag} and the network of container {host_name}",
                hint=f"a container sharing {host_name}'s VM has its network: set {flag} there",
            )


class Member(Pod):
    """A container running in its host's VM (the Pod it joined)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The daemon's: the running container whose VM this one joins, and its
        # lookup of containers by ID or name.
        self.host_for: Callable[[Member], Awaitable[Pod]] | None = None
        self.find: Callable[[str], Pod] | None = None
        self.host: Pod | None = None  # while it runs
        self._stream = 0
        self.adopted = False

    @property
    def host_id(self) -> str:
        return self.options.network[len(CONTAINER_MODE) :]

    @property
    def main_stream(self) -> int:
        return self._stream

    def new_stream(self) -> int:
        # Streams are the VM's: its host numbers them for all its containers.
        return self.host.new_stream() if self.host is not None else super().new_stream()

    async def _run_vm(self, run: ContainerRun) -> Launched:
        assert self.host_for is not None
        host = await self.host_for(self)
        vm, agent = host.vm, host.agent
        if vm is None or agent is None or host.status is not State.RUNNING:
            raise FailedPrecondition(
                f"cannot join container {host.record.name}: it is not running", hint="start it first"
            )
        resources.check_fits_vm(
            specs.container_resources(self.options), vm.spec.cpus, vm.spec.memory_mib, self.record.name
        )
        prepared = await run.prepare()
        writable = await run.make_files(prepared)
        mounted = False
        try:
            layers = []
            for layer in prepared.layers:
                serial = host.layer_serials.get(str(layer.path))
                if serial is None:
                    serial = (await host.vm_disks.take(vm, layer.path, read_only=True, owner=self.id)).serial
                layers.append({"serial": serial, "fstype": layer.fs_type})
            disk = await host.vm_disks.take(vm, writable, read_only=False, owner=self.id)
            if run.share_entries:
                if not isinstance(vm.share, ProxyShare):
                    raise FailedPrecondition("the VM has no file share for this container's volumes")
                await asyncio.to_thread(vm.share.attach, run.share_entries)
            mounted = True
            await agent.request(
                "mount_container",
                timeout=60,
                container=self.id[:12],
                layers=layers,
                writable={"serial": disk.serial, "fstype": "ext4", "options": WRITABLE_MOUNT_OPTIONS},
                privileged=self.options.privileged,
                shm_size=self.options.shm_size or None,
                mounts=run.guest_mounts,
                read_only=self.options.read_only,
                resources=specs.container_resources(self.options).message(),
            )
            stream = host.new_stream()
            # A pod that shares one PID namespace: its infra's (hyper.daemon.named_pods).
            shared = host.id[:12] if host.record.labels.get(SHARE_PID_LABEL) == "true" else None
            channel = await start_process(
                agent,
                "start",
                container=self.id[:12],
                stream=stream,
                process=prepared.process,
                size=(24, 80),
                pid_namespace=shared,
            )
        except BaseException:
            if mounted:
                with contextlib.suppress(HyperError):
                    await agent.request("remove_container", container=self.id[:12], timeout=SHUTDOWN_SECONDS)
            await host.vm_disks.release(vm, self.id)
            run.release_files(remove=False)
            raise
        self.host, self._stream = host, stream
        host.members.add(self)
        return Launched(vm, agent, channel)

    def _vm_record(self, launched: Launched, position: int) -> dict[str, Any]:
        assert self.host is not None
        disks = [
            {"path": str(d.path), "serial": d.serial, "read_only": d.read_only, "target": d.target}
            for key, d in self.host.vm_disks.disks.items()
            if self.id in self.host.vm_disks.owners.get(key, ())
        ]
        return {
            "host": self.host.id,
            "stream": self._stream,
            "disks": disks,
            "stream_start": launched.agent.received_offset,
            "log_position": position,
        }

    def _supervise(self, vm: QemuDriver, agent: AgentClient, channel: ProcessChannel) -> None:
        self._attach_run(agent, channel)

    def _attach_run(self, agent: AgentClient, channel: ProcessChannel) -> None:
        # Not the VM: that is the host's to stop, pause, or measure.
        self._generation += 1
        self.vm, self.agent, self._main_channel = None, agent, channel
        self._spawn(self._pump(channel, self._generation))
        self.health_checks.start(self.record, self._spawn)
        if self.host is not None:
            self._spawn(self._watch_host(self.host, self._generation))

    async def _watch_host(self, host: Pod, generation: int) -> None:
        await host.exited.wait()
        await self._finish(EXIT_VM_DIED, f"the VM of container {host.record.name} stopped", generation)

    async def host_stopping(self) -> None:
        host = self.host
        name = host.record.name if host is not None else self.host_id[:12]
        await self._finish(EXIT_VM_DIED, f"the VM of container {name} stopped")

    async def _pull_plug(self) -> None:
        # The guest did not end the process: take the whole container out of the VM.
        await self._finish(EXIT_VM_DIED, "it did not stop; removed from its VM")

    async def _power_off(self, status: int, reason: str | None, *, oom_killed: bool = False) -> None:
        agent, host = self.agent, self.host
        await self.health_checks.stop()
        self._move(
            State.EXITED,
            exit_code=status,
            finished_at=time.time(),
            reason=OOM_REASON if oom_killed else reason,
            oom_killed=oom_killed,
        )
        if agent is not None and agent.failure is None:
            with contextlib.suppress(HyperError):
                await agent.request("remove_container", container=self.id[:12], timeout=SHUTDOWN_SECONDS)
        if agent is not None:
            agent.forget(self._stream)
        if host is not None:
            host.members.discard(self)
            await host.vm_disks.release(host.vm, self.id)
        self.agent = self._main_channel = self.host = None
        shutil.rmtree(self.paths.runtime / self.id[:12], ignore_errors=True)
        await self._exited(status)

    async def pause(self) -> None:
        raise FailedPrecondition(
            f"container {self.record.name} runs in the VM of another container and cannot be paused alone",
            hint="pause the container whose network it joins",
        )

    def resume_point(self) -> int | None:
        """Where the agent's stream should resume for this container's log."""
        doc = self.record.vm or {}
        last = self.log.last_offset(since=int(doc.get("log_position") or 0)) if self.log else None
        start = doc.get("stream_start")
        return last if last is not None else (start if isinstance(start, int) else None)

    def rejoin(self, host: Pod, agent: AgentClient) -> None:
        """Take the running container back as its host's VM is adopted: its
        stream opened before the agent's hello (the replay comes first), its
        disks known again."""
        doc = self.record.vm or {}
        self.host, self._stream = host, int(doc["stream"])
        host.members.add(self)
        for entry in doc.get("disks") or []:
            disk = HotDisk(
                Path(entry["path"]), str(entry["serial"]), bool(entry["read_only"]), int(entry["target"])
            )
            host.vm_disks.adopt(disk, self.id)
        if self.log is not None:
            self._skip_until = self.log.last_offset(since=int(doc.get("log_position") or 0))
        channel = agent.open_process(self._stream, keep=True)
        self._attach_run(agent, channel)
        self.adopted = True

    async def adopt(self) -> None:
        """A member whose host was not adopted (gone, or its agent lost): take
        it out of the host's VM if that still runs, and record it as exited."""
        if self.adopted:
            return
        doc = self.record.vm or {}
        host: Pod | None = None
        with contextlib.suppress(HyperError):
            if self.find is not None and doc.get("host"):
                host = self.find(str(doc["host"]))
        if host is not None and host.agent is not None and host.running:
            with contextlib.suppress(HyperError):
                await host.agent.request("remove_container", container=self.id[:12], timeout=SHUTDOWN_SECONDS)
            for entry in doc.get("disks") or []:
                disk = HotDisk(
                    Path(entry["path"]), entry["serial"], bool(entry["read_only"]), int(entry["target"])
                )
                if host.vm is not None:
                    with contextlib.suppress(HyperError):
                        await host.vm.detach_disk(disk)
        await self._finish(EXIT_VM_DIED, "the VM it joined was not adopted after hyperd restarted")
