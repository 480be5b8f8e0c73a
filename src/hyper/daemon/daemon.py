"""The daemon's state in memory: its pods and execs, found again from SQLite at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any

from hyper import trace
from hyper.daemon import members
from hyper.daemon.events import EventBus
from hyper.daemon.execs import ExecSession
from hyper.daemon.members import Member
from hyper.daemon.named_pods import NamedPods
from hyper.daemon.pods import Pod
from hyper.daemon.policy import RestartPolicy
from hyper.daemon.requests import CreateRequest, run_options_from
from hyper.daemon.state import StateStore, valid_name
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument, NotFound
from hyper.image import ImageStore
from hyper.network.manager import NetworkManager
from hyper.network.request import NetworkConfig, request_for
from hyper.paths import HyperPaths
from hyper.runtime import resources
from hyper.runtime import spec as specs
from hyper.runtime.confinement import refuse_unhonoured
from hyper.runtime.pool import PoolConfig, VmPool
from hyper.runtime.run import ContainerRun, prepare_vm_inputs
from hyper.runtime.settings import Settings
from hyper.storage import mounts as storage_mounts
from hyper.storage.volumes import mount_sized_volumes
from hyper.vm import confine, orphans

ADOPTED_STATES = (specs.ContainerState.RUNNING.value, specs.ContainerState.PAUSED.value)


class Daemon:
    def __init__(self, paths: HyperPaths, settings: Settings, pool: PoolConfig | None = None) -> None:
        self.paths = paths
        self.settings = settings
        self.state = StateStore(paths.state / "hyperd.db")
        self.events = EventBus()
        self.pods: dict[str, Pod] = {}
        self.network = NetworkManager(
            paths.state / "hyperd.db",
            NetworkConfig.from_env(),
            container_name=self._container_name,
            runtime=paths.runtime,
            container_owner=self._container_owner,
        )
        self.execs: dict[str, ExecSession] = {}
        self.pool = VmPool(paths, settings, pool or PoolConfig())
        self.named_pods = NamedPods(self)
        self._background: set[asyncio.Task[None]] = set()
        # Set when hyperd begins to stop: requests that wait (wait, events) end
        # rather than hold the stop up.
        self.stopping = asyncio.Event()

    def _container_name(self, container_id: str) -> str | None:
        pod = self.pods.get(container_id)
        return pod.record.name if pod is not None else None

    def _container_owner(self, container_id: str) -> str:
        pod = self.pods.get(container_id)
        return pod.record.owner if pod is not None else ""

    def _pod(self, record: Any) -> Pod:
        options = run_options_from(record.options)
        if members.is_member(options):
            pod: Pod = Member(self.paths, self.settings, self.state, record, self.events)
            self._wire(pod)
        else:
            pod = Pod(self.paths, self.settings, self.state, record, self.events)
            pod.network = self.network
            pod.pool = self.pool
            with contextlib.suppress(HyperError):  # checked at create; a bad old record gets no network
                self.network.remember(record.id, request_for(pod.options))
        pod.on_auto_remove = self._auto_remove
        self.pods[record.id] = pod
        return pod

    def _wire(self, pod: Pod) -> None:
        if isinstance(pod, Member):
            pod.host_for = self._host_for
            pod.find = self.find

    async def _host_for(self, member: Member) -> Pod:
        """The running container whose VM `member` joins: its pod's infra
        (started if need be), or the container its --network names."""
        if member.options.pod:
            return await self.named_pods.ensure_running(member.options.pod, member.options.image)
        try:
            host = self.find(member.host_id)
        except NotFound:
            raise FailedPrecondition(
                f"cannot start container {member.record.name}: the container whose network it"
                f" joins ({member.host_id[:12]}) is gone",
                hint="remove this container and create it again with another --network",
            ) from None
        if host.status is not specs.ContainerState.RUNNING:
            raise FailedPrecondition(
                f"cannot join container {host.record.name}: it is not running", hint="start it first"
            )
        return host

    def _joining(self, options: specs.RunOptions) -> specs.RunOptions:
        """A container joining a pod or another's network, with what it joins
        resolved to IDs (the pod, or the container that owns the VM); its own
        network options refused (hyper.daemon.members)."""
        host_ref = members.host_reference(options)
        if options.pod and options.owner:
            # Named pods are the admin's (`hyper pod`): a tenant's container joins none.
            raise NotFound(f"no such pod: {options.pod}")
        if options.pod:
            if host_ref is not None:
                raise InvalidArgument("conflicting options: --pod and --network container:")
            record = self.state.resolve_pod(options.pod)
            members.check_member(options, f"pod {record.name}")
            return dataclasses.replace(options, pod=record.id, network="")
        assert host_ref is not None
        try:
            host = self.find(host_ref, options.owner or None)  # a tenant joins only its own containers' VMs
        except NotFound:
            # Not a 404: the docker CLI answers a 404 from create by pulling the image.
            raise InvalidArgument(
                f"no such container: {host_ref}",
                hint="--network container: names a running container; `hyper ps -a` lists them",
            ) from None
        members.check_member(options, host.record.name)
        if host.options.pod:  # a pod's container or infra: the pod
            return dataclasses.replace(options, pod=host.options.pod, network="")
        if isinstance(host, Member):  # joined to another: that one's VM
            return dataclasses.replace(options, network=host.options.network)
        return dataclasses.replace(options, network=members.CONTAINER_MODE + host.id)

    async def adopt_all(self) -> None:
        """Every container of the state: running ones are adopted, the others listed,
        and those whose restart policy says so started again."""
        await asyncio.to_thread(confine.sweep)  # cgroups and uid leases of VMs that are gone
        # Sized volumes' file systems (hyper.storage.volume_disk), after a reboot or an unmount.
        for failure in await asyncio.to_thread(
            mount_sized_volumes, self.paths.volumes, self.paths.containers
        ):
            print(f"hyperd: {failure}", file=sys.stderr, flush=True)
        await self.network.ensure_default()
        adoptions, starts, joined = [], [], []
        for record in self.state.all():
            pod = self._pod(record)
            if record.state in ADOPTED_STATES and isinstance(pod, Member):
                joined.append(pod)  # with their hosts, whose agent they share
            elif record.state in ADOPTED_STATES:
                adoptions.append(pod.adopt())
            else:
                if pod.log is not None:
                    pod.log.closed = True
                restarting = record.state == specs.ContainerState.RESTARTING.value
                if restarting:  # the last hyperd stopped during the back-off: finish its restart
                    pod.record = self.state.update(record, state=specs.ContainerState.EXITED.value)
                policy = RestartPolicy.from_document(record.restart_policy)
                if restarting or (
                    record.state != specs.ContainerState.CREATED.value
                    and policy.start_with_daemon(manually_stopped=record.manually_stopped)
                ):
                    starts.append(pod)
        for member in joined:
            host = self.pods.get(str((member.record.vm or {}).get("host") or ""))
            if host is not None:
                host.adopting.append(member)
        await asyncio.gather(*adoptions)
        for member in joined:
            await member.adopt()
        # QEMUs a killed hyperd started but had not recorded yet: nobody's, so gone.
        # A VM taken from the pool keeps its run directory's own name.
        owned = [
            Path(str((pod.record.vm or {}).get("run_dir") or pod.id[:12])).name
            for pod in self.pods.values()
            if pod.running
        ]
        reaped = await asyncio.to_thread(orphans.reap_orphans, self.paths.runtime, owned)
        if reaped:
            print(f"hyperd: stopped {len(reaped)} VMs an earlier hyperd left unrecorded", file=sys.stderr)
        await asyncio.to_thread(confine.sweep)  # and their cgroups and uid leases
        # Addresses and ports of pods that stopped meanwhile are freed; the kernel made to match.
        await self.network.recover(pod.id for pod in self.pods.values() if pod.running)
        for pod in starts:
            self._in_background(self._start_quietly(pod))
        if self.pool.enabled:
            self.pool.start()
            self._in_background(self._warm_pool())

    async def _warm_pool(self) -> None:
        """The default size's shape filled at start: the first run finds a ready VM.
        Other shapes fill after their first run."""
        options = specs.RunOptions(
            image="", memory_mib=self.settings.default_memory_mib, cpus=self.settings.default_cpus
        )
        run = ContainerRun(options, self.paths, self.settings, detached=True)
        try:
            inputs = await prepare_vm_inputs(self.paths, self.settings, None)
        except HyperError as exc:
            print(f"hyperd: the pool stays empty: {exc}", file=sys.stderr, flush=True)
            return
        self.pool.fill(run.vm_shape(inputs))

    def _in_background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _start_quietly(self, pod: Pod) -> None:
        with contextlib.suppress(HyperError):
            await pod.start()

    async def _auto_remove(self, pod: Pod) -> None:
        with contextlib.suppress(HyperError):
            await self.remove(pod.id, force=True, volumes=True)  # --rm takes anonymous volumes too

    async def create(self, request: CreateRequest) -> Pod:
        trace.mark("create received")  # the container has no ID yet
        if request.options.name is not None:
            name = valid_name(request.options.name)
            request = dataclasses.replace(request, options=dataclasses.replace(request.options, name=name))
        refuse_unhonoured(request.options)
        specs.container_resources(request.options, os.cpu_count() or 1)
        if request.auto_remove and request.restart.name.value != "no":
            raise InvalidArgument("conflicting options: a restart policy and automatic removal (--rm)")
        if request.options.volumes_from:
            owner = request.options.owner or None
            mounts = self.with_volumes_from(request.options.mounts, request.options.volumes_from, owner)
            request = dataclasses.replace(
                request, options=dataclasses.replace(request.options, mounts=mounts)
            )
        images = ImageStore(self.paths.scoped(request.options.owner).images)  # a tenant's own store
        image = await asyncio.to_thread(images.get, request.options.image)
        # The image's EXPOSE joins the container's (as Docker merges them), so -P
        # publishes the same ports after a hyperd restart.
        exposed = tuple(dict.fromkeys((*request.options.expose, *image.config.exposed_ports)))
        request = dataclasses.replace(request, options=dataclasses.replace(request.options, expose=exposed))
        if members.is_member(request.options):
            options = self._joining(request.options)
            pod = await Member.create(
                self.paths,
                self.settings,
                self.state,
                self.events,
                dataclasses.replace(request, options=options),
            )
            self._wire(pod)
            pod.on_auto_remove = self._auto_remove
            self.pods[pod.id] = pod
            return pod
        network_request = request_for(request.options)
        if request.options.owner:
            await self.network.ensure_default(request.options.owner)  # a tenant's own `bridge`
        self.network.check_request(network_request)  # bad network options create nothing
        pod = await Pod.create(self.paths, self.settings, self.state, self.events, request)
        pod.on_auto_remove = self._auto_remove
        pod.network = self.network
        pod.pool = self.pool
        try:
            self.network.configure(pod.id, network_request)
        except BaseException:
            await pod.remove(force=True)
            raise
        self.pods[pod.id] = pod
        trace.mark("container created", pod.id)
        return pod

    async def run(self, request: CreateRequest) -> Pod:
        """Create and start; a container that cannot start is not kept."""
        pod = await self.create(request)
        try:
            await pod.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.remove(pod.id, force=True)
            raise
        return pod

    def find(self, ref: str, owner: str | None = None) -> Pod:
        """A container by ID, prefix or name, among `owner`'s (a tenant's; None: all)."""
        record = self.state.resolve(ref, owner)
        pod = self.pods.get(record.id)
        if pod is None:
            raise NotFound(f"no such container: {ref}")
        return pod

    def with_volumes_from(
        self, mounts: tuple[str, ...], sources: tuple[str, ...], owner: str | None = None
    ) -> tuple[str, ...]:
        """`mounts` with the volumes and bind mounts of the containers `sources`
        names (--volumes-from), taken once, at create, as Docker does; only
        `owner`'s containers (a tenant's) are found."""
        inherited: list[storage_mounts.Mount] = []
        for text in sources:
            ref, read_only = storage_mounts.parse_volumes_from(text)
            try:
                source = self.find(ref, owner)
            except NotFound:
                # Not a 404: the docker CLI answers a 404 from create by pulling the image.
                raise InvalidArgument(
                    f"no such container for --volumes-from: {ref}", hint="`hyper ps -a` lists them"
                ) from None
            inherited += storage_mounts.inherited_mounts(source.options.mounts, read_only)
        own = [storage_mounts.parse_mount(text) for text in mounts]
        return tuple(m.canonical() for m in storage_mounts.merge_mounts(own, inherited))

    def exec_create(self, pod: Pod, process: specs.ProcessSpec) -> ExecSession:
        pod.running_agent()
        session = ExecSession(pod, process)
        self.execs[session.id] = session
        return session

    def find_exec(self, exec_id: str, owner: str | None = None) -> ExecSession:
        """An exec by ID or prefix, among those in `owner`'s containers (None: all)."""
        execs = {key: s for key, s in self.execs.items() if owner is None or s.pod.record.owner == owner}
        session = execs.get(exec_id)
        if session is None:
            matches = [s for key, s in execs.items() if key.startswith(exec_id)] if exec_id else []
            if len(matches) != 1:
                raise NotFound(f"no such exec instance: {exec_id}")
            session = matches[0]
        return session

    async def remove(self, ref: str, *, force: bool, volumes: bool = False) -> None:
        pod = self.find(ref)
        await pod.remove(force=force, volumes=volumes)
        self.pods.pop(pod.id, None)
        for key in [key for key, session in self.execs.items() if session.pod is pod]:
            del self.execs[key]

    async def shutdown(self) -> None:
        """Let go of every pod; their VMs run on until the next hyperd adopts them."""
        self.stopping.set()
        for task in list(self._background):
            task.cancel()
        await self.pool.close()  # ready VMs are nobody's yet: they go with hyperd
        for pod in self.pods.values():
            with contextlib.suppress(Exception):
                await pod.release()
        await self.network.shutdown()
        self.state.close()


BODY_KEYS = frozenset(
    {
        "image", "command", "entrypoint", "env", "workdir", "user", "memory_mib", "cpus", "hostname",
        "name", "labels", "tty", "interactive", "stdin_once", "restart", "remove", "start", "stop_signal",
        "stop_timeout", "health_test", "health_interval", "health_timeout", "health_start_period",
        "health_retries", "cap_add", "cap_drop", "privileged", "security_opt", "ulimits", "shm_size",
        "init", "group_add", "sysctls", "mounts", "read_only", "volumes_from", "storage_opt", "network",
        "network_aliases", "ip",
        "publish", "publish_all", "expose", "dns", "dns_search", "dns_options", "extra_hosts", "log_opts",
        "nano_cpus", "cpuset_cpus", "pids_limit", "memory_swap", "pod", "console_size",
    }
)  # fmt: skip


def create_request(body: dict[str, Any], settings: Settings) -> CreateRequest:
    """The POST /v1/containers body, type-checked field by field; an unknown field
    is refused, not ignored."""
    unknown = sorted(set(body) - BODY_KEYS)
    if unknown:
        raise InvalidArgument(
            f"unknown field {unknown[0]!r} in the container request", hint="see docs/hyperd-api.md"
        )
    labels = body.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("labels must map names to strings")
    restart = body.get("restart") or "no"
    if not isinstance(restart, str):
        raise InvalidArgument("'restart' must be a string such as on-failure:3")
    return CreateRequest(
        options=run_options(body, settings),
        labels=labels,
        restart=RestartPolicy.parse(restart),
        auto_remove=bool(body.get("remove")),
        stdin_once=bool(body.get("stdin_once")),
        console_size=_console_size(body.get("console_size")),
    )


def _console_size(value: Any) -> tuple[int, int] | None:
    """A TTY's first size, [rows, columns] (a foreground `hyper run -t` sends its terminal's)."""
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < 65536 for n in value)
    ):
        raise InvalidArgument("'console_size' must be [rows, columns]")
    return value[0], value[1]


def run_options(body: dict[str, Any], settings: Settings) -> specs.RunOptions:
    """The POST /v1/containers body as RunOptions, type-checked field by field; the
    VM's size, when not given, is the configuration's (`settings`)."""

    def text(key: str, *, required: bool = False) -> str | None:
        value = body.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or (required and not value):
            raise InvalidArgument(f"{key!r} must be a string")
        return value

    def strings(key: str) -> tuple[str, ...]:
        value = body.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"{key!r} must be a list of strings")
        return tuple(value)

    def number(key: str, default: int, minimum: int = 1) -> int:
        value = body.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InvalidArgument(f"{key!r} must be an integer of at least {minimum}")
        return value

    def seconds(key: str) -> float:
        value = body.get(key, 0)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise InvalidArgument(f"{key!r} must be a number of seconds")
        return float(value)

    memory = number("memory_mib", settings.default_memory_mib)
    joins = bool(body.get("pod")) or str(body.get("network") or "").startswith("container:")
    minimum = resources.MIN_CONTAINER_MEMORY_MIB if joins else specs.MIN_MEMORY_MIB
    if memory < minimum:
        raise InvalidArgument(f"memory_mib must be at least {minimum}")
    stop_timeout = body.get("stop_timeout")
    storage_opt = strings("storage_opt")
    storage_mounts.storage_size(storage_opt)  # checked before anything is made
    return specs.RunOptions(
        image=text("image", required=True) or "",
        command=strings("command"),
        entrypoint=text("entrypoint"),
        env=strings("env"),
        workdir=text("workdir"),
        user=text("user"),
        memory_mib=memory,
        cpus=number("cpus", settings.default_cpus),
        hostname=text("hostname"),
        name=text("name"),
        tty=bool(body.get("tty")),
        interactive=bool(body.get("interactive")),
        stop_signal=text("stop_signal"),
        stop_timeout=None if stop_timeout is None else number("stop_timeout", 10, minimum=-1),
        health_test=strings("health_test"),
        health_interval=seconds("health_interval"),
        health_timeout=seconds("health_timeout"),
        health_start_period=seconds("health_start_period"),
        health_retries=number("health_retries", 0, minimum=0),
        cap_add=strings("cap_add"),
        cap_drop=strings("cap_drop"),
        privileged=bool(body.get("privileged")),
        security_opt=strings("security_opt"),
        ulimits=strings("ulimits"),
        group_add=strings("group_add"),
        sysctls=strings("sysctls"),
        shm_size=number("shm_size", 0, minimum=0),
        init=bool(body.get("init")),
        mounts=container_mounts(strings("mounts")),
        read_only=bool(body.get("read_only")),
        volumes_from=storage_mounts.check_volumes_from(strings("volumes_from")),
        storage_opt=storage_opt,
        network=text("network") or "",
        network_aliases=strings("network_aliases"),
        ip=text("ip"),
        publish=strings("publish"),
        publish_all=bool(body.get("publish_all")),
        expose=strings("expose"),
        dns=strings("dns"),
        dns_search=strings("dns_search"),
        dns_options=strings("dns_options"),
        extra_hosts=strings("extra_hosts"),
        log_opts=strings("log_opts"),
        nano_cpus=number("nano_cpus", 0, minimum=0),
        cpuset_cpus=text("cpuset_cpus") or "",
        pids_limit=number("pids_limit", 0, minimum=-1),
        memory_swap=number("memory_swap", 0, minimum=-1),
        pod=text("pod") or "",
    )


def container_mounts(texts: tuple[str, ...]) -> tuple[str, ...]:
    """The API's mounts (Docker's --mount form), checked and in canonical form."""
    return tuple(
        m.canonical() for m in storage_mounts.check_unique(storage_mounts.parse_mount(t) for t in texts)
    )
