"""Pod sandboxes and their containers, on hyperd's pods.

A sandbox is a hyperd pod (hyper.daemon.named_pods) with the same ID: one
VM, booted when its first container starts, holding the pod's hostname,
network and size; each container is a member of that pod, with its own root,
processes, log and exit status. The CRI keeps what only Kubernetes cares
about (metadata, labels, annotations, log paths, the CNI result) in its own
records (hyper.cri.records).

Stopping and removing are idempotent as the CRI requires: what is already
stopped or gone is no error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from cri_api.v1 import api_pb2

from hyper.agent.protocol import FrameKind
from hyper.cri import netns, translate
from hyper.cri.cni import CniPlugins, PodAttachment, address_of
from hyper.cri.logs import LogCopier
from hyper.cri.records import ContainerRecord, RecordStore, SandboxRecord, SandboxState
from hyper.daemon.daemon import Daemon
from hyper.daemon.pods import Pod
from hyper.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    HyperError,
    InvalidArgument,
    NotFound,
)
from hyper.network.model import etc_hosts, resolv_conf
from hyper.network.pod import GuestInterface, PodNetwork
from hyper.runtime import spec as specs
from hyper.runtime.run import ContainerExit

RUNTIME_HANDLERS = ("", "hyper")  # the default handler and a RuntimeClass named `hyper`
EXEC_OUTPUT_LIMIT = 16 * 1024 * 1024  # the kubelet's own bound on ExecSync output
_SANDBOX_STATE = {SandboxState.READY: api_pb2.SANDBOX_READY, SandboxState.NOT_READY: api_pb2.SANDBOX_NOTREADY}


def _ns(seconds: float | None) -> int:
    return round(seconds * 1e9) if seconds else 0


class PodSandboxes:
    def __init__(self, daemon: Daemon, cni: CniPlugins | None = None) -> None:
        self.daemon = daemon
        self.cni = cni  # None: pods join hyperd's own network
        self.records = RecordStore(daemon.paths.state / "cri")
        self.sandboxes = {r.id: r for r in self.records.sandboxes()}
        self.containers = {r.id: r for r in self.records.containers()}
        self.copiers: dict[str, LogCopier] = {}
        daemon.network.external = self._cni_network

    # -- state --------------------------------------------------------------------

    def resume(self) -> None:
        """After a hyperd restart: forget containers removed meanwhile, copy the others' logs on."""
        for record in list(self.containers.values()):
            if record.id not in self.daemon.pods or record.sandbox_id not in self.sandboxes:
                self.records.delete(record)
                del self.containers[record.id]
                continue
            if record.log_path:
                self._copy_logs(record)

    async def close(self) -> None:
        for copier in self.copiers.values():
            await copier.stop()

    def _copy_logs(self, record: ContainerRecord) -> None:
        pod = self.daemon.pods[record.id]
        position = self.records.container_dir / f"{record.id}.log-position"
        copier = LogCopier(pod, Path(record.log_path), position)
        self.copiers[record.id] = copier
        copier.start()

    def _cni_network(self, container_id: str) -> Callable[[str], Awaitable[PodNetwork]] | None:
        """For hyperd's network manager: how the VM of a sandbox with a CNI namespace
        (its pod's infra container's) joins it; None for every other container."""
        container = self.daemon.pods.get(container_id)
        sandbox = self.sandboxes.get(container.options.pod) if container is not None else None
        if sandbox is None or not sandbox.netns:
            return None
        sandbox_id = sandbox.id

        async def pod_network(hostname: str) -> PodNetwork:
            current = self.sandboxes.get(sandbox_id)
            if current is None or not current.netns:
                raise FailedPrecondition(f"pod sandbox {sandbox_id[:12]} has no network any more")
            joined = await asyncio.to_thread(netns.join, current.netns)
            address = IPv4Interface(current.address)
            interface = GuestInterface(
                mac=joined.mac,
                address=address,
                mtu=joined.mtu,
                gateway=IPv4Address(current.gateway) if current.gateway else None,
            )
            hosts = etc_hosts(hostname, [address.ip])
            resolv = resolv_conf(current.dns_servers, current.dns_searches, current.dns_options)
            return PodNetwork((interface,), hosts, resolv, fds=[joined.tap_fd])

        return pod_network

    async def _network_up(self, record: SandboxRecord) -> SandboxRecord:
        """The pod's namespace and the CNI plugins' ADD; on failure nothing is left."""
        if self.cni is None:
            return record
        name = netns.name_for(record.id)
        path = await asyncio.to_thread(netns.create, name)
        try:
            attachment = PodAttachment(record.id, path, record.metadata, record.port_mappings)
            result = await self.cni.add(attachment)
            try:
                address = address_of(result)
            except BaseException:
                with contextlib.suppress(Exception):  # the first failure is the one to report
                    await asyncio.shield(self.cni.delete(attachment, result))
                raise
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.to_thread(netns.delete, name))
            raise
        return dataclasses.replace(
            record,
            netns=name,
            cni_result=json.dumps(result),
            address=str(address.interface),
            gateway=str(address.gateway or ""),
        )

    async def _network_down(self, record: SandboxRecord) -> SandboxRecord:
        """CNI DEL and the namespace's removal; done once, and again harmlessly."""
        if not record.netns:
            return record
        if self.cni is not None:
            attachment = PodAttachment(
                record.id, netns.path_of(record.netns), record.metadata, record.port_mappings
            )
            await self.cni.delete(attachment, json.loads(record.cni_result) if record.cni_result else None)
        await asyncio.to_thread(netns.delete, record.netns)
        record = dataclasses.replace(record, netns="", cni_result="")
        self._save(record)
        return record

    def _sandbox(self, sandbox_id: str) -> SandboxRecord:
        found = self.sandboxes.get(sandbox_id)
        if found is None:
            matches = (
                [s for key, s in self.sandboxes.items() if key.startswith(sandbox_id)] if sandbox_id else []
            )
            if len(matches) != 1:
                raise NotFound(f"no such pod sandbox: {sandbox_id}")
            found = matches[0]
        return found

    def _container(self, container_id: str) -> ContainerRecord:
        found = self.containers.get(container_id)
        if found is None:
            matches = (
                [c for key, c in self.containers.items() if key.startswith(container_id)]
                if container_id
                else []
            )
            if len(matches) != 1:
                raise NotFound(f"no such container: {container_id}")
            found = matches[0]
        return found

    def _in(self, sandbox: SandboxRecord) -> list[ContainerRecord]:
        return [c for c in self.containers.values() if c.sandbox_id == sandbox.id]

    def _save(self, record: SandboxRecord) -> None:
        self.records.save(record)
        self.sandboxes[record.id] = record

    # -- sandboxes --------------------------------------------------------------------

    async def run_pod_sandbox(self, request: api_pb2.RunPodSandboxRequest) -> api_pb2.RunPodSandboxResponse:
        if request.runtime_handler not in RUNTIME_HANDLERS:
            raise InvalidArgument(
                f"no runtime handler {request.runtime_handler!r}", hint="use the default one or `hyper`"
            )
        record = translate.sandbox_record(request, "", time.time_ns())
        for other in self.sandboxes.values():
            if other.metadata == record.metadata:
                raise AlreadyExists(
                    f"a pod sandbox named {record.metadata.name} (namespace {record.metadata.namespace}, "
                    f"uid {record.metadata.uid}, attempt {record.metadata.attempt}) exists: {other.id}",
                    hint="remove it first, or give another attempt number",
                )
        options = translate.pod_options(record, cni=self.cni is not None)
        name = translate.pod_name(record.metadata)
        pod = self.daemon.named_pods.create(
            name, options, {translate.SANDBOX_LABEL: f"{record.metadata.namespace}/{record.metadata.name}"}
        )
        record = dataclasses.replace(record, id=pod.id)
        try:
            record = await self._network_up(record)
            try:
                await asyncio.to_thread(self._save, record)
            except BaseException:
                await asyncio.shield(self._network_down(record))
                raise
        except BaseException:
            with contextlib.suppress(HyperError):
                await asyncio.shield(self.daemon.named_pods.remove(pod.id, force=True))
            raise
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=record.id)

    async def stop_pod_sandbox(
        self, request: api_pb2.StopPodSandboxRequest
    ) -> api_pb2.StopPodSandboxResponse:
        try:
            sandbox = self._sandbox(request.pod_sandbox_id)
        except NotFound:
            return api_pb2.StopPodSandboxResponse()  # already gone: nothing left to stop
        with contextlib.suppress(NotFound):  # its containers together, then its VM
            await self.daemon.named_pods.stop(sandbox.id, timeout=0)
        for container in self._in(sandbox):
            copier = self.copiers.get(container.id)
            if copier is not None:
                await copier.flush()
        sandbox = await self._network_down(sandbox)
        if sandbox.state is not SandboxState.NOT_READY:
            self._save(sandbox.moved(SandboxState.NOT_READY))
        return api_pb2.StopPodSandboxResponse()

    async def remove_pod_sandbox(
        self, request: api_pb2.RemovePodSandboxRequest
    ) -> api_pb2.RemovePodSandboxResponse:
        try:
            sandbox = self._sandbox(request.pod_sandbox_id)
        except NotFound:
            return api_pb2.RemovePodSandboxResponse()
        for container in self._in(sandbox):
            await self._remove(container)  # running ones are killed, as the CRI asks
        with contextlib.suppress(NotFound):
            await self.daemon.named_pods.remove(sandbox.id, force=True)
        await self._network_down(sandbox)
        self.records.delete(sandbox)
        self.sandboxes.pop(sandbox.id, None)
        return api_pb2.RemovePodSandboxResponse()

    def _ip(self, sandbox: SandboxRecord) -> str:
        if sandbox.address:
            return str(IPv4Interface(sandbox.address).ip)
        with contextlib.suppress(NotFound):
            infra = self.daemon.named_pods.infra(self.daemon.named_pods.find(sandbox.id))
            if infra is not None and infra.running:
                for endpoint in self.daemon.network.container_endpoints(infra.id):
                    return str(endpoint.ip)
        return ""

    def _sandbox_status(self, sandbox: SandboxRecord) -> api_pb2.PodSandboxStatus:
        return api_pb2.PodSandboxStatus(
            id=sandbox.id,
            metadata=translate.sandbox_metadata(sandbox.metadata),
            state=_SANDBOX_STATE[sandbox.state],
            created_at=sandbox.created_at,
            network=api_pb2.PodSandboxNetworkStatus(ip=self._ip(sandbox)),
            linux=api_pb2.LinuxPodSandboxStatus(
                namespaces=api_pb2.Namespace(
                    options=api_pb2.NamespaceOption(network=api_pb2.POD, pid=api_pb2.POD, ipc=api_pb2.POD)
                )
            ),
            labels=sandbox.labels,
            annotations=sandbox.annotations,
            runtime_handler=sandbox.runtime_handler,
        )

    def sandbox_status(self, sandbox: SandboxRecord) -> api_pb2.PodSandboxStatus:
        return self._sandbox_status(sandbox)

    def container_statuses(self, sandbox: SandboxRecord) -> list[api_pb2.ContainerStatus]:
        return [self._container_status(c) for c in self._in(sandbox)]

    async def pod_sandbox_status(
        self, request: api_pb2.PodSandboxStatusRequest
    ) -> api_pb2.PodSandboxStatusResponse:
        sandbox = self._sandbox(request.pod_sandbox_id)
        answer = api_pb2.PodSandboxStatusResponse(
            status=self._sandbox_status(sandbox),
            containers_statuses=[self._container_status(c) for c in self._in(sandbox)],
            timestamp=time.time_ns(),
        )
        if request.verbose:
            answer.info["info"] = json.dumps(
                {
                    "hostname": sandbox.hostname,
                    "log_directory": sandbox.log_directory,
                    "dns": {"servers": sandbox.dns_servers, "searches": sandbox.dns_searches},
                    "port_mappings": [p.__dict__ for p in sandbox.port_mappings],
                    "containers": [c.id for c in self._in(sandbox)],
                    "netns": sandbox.netns,
                }
            )
        return answer

    async def list_pod_sandbox(
        self, request: api_pb2.ListPodSandboxRequest
    ) -> api_pb2.ListPodSandboxResponse:
        wanted = request.filter if request.HasField("filter") else None
        found = []
        for sandbox in sorted(self.sandboxes.values(), key=lambda s: s.created_at):
            if wanted is not None:
                if wanted.id and not sandbox.id.startswith(wanted.id):
                    continue
                if wanted.HasField("state") and wanted.state.state != _SANDBOX_STATE[sandbox.state]:
                    continue
                if not translate.labels_match(sandbox.labels, dict(wanted.label_selector)):
                    continue
            found.append(
                api_pb2.PodSandbox(
                    id=sandbox.id,
                    metadata=translate.sandbox_metadata(sandbox.metadata),
                    state=_SANDBOX_STATE[sandbox.state],
                    created_at=sandbox.created_at,
                    labels=sandbox.labels,
                    annotations=sandbox.annotations,
                    runtime_handler=sandbox.runtime_handler,
                )
            )
        return api_pb2.ListPodSandboxResponse(items=found)

    # -- containers ---------------------------------------------------------------------

    async def create_container(
        self, request: api_pb2.CreateContainerRequest
    ) -> api_pb2.CreateContainerResponse:
        sandbox = self._sandbox(request.pod_sandbox_id)
        if sandbox.state is not SandboxState.READY:
            raise FailedPrecondition(
                f"pod sandbox {sandbox.id[:12]} is stopped", hint="run a new pod sandbox"
            )
        config = request.config
        metadata = translate.metadata(config.metadata)
        if not config.image.image:
            raise InvalidArgument("CreateContainer needs an image", hint="set config.image.image")
        create = translate.create_request(sandbox, config, config.image.image, self.daemon.settings)
        log_path = translate.log_path(sandbox, config)
        for other in self._in(sandbox):
            if other.metadata == metadata:
                raise AlreadyExists(
                    f"container {metadata.name} attempt {metadata.attempt} exists in pod sandbox "
                    f"{sandbox.id[:12]}: {other.id}",
                    hint="remove it first, or give another attempt number",
                )
        name = translate.hyperd_name(sandbox, metadata)
        if name is not None:
            create = dataclasses.replace(create, options=dataclasses.replace(create.options, name=name))
        pod = await self.daemon.create(create)
        record = ContainerRecord(
            id=pod.id,
            sandbox_id=sandbox.id,
            metadata=metadata,
            image=config.image.image,
            created_at=_ns(pod.record.created),
            labels=dict(config.labels),
            annotations=dict(config.annotations),
            log_path=log_path,
            mounts=tuple((m.container_path, m.host_path, m.readonly) for m in config.mounts),
        )
        try:
            await asyncio.to_thread(self.records.save, record)
        except BaseException:
            await self.daemon.remove(pod.id, force=True)
            raise
        self.containers[record.id] = record
        if log_path:
            self._copy_logs(record)
        return api_pb2.CreateContainerResponse(container_id=record.id)

    def _pod(self, record: ContainerRecord) -> Pod:
        pod = self.daemon.pods.get(record.id)
        if pod is None:
            raise NotFound(f"container {record.id[:12]} is gone from hyperd")
        return pod

    async def start_container(self, request: api_pb2.StartContainerRequest) -> api_pb2.StartContainerResponse:
        record = self._container(request.container_id)
        if self._sandbox(record.sandbox_id).state is not SandboxState.READY:
            raise FailedPrecondition(f"the pod sandbox of container {record.id[:12]} is stopped")
        pod = self._pod(record)
        if pod.status is not specs.ContainerState.CREATED:
            raise FailedPrecondition(
                f"container {record.id[:12]} is {pod.status.value}: a CRI container starts once",
                hint="create a new container",
            )
        await pod.start()
        return api_pb2.StartContainerResponse()

    async def _stop(self, record: ContainerRecord, timeout: float) -> None:
        pod = self.daemon.pods.get(record.id)
        if pod is not None:
            await pod.stop(timeout=timeout)
        copier = self.copiers.get(record.id)
        if copier is not None:
            await copier.flush()

    async def stop_container(self, request: api_pb2.StopContainerRequest) -> api_pb2.StopContainerResponse:
        await self._stop(self._container(request.container_id), max(request.timeout, 0))
        return api_pb2.StopContainerResponse()

    async def _remove(self, record: ContainerRecord) -> None:
        with contextlib.suppress(NotFound):
            await self.daemon.remove(record.id, force=True)
        copier = self.copiers.pop(record.id, None)
        if copier is not None:
            await copier.stop()
            copier.forget()
        self.records.delete(record)
        self.containers.pop(record.id, None)

    async def remove_container(
        self, request: api_pb2.RemoveContainerRequest
    ) -> api_pb2.RemoveContainerResponse:
        try:
            record = self._container(request.container_id)
        except NotFound:
            return api_pb2.RemoveContainerResponse()  # already removed
        await self._remove(record)
        return api_pb2.RemoveContainerResponse()

    def _state(self, record: ContainerRecord) -> api_pb2.ContainerState.ValueType:
        pod = self.daemon.pods.get(record.id)
        return translate.container_state(pod.status if pod is not None else None)

    async def list_containers(self, request: api_pb2.ListContainersRequest) -> api_pb2.ListContainersResponse:
        wanted = request.filter if request.HasField("filter") else None
        found = []
        for record in sorted(self.containers.values(), key=lambda c: c.created_at):
            state = self._state(record)
            if wanted is not None:
                if wanted.id and not record.id.startswith(wanted.id):
                    continue
                if wanted.pod_sandbox_id and not record.sandbox_id.startswith(wanted.pod_sandbox_id):
                    continue
                if wanted.HasField("state") and wanted.state.state != state:
                    continue
                if not translate.labels_match(record.labels, dict(wanted.label_selector)):
                    continue
            pod = self.daemon.pods.get(record.id)
            found.append(
                api_pb2.Container(
                    id=record.id,
                    pod_sandbox_id=record.sandbox_id,
                    metadata=translate.cri_metadata(record.metadata),
                    image=api_pb2.ImageSpec(image=record.image),
                    image_ref=pod.record.image_id if pod is not None else "",
                    image_id=pod.record.image_id if pod is not None else "",
                    state=state,
                    created_at=record.created_at,
                    labels=record.labels,
                    annotations=record.annotations,
                )
            )
        return api_pb2.ListContainersResponse(containers=found)

    def _container_status(self, record: ContainerRecord) -> api_pb2.ContainerStatus:
        pod = self.daemon.pods.get(record.id)
        status = api_pb2.ContainerStatus(
            id=record.id,
            metadata=translate.cri_metadata(record.metadata),
            state=self._state(record),
            created_at=record.created_at,
            image=api_pb2.ImageSpec(image=record.image),
            labels=record.labels,
            annotations=record.annotations,
            log_path=record.log_path,
            mounts=[
                api_pb2.Mount(container_path=target, host_path=source, readonly=readonly)
                for target, source, readonly in record.mounts
            ],
        )
        if pod is None:
            status.reason, status.message = "Unknown", "hyperd no longer has this container"
            return status
        hyperd = pod.record
        status.image_ref = status.image_id = hyperd.image_id
        status.started_at = _ns(hyperd.started_at)
        if status.state == api_pb2.CONTAINER_EXITED:
            status.finished_at = _ns(hyperd.finished_at)
            status.exit_code = hyperd.exit_code or 0
            status.reason = translate.exit_reason(status.exit_code, hyperd.oom_killed)
            status.message = hyperd.reason or ""
        return status

    async def container_status(
        self, request: api_pb2.ContainerStatusRequest
    ) -> api_pb2.ContainerStatusResponse:
        record = self._container(request.container_id)
        answer = api_pb2.ContainerStatusResponse(status=self._container_status(record))
        pod = self.daemon.pods.get(record.id)
        if request.verbose and pod is not None:
            answer.info["info"] = json.dumps({"sandbox_id": record.sandbox_id, "hyperd": pod.record.public()})
        return answer

    async def reopen_container_log(
        self, request: api_pb2.ReopenContainerLogRequest
    ) -> api_pb2.ReopenContainerLogResponse:
        record = self._container(request.container_id)
        if not self._pod(record).running:
            raise FailedPrecondition(f"container {record.id[:12]} is not running")
        # Each batch of output opens the log path anew, so the next one makes the new file.
        copier = self.copiers.get(record.id)
        if copier is not None:
            await copier.flush()
        return api_pb2.ReopenContainerLogResponse()

    async def exec_sync(self, request: api_pb2.ExecSyncRequest) -> api_pb2.ExecSyncResponse:
        """Run a command in the container to its end, with the kubelet's timeout (0: none)."""
        record = self._container(request.container_id)
        pod = self._pod(record)
        if not request.cmd:
            raise InvalidArgument("ExecSync needs a command")
        process = translate.exec_process(pod.record.process or {}, list(request.cmd))
        session = self.daemon.exec_create(pod, process)
        output = {FrameKind.STDOUT: bytearray(), FrameKind.STDERR: bytearray()}

        async def run() -> int:
            try:
                await session.start()
            except ContainerExit as exc:
                output[FrameKind.STDERR] += exc.message.encode()
                return exc.status
            async for kind, data in session.output():
                kept = output.get(FrameKind(kind))
                if kept is not None and len(kept) < EXEC_OUTPUT_LIMIT:
                    kept += data[: EXEC_OUTPUT_LIMIT - len(kept)]
            return session.exit_code if session.exit_code is not None else 0

        try:
            if request.timeout > 0:
                try:
                    exit_code = await asyncio.wait_for(run(), request.timeout)
                except TimeoutError:
                    if session.stream is not None:
                        with contextlib.suppress(HyperError):
                            await pod.signal_process(session.stream, int(signal.SIGKILL))
                    raise DeadlineExceeded(
                        f"command {list(request.cmd)} timed out after {request.timeout} seconds"
                    ) from None
            else:
                exit_code = await run()
        finally:
            self.daemon.execs.pop(session.id, None)
        return api_pb2.ExecSyncResponse(
            stdout=bytes(output[FrameKind.STDOUT]),
            stderr=bytes(output[FrameKind.STDERR]),
            exit_code=exit_code,
        )
