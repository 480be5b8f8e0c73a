"""hyperd's pods made by `hyper pod create`: several containers in one VM.

A pod's VM belongs to its infra container, made when the pod starts (by
`hyper pod start`, or by starting one of its containers) and removed when
it stops: its main process is the guest agent's keep-alive, not the image's
(the image is the first container's, so that no other image is needed), and
it holds the pod's network: its address, hostname and published ports. The
pod's containers (`--pod NAME`) join that VM as members (hyper.daemon.members):
they share its network (one address, `localhost` between them), its IPC
namespace and file share, and each keeps its own root, processes, log,
status, restart policy and limits. The VM is sized when the infra starts:
the pod's own --memory/--cpus, else its containers' (hyper.runtime.resources).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyper.daemon.members import SHARE_PID_LABEL
from hyper.daemon.policy import RestartPolicy
from hyper.daemon.requests import CreateRequest
from hyper.daemon.state import PodRecord, valid_name
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument
from hyper.network.request import request_for
from hyper.runtime import resources
from hyper.runtime import spec as specs

if TYPE_CHECKING:
    from hyper.daemon.daemon import Daemon
    from hyper.daemon.pods import Pod

INFRA_SUFFIX = "-infra"
INFRA_COMMAND = ("keepalive",)  # recorded only: the guest runs its own keep-alive (RunOptions.infra)
POD_LABEL = "hyper.pod"
SHAREABLE = ("pid", "ipc", "uts", "net")


@dataclass(frozen=True)
class PodOptions:
    """`hyper pod create`'s options: the VM's size (None: from its
    containers), and its network in RunOptions' textual forms."""

    hostname: str | None = None
    memory_mib: int | None = None
    cpus: int | None = None
    network: str = ""
    publish: tuple[str, ...] = ()
    share: tuple[str, ...] = ()  # namespaces shared beyond the network, UTS and IPC: "pid"
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()

    def check(self) -> None:
        unknown = [name for name in self.share if name not in SHAREABLE]
        if unknown:
            raise InvalidArgument(
                f"a pod cannot share the {unknown[0]!r} namespace",
                hint="--share takes pid (ipc, uts and the network are always shared)",
            )
        if self.memory_mib is not None and self.memory_mib < specs.MIN_MEMORY_MIB:
            raise InvalidArgument(f"a pod's VM needs at least {specs.MIN_MEMORY_MIB} MiB")
        if self.cpus is not None and self.cpus < 1:
            raise InvalidArgument("a pod's VM needs at least one vCPU")
        if self.network.startswith("container:"):
            raise InvalidArgument("a pod has a network of its own", hint="leave out --network container:")

    def network_options(self) -> specs.RunOptions:
        return specs.RunOptions(
            image="",
            hostname=self.hostname,
            network=self.network,
            publish=self.publish,
            dns=self.dns,
            dns_search=self.dns_search,
            dns_options=self.dns_options,
        )


def pod_options_from(doc: Mapping[str, Any]) -> PodOptions:
    names = {f.name for f in dataclasses.fields(PodOptions)}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items() if k in names}
    return PodOptions(**values)


class NamedPods:
    """The pods of one hyperd (its Daemon holds their containers)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, pod_id: str) -> asyncio.Lock:
        return self._locks.setdefault(pod_id, asyncio.Lock())

    def create(self, name: str | None, options: PodOptions, labels: Mapping[str, str]) -> PodRecord:
        """Record a pod; nothing runs until its first container starts."""
        options.check()
        self.daemon.network.check_request(request_for(options.network_options()))
        pod_id = secrets.token_hex(32)
        record = PodRecord(
            id=pod_id,
            name=valid_name(name) if name else pod_id[:12],
            created=time.time(),
            options=dataclasses.asdict(options),
            labels=dict(labels),
        )
        self.daemon.state.insert_pod(record)
        return record

    def find(self, ref: str) -> PodRecord:
        return self.daemon.state.resolve_pod(ref)

    def containers(self, record: PodRecord) -> list[Pod]:
        """Its containers (not its infra), oldest first."""
        found = [p for p in self.daemon.pods.values() if p.options.pod == record.id and not p.options.infra]
        return sorted(found, key=lambda p: p.record.created)

    def infra(self, record: PodRecord) -> Pod | None:
        return self.daemon.pods.get(record.infra) if record.infra else None

    def running(self, record: PodRecord) -> bool:
        infra = self.infra(record)
        return infra is not None and infra.status is specs.ContainerState.RUNNING

    async def ensure_running(self, pod_id: str, image: str) -> Pod:
        """The pod's infra container, started (made, with `image`, when there is none)."""
        async with self._lock(pod_id):
            record = self.daemon.state.resolve_pod(pod_id)
            infra = self.infra(record)
            if infra is not None and infra.status is specs.ContainerState.RUNNING:
                return infra
            if infra is not None:  # stopped: made again, sized for the containers it has now
                await self._drop_infra(record)
            record = self.daemon.state.resolve_pod(pod_id)
            infra = await self._make_infra(record, image)
            try:
                await infra.start()
            except BaseException:
                await self._drop_infra(self.daemon.state.resolve_pod(pod_id))
                raise
            return infra

    async def _make_infra(self, record: PodRecord, image: str) -> Pod:
        options = pod_options_from(record.options)
        limits = [specs.container_resources(p.options) for p in self.containers(record)]
        memory, cpus = resources.pod_vm_size(
            limits,
            os.cpu_count() or 1,
            memory_mib=options.memory_mib,
            cpus=options.cpus,
            default_cpus=self.daemon.settings.default_cpus,
        )
        run_options = specs.RunOptions(
            image=image,
            command=INFRA_COMMAND,
            name=record.name + INFRA_SUFFIX,
            hostname=options.hostname or record.name,
            network=options.network,
            publish=options.publish,
            dns=options.dns,
            dns_search=options.dns_search,
            dns_options=options.dns_options,
            memory_mib=memory,
            cpus=cpus,
            pod=record.id,
            infra=True,
        )
        request = CreateRequest(
            options=run_options,
            labels={POD_LABEL: record.name} | ({SHARE_PID_LABEL: "true"} if "pid" in options.share else {}),
            restart=RestartPolicy.parse("no"),
            auto_remove=False,
            stdin_once=False,
        )
        infra = await self.daemon.create(request)
        self.daemon.state.update_pod(record, infra=infra.id)
        return infra

    async def _drop_infra(self, record: PodRecord) -> None:
        if record.infra and record.infra in self.daemon.pods:
            with contextlib.suppress(HyperError):
                await self.daemon.remove(record.infra, force=True)
        self.daemon.state.update_pod(record, infra="")

    async def start(self, ref: str) -> list[str]:
        """Start the pod's VM and each of its containers not running; the names started."""
        record = self.find(ref)
        containers = self.containers(record)
        if not containers:
            raise FailedPrecondition(
                f"pod {record.name} has no containers",
                hint=f"add one: hyper create --pod {record.name} IMAGE",
            )
        await self.ensure_running(record.id, containers[0].options.image)
        started = []
        for container in containers:
            if await container.start():
                started.append(container.record.name)
        return started

    async def stop(self, ref: str, timeout: float | None = None) -> None:
        """Stop its containers (together), then its VM, whose infra is removed."""
        record = self.find(ref)
        async with self._lock(record.id):
            running = [c for c in self.containers(record) if c.running]
            results = await asyncio.gather(*(c.stop(timeout) for c in running), return_exceptions=True)
            await self._drop_infra(self.find(record.id))
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def remove(self, ref: str, *, force: bool) -> None:
        """Remove its containers, its VM and itself; running ones only with `force`."""
        record = self.find(ref)
        containers = self.containers(record)
        running = [c.record.name for c in containers if c.running]
        if running and not force:
            raise FailedPrecondition(
                f"pod {record.name} has running containers ({', '.join(running)})",
                hint="stop it first (hyper pod stop), or remove it with -f",
            )
        async with self._lock(record.id):
            for container in containers:
                await self.daemon.remove(container.id, force=True)
            await self._drop_infra(self.find(record.id))
            self.daemon.state.delete_pod(record.id)
        self._locks.pop(record.id, None)

    def describe(self, record: PodRecord) -> dict[str, Any]:
        """`hyper pod inspect`'s document."""
        infra = self.infra(record)
        vm = infra.vm.spec if infra is not None and infra.vm is not None else None
        return {
            "Id": record.id,
            "Name": record.name,
            "Created": record.created,
            "State": "running" if self.running(record) else "exited",
            "Labels": record.labels,
            "Options": record.options,
            "InfraContainerId": record.infra,
            "Vm": None if vm is None else {"MemoryMiB": vm.memory_mib, "Cpus": vm.cpus},
            "Containers": [
                {"Id": c.id, "Name": c.record.name, "State": c.record.state, "ExitCode": c.record.exit_code}
                for c in self.containers(record)
            ],
        }
