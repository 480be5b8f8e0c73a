"""hyperd's pods: one VM running one container, supervised from creation to removal.

A pod is created without a VM (`create`), and each `start` boots one (from a
template when it can) on the container's own writable disk, so a stopped
container starts again with its files. While it runs the pod writes the
container's output to its log, acknowledging it to the guest only once it is
on disk, records the exit status, powers the VM off, and applies the
container's restart policy.

The VM's QEMU is detached, so when hyperd stops or crashes the pod keeps
running; the next hyperd adopts it (`adopt`): it reconnects QMP and the agent
channel and resumes the agent's stream after the last logged offset, so the
output written meanwhile reaches the log, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from hyper import trace
from hyper.agent.host import AgentClient, AgentConnectionLost, ProcessChannel
from hyper.agent.protocol import FrameKind
from hyper.daemon import health
from hyper.daemon.events import Event, EventBus, network_event, volume_event
from hyper.daemon.logs import LogFile, LogLimits, log_limits
from hyper.daemon.pod_requests import SHUTDOWN_SECONDS, PodRequests
from hyper.daemon.policy import RestartPolicy, next_delay
from hyper.daemon.records import new_record, vm_document, vm_spec_from
from hyper.daemon.requests import CreateRequest, run_options_from
from hyper.daemon.state import ContainerRecord, StateStore
from hyper.daemon.vm_disks import VmDisks
from hyper.errors import FailedPrecondition, HyperError
from hyper.image import ImageStore
from hyper.network.manager import NetworkManager
from hyper.paths import HyperPaths
from hyper.runtime import spec as specs
from hyper.runtime.pool import VmPool
from hyper.runtime.run import MAIN_PROCESS, ContainerExit, ContainerRun, Launched
from hyper.runtime.settings import Settings
from hyper.storage import plan as storage_plan
from hyper.storage.mounts import MountType
from hyper.storage.share import ProxyShare
from hyper.storage.volumes import VolumeStore
from hyper.vm.driver import VmState
from hyper.vm.qemu import QemuDriver, VmStartError

if TYPE_CHECKING:
    from hyper.daemon.members import Member

SYNC_BYTES = 256 * 1024  # output written before it is made durable and acknowledged
SYNC_SECONDS = 0.2
EXIT_VM_DIED = 137
CHANNEL_LOSS_GRACE_SECONDS = 5.0  # a VM powering off closes its channel just before it exits
OOM_REASON = "OOMKilled"  # Kubernetes' reason; Docker's State.OOMKilled

State = specs.ContainerState


class Pod(PodRequests):
    def __init__(
        self,
        paths: HyperPaths,
        settings: Settings,
        state: StateStore,
        record: ContainerRecord,
        events: EventBus,
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.state = state
        self.record = record
        self.events = events
        self.dir = paths.containers / record.id
        self.log = LogFile(self.dir / "log.jsonl", self._log_limits()) if self.dir.exists() else None
        self.vm: QemuDriver | None = None
        self.agent: AgentClient | None = None
        self.on_auto_remove: Callable[[Pod], Awaitable[None]] | None = None
        self.network: NetworkManager | None = None  # hyperd's; each VM run attaches to it
        self.pool: VmPool | None = None  # hyperd's ready VMs, which a start may take one of
        self.exited = asyncio.Event()  # set while no VM runs the container
        if not self.running:
            self.exited.set()
        self.removed = asyncio.Event()
        self._changed = asyncio.Condition()
        self._exits = 0  # how many times the container has exited, for `wait next-exit`
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # one start, stop or finish at a time
        self._restart_task: asyncio.Task[None] | None = None
        self._restart_delay: float | None = None
        self.health_checks = health.HealthChecks(self, self._save_health, self._publish)
        self._unsynced = 0
        self._generation = 0  # one per VM run: late news of an earlier run is ignored
        self._removing = False
        self._main_channel: ProcessChannel | None = None
        self._next_stream = 2 + secrets.randbelow(1 << 30)  # a stream an earlier hyperd never used
        # Containers running in this container's VM (--network container:, pods;
        # hyper.daemon.members), and the serials its own layers have in the guest.
        self.members: set[Pod] = set()
        self.layer_serials: dict[str, str] = {}
        self.adopting: list[Member] = []  # members an adoption takes back
        self._skip_until: int | None = None  # the agent stream's offset this log holds up to
        self.vm_disks = VmDisks()  # the members' disks hot-added to this VM

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def status(self) -> specs.ContainerState:
        return State(self.record.state)

    @property
    def exit_count(self) -> int:
        """How many times the container has exited: a run ends when this moves."""
        return self._exits

    @property
    def running(self) -> bool:
        return self.status in (State.RUNNING, State.PAUSED)

    @property
    def options(self) -> specs.RunOptions:
        return run_options_from(self.record.options)

    @property
    def restart_policy(self) -> RestartPolicy:
        return RestartPolicy.from_document(self.record.restart_policy)

    @property
    def main_stream(self) -> int:
        """The agent stream of the container's main process."""
        return MAIN_PROCESS

    def _log_limits(self) -> LogLimits:
        return log_limits(self.options.log_opts)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _publish(self, action: str, **attributes: str) -> None:
        attributes = {"name": self.record.name, "image": self.record.image, **attributes}
        self.events.publish(Event("container", action, self.id, attributes, owner=self.record.owner))

    def _publish_volumes(self, action: str, names: list[str] | None = None) -> None:
        """Docker's volume events of this container: `names` made or removed, or each of
        its volumes mounted (at start) or unmounted (when it stops)."""
        owner = self.record.owner
        if names is not None:
            for name in names:
                self.events.publish(volume_event(action, name, owner))
            return
        for mount in storage_plan.parse_canonical(self.options.mounts):
            if mount.type is MountType.VOLUME and mount.source:
                extra = {
                    "destination": mount.target,
                    "propagation": "",
                    "read/write": str(not mount.read_only),
                }
                attributes = {"container": self.id, **(extra if action == "mount" else {})}
                self.events.publish(volume_event(action, mount.source, owner, **attributes))

    def _publish_networks(self, action: str) -> None:
        """Docker's network `connect` at a container's start and `disconnect` when it stops,
        for each network it is on (each event its network's owner's)."""
        if self.network is None:
            return
        for network, _ in self.network.attachments(self.id):
            event = network_event(action, network.id, network.name, network.owner, container=self.id)
            self.events.publish(event)

    def _move(self, new: specs.ContainerState, **changes: Any) -> None:
        if new is not self.status and new not in specs.CONTAINER_TRANSITIONS[self.status]:
            raise FailedPrecondition(
                f"container {self.record.name} cannot go from {self.status.value} to {new.value}"
            )
        self.record = self.state.update(self.record, state=new.value, **changes)

    def _save_health(self, state: dict[str, Any] | None) -> None:
        self.record = self.state.update(self.record, health=state)

    def new_stream(self) -> int:
        stream, self._next_stream = self._next_stream, self._next_stream + 1
        return stream

    # -- creating and starting ----------------------------------------------------
    @classmethod
    async def create(
        cls,
        paths: HyperPaths,
        settings: Settings,
        state: StateStore,
        events: EventBus,
        request: CreateRequest,
    ) -> Pod:
        """Record a container and make its directory; no VM runs until `start`."""
        images = ImageStore(paths.scoped(request.options.owner).images)  # a tenant's own store
        image = await asyncio.to_thread(images.get, request.options.image)
        container_id = secrets.token_hex(32)
        directory = paths.containers / container_id
        directory.mkdir(parents=True, exist_ok=True)
        try:
            # Volumes named (anonymous ones too) and made once, before any VM boots.
            mounts, made = await asyncio.to_thread(
                resolve_container_mounts,
                paths,
                request.options.mounts,
                image.config.volumes,
                container_id,
                request.options.owner,
            )
            options = dataclasses.replace(request.options, mounts=mounts)
            record = new_record(
                dataclasses.replace(request, options=options), image, container_id, time.time()
            )
            state.insert(record)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            await asyncio.to_thread(release_container_volumes, paths, container_id, anonymous=True)
            raise
        pod = cls(paths, settings, state, record, events)
        pod.log = LogFile(pod.dir / "log.jsonl", pod._log_limits())
        pod._publish_volumes("create", made)
        pod._publish("create")
        return pod

    async def start(self) -> bool:
        """Boot the container's VM and start its process; False if it already runs."""
        trace.mark("start received", self.id)
        async with self._lock:
            if self.running:
                return False
            if self.status is State.RESTARTING and self._restart_task is not None:
                self._restart_task.cancel()
            await self._launch(manual=True)
            return True

    async def _launch(self, *, manual: bool) -> None:
        assert self.log is not None
        options = self.options
        run = ContainerRun(options, self.paths, self.settings, detached=True, container_id=self.id)
        # The pool's VMs are clones of the admin's template: a tenant's never comes from it
        # (clones share the guest's KASLR layout and boot ID; docs/tenants.md).
        run.pool = self.pool if not options.owner else None
        try:
            launched = await self._run_vm(run)
        except ContainerExit as exc:
            # Docker's answer to a command that cannot start: the container exits 126/127.
            self._move(State.EXITED, exit_code=exc.status, finished_at=time.time(), reason=exc.message)
            self._publish("die", exitCode=str(exc.status))
            async with self._changed:  # waiters and attachments see this run end
                self._exits += 1
                self._changed.notify_all()
            raise
        position = self.log.size()
        self.log.reopen()
        changes: dict[str, Any] = {"manually_stopped": False} if manual else {}
        self._move(
            State.RUNNING,
            started_at=time.time(),
            finished_at=None,
            exit_code=None,
            reason=None,
            oom_killed=False,
            health=None,  # a new run's health starts at `starting`
            qemu_pid=launched.vm.pid,
            vm=self._vm_record(launched, position),
            **changes,
        )
        self.exited.clear()
        self._supervise(launched.vm, launched.agent, launched.channel)
        if options.tty and self.record.console_size:
            rows, cols = self.record.console_size  # Docker's ConsoleSize: the TTY's first size
            with contextlib.suppress(HyperError):
                await self.resize(rows, cols)
        self._publish_volumes("mount")
        self._publish_networks("connect")
        self._publish("start")

    async def _run_vm(self, run: ContainerRun) -> Launched:
        """Boot the container's VM (on its network) and start its main process."""
        if self.network is not None:
            run.network = await self.network.attach(self.id, run.options.hostname or self.id[:12])
        try:
            prepared = await run.prepare()
            launched = await run.launch(prepared)
        except BaseException:
            if self.network is not None:
                await self.network.release(self.id)
            raise
        finally:
            if run.network is not None:
                run.network.close()  # QEMU holds its own copies of the taps now
        serials = run.layer_serials(len(prepared.layers))
        self.layer_serials = {
            str(layer.path): serial for layer, serial in zip(prepared.layers, serials, strict=True)
        }
        self.vm_disks = VmDisks()
        return launched

    def _vm_record(self, launched: Launched, position: int) -> dict[str, Any]:
        """What a later hyperd needs to adopt this run."""
        doc = vm_document(launched.vm.spec)
        return doc | {"stream_start": launched.agent.received_offset, "log_position": position}

    def _supervise(self, vm: QemuDriver, agent: AgentClient, channel: ProcessChannel) -> None:
        self._generation += 1
        self.vm, self.agent, self._main_channel = vm, agent, channel
        self._spawn(self._pump(channel, self._generation))
        self._spawn(self._watch_vm(vm, self._generation))
        self.health_checks.start(self.record, self._spawn)

    async def adopt(self) -> None:
        """Take over a pod an earlier hyperd started, continuing its log where it stopped."""
        doc = self.record.vm or {}
        if self.record.qemu_pid is None or not doc or self.log is None:
            await self._finish(EXIT_VM_DIED, "hyperd lost track of this container's VM")
            return
        spec = vm_spec_from(doc)
        try:
            share = ProxyShare.adopt(spec.run_dir) if spec.file_share else None
            vm = await QemuDriver.adopt(spec, self.record.qemu_pid, self.settings.qemu_binary, share=share)
        except VmStartError as exc:
            gone = "the VM stopped while hyperd was not running"
            await self._not_adopted(gone, f"not adopted: {exc.message}")
            return
        resume = self.log.last_offset(since=int(doc.get("log_position") or 0))
        if resume is None:
            resume = doc.get("stream_start")
        try:
            if vm.state is VmState.PAUSED:
                await vm.resume()  # the agent must answer the hello; paused again below
                paused = True
            else:
                paused = False
            agent = await AgentClient.reconnect(spec.agent_socket, 10, auto_ack=False)
            channel = agent.open_process(MAIN_PROCESS, keep=True)
            self._supervise(vm, agent, channel)  # reading starts before the hello: the replay comes first
            # The containers that joined this VM take their streams back too; the
            # replay starts where the one furthest behind stopped (each skips what
            # its log has).
            self._skip_until = self.log.last_offset(since=int(doc.get("log_position") or 0))
            points = [resume, *(member.resume_point() for member in self.adopting)]
            for member in self.adopting:
                member.rejoin(self, agent)
            known = [p for p in points if p is not None]
            await agent.hello(30, resume=min(known) if known else None)
            if paused:
                await vm.pause()
                self._move(State.PAUSED)
        except (HyperError, TimeoutError) as exc:
            self.vm = vm
            message = exc.message if isinstance(exc, HyperError) else "timed out"
            await self._not_adopted(f"the VM's agent could not be reached again: {message}")

    async def _not_adopted(self, reason: str, detail: str | None = None) -> None:
        """A VM an earlier hyperd left that this one cannot take over: said on
        hyperd's log (with `detail` when there is more to say) and recorded."""
        print(f"hyperd: container {self.record.name}: {detail or reason}", file=sys.stderr, flush=True)
        await self._finish(EXIT_VM_DIED, reason)

    # -- running ----------------------------------------------------------------
    async def _pump(self, channel: ProcessChannel, generation: int) -> None:
        assert self.log is not None and self.agent is not None
        last = None
        while True:
            try:
                if self._unsynced:
                    item = await asyncio.wait_for(channel.output.get(), SYNC_SECONDS)
                else:
                    item = await channel.output.get()
            except TimeoutError:
                self._sync(last, channel)
                continue
            if item is None:
                break
            kind, data, offset = item
            if offset is not None and self._skip_until is not None and offset <= self._skip_until:
                continue  # replayed for another container of the VM: already in this log
            self.log.append("stdout" if kind is FrameKind.STDOUT else "stderr", data, offset)
            last = offset if offset is not None else last
            self._unsynced += len(data)
            if self._unsynced >= SYNC_BYTES:
                self._sync(last, channel)
            await self.log.notify()
        self._sync(last, channel)
        try:
            status = await channel.exit_status
        except AgentConnectionLost as lost:
            # The VM died (_watch_vm records it), or the guest broke its channel
            # (a forged or malformed frame): then the pod is failed, not left "Up".
            vm = self.vm
            if vm is not None and await vm.wait(CHANNEL_LOSS_GRACE_SECONDS) is None:
                self._spawn(
                    self._finish(
                        EXIT_VM_DIED, f"the guest broke its agent channel: {lost.message}", generation
                    )
                )
            return
        trace.mark("process exited", self.id)
        self._spawn(self._finish(status, None, generation, oom_killed=channel.oom_killed))

    def _sync(self, offset: int | None, channel: ProcessChannel) -> None:
        """Make the log durable, then let the guest forget what it holds."""
        assert self.log is not None
        self.log.sync()
        self._unsynced = 0
        if self.agent is None:
            return
        if channel.output.empty():
            self.agent.kept(channel.stream, None)
        elif offset is not None:
            self.agent.kept(channel.stream, offset)
        if channel.output.empty() and self.agent.received_offset is not None:
            # Everything read so far is on disk or not the log's (execs, copies).
            self.agent.acknowledge(self.agent.received_offset)
        elif offset is not None:
            self.agent.acknowledge(offset)

    def consumed(self) -> None:
        """A reader of another stream (exec, copy) took its output: acknowledge
        it if the log holds everything before it, so the guest's buffer drains."""
        channel = self._main_channel
        if self.agent is None or self.agent.received_offset is None or self._unsynced:
            return
        if channel is None or channel.output.empty() or channel.exit_status.done():
            self.agent.acknowledge(self.agent.received_offset)

    async def _watch_vm(self, vm: QemuDriver, generation: int) -> None:
        await vm.wait()
        await self._finish(EXIT_VM_DIED, "the VM's QEMU process exited unexpectedly", generation)

    async def _finish(
        self, status: int, reason: str | None, generation: int | None = None, *, oom_killed: bool = False
    ) -> None:
        async with self._lock:
            if self.exited.is_set() or generation not in (None, self._generation):
                return
            await self._power_off(status, reason, oom_killed=oom_killed)
        self._publish_networks("disconnect")
        self._publish_volumes("unmount")
        self._publish("die", exitCode=str(status))
        policy = self.restart_policy
        if policy.should_restart(
            status, self.record.restart_count, manually_stopped=self.record.manually_stopped
        ):
            ran_for = (self.record.finished_at or 0) - (self.record.started_at or 0)
            self._restart_delay = next_delay(self._restart_delay, ran_for)
            self._move(State.RESTARTING)
            self._restart_task = self._spawn(self._restart_after(self._restart_delay))
        elif self.record.auto_remove and self.on_auto_remove is not None and not self._removing:
            self._spawn(self.on_auto_remove(self))

    async def _power_off(self, status: int, reason: str | None, *, oom_killed: bool = False) -> None:
        """`reason` says why the VM was lost (no clean shutdown then); an OOM
        kill of the container is its own exit, recorded as Docker's OOMKilled."""
        vm, agent = self.vm, self.agent
        await self.health_checks.stop()
        self._move(
            State.EXITED,
            exit_code=status,
            finished_at=time.time(),
            reason=OOM_REASON if oom_killed else reason,
            oom_killed=oom_killed,
        )
        if agent is not None and agent.received_offset is not None:
            agent.acknowledge(agent.received_offset)
        for member in list(self.members):  # they run in this VM: they stop with it
            await member.host_stopping()
        if vm is not None and vm.state is VmState.PAUSED:
            with contextlib.suppress(HyperError):
                await vm.resume()
        if agent is not None and agent.failure is None and vm is not None and reason is None:
            with contextlib.suppress(HyperError):
                await agent.request("shutdown", timeout=SHUTDOWN_SECONDS)
            trace.mark("guest shut down", self.id)
        if vm is not None:
            await vm.stop(SHUTDOWN_SECONDS)
            await vm.close()
            trace.mark("vm powered off", self.id)
        if self.network is not None:
            await self.network.release(self.id)  # its taps went with QEMU
        if agent is not None:
            await agent.close()
        self.vm = self.agent = self._main_channel = None
        shutil.rmtree(self.paths.runtime / self.id[:12], ignore_errors=True)
        if vm is not None:  # a VM from the pool has a run directory of its own name
            shutil.rmtree(vm.spec.run_dir, ignore_errors=True)
        await self._exited(status)

    async def _exited(self, status: int) -> None:
        """The run is over and its resources gone: tell the waiters."""
        self._update_container_file(state=State.EXITED.value, exit_code=status)
        if self.log is not None:
            await self.log.finish()
        self.exited.set()
        async with self._changed:
            self._exits += 1
            self._changed.notify_all()

    async def host_stopping(self) -> None:
        """The VM this container joined powers off (hyper.daemon.members)."""

    async def _pull_plug(self) -> None:
        """End a run whose guest does not answer: kill the VM (_watch_vm records the exit)."""
        if self.vm is not None:
            await self.vm.kill()

    async def _restart_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            if self.status is not State.RESTARTING:
                return
            self.record = self.state.update(self.record, restart_count=self.record.restart_count + 1)
            try:
                await self._launch(manual=False)
            except HyperError as exc:
                self._move(State.EXITED, reason=f"restart failed: {exc.message}")
                return
        self._publish("restart")

    def _update_container_file(self, **changes: object) -> None:
        """The container's config.json, which `hyper rmi` reads to see images in use."""
        path = self.dir / "config.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        doc.update(changes)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(path)

    async def remove(self, *, force: bool, volumes: bool = False) -> None:
        """Docker's rm: `force` a running one; `volumes` removes its anonymous volumes too."""
        if self.running and not force:
            raise FailedPrecondition(
                f"container {self.record.name} is running", hint="stop it first, or remove it with -f"
            )
        if self._removing:
            await self.removed.wait()
            return
        self._removing = True
        self.record = self.state.update(self.record, manually_stopped=True)
        if self._restart_task is not None:
            self._restart_task.cancel()
        if self.running:
            await self._pull_plug()
        async with self._lock:  # a power-off (or start) under way finishes first
            if not self.exited.is_set():
                await self._power_off(EXIT_VM_DIED, "removed while running")
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.network is not None:
            self.network.forget(self.id)
        self.state.delete(self.id)
        removed = await asyncio.to_thread(release_container_volumes, self.paths, self.id, anonymous=volumes)
        self.removed.set()
        trace.mark("container removed", self.id)
        async with self._changed:
            self._changed.notify_all()
        self._publish("destroy")
        self._publish_volumes("destroy", removed)

    async def release(self) -> None:
        """hyperd is stopping: let go of the VM, which keeps running for the next hyperd."""
        for task in list(self._tasks):
            task.cancel()
        if self.agent is not None:
            await self.agent.close()
        if self.vm is not None:
            self.vm.release()
        if self.log is not None:
            self.log.close()


def resolve_container_mounts(
    paths: HyperPaths,
    mounts: tuple[str, ...],
    image_volumes: tuple[str, ...],
    container_id: str,
    owner: str = "",
) -> tuple[tuple[str, ...], list[str]]:
    """A new container's mounts with its volumes named and made, an anonymous one
    for each of the image's VOLUME paths not mounted otherwise (hyper.storage), a
    tenant's in its own space; and the volumes it made (for their events). Blocking."""
    with VolumeStore(paths.volumes, paths.containers) as store:
        existed = {
            m.source for m in storage_plan.parse_canonical(mounts) if m.source and store.exists(m.source)
        }
        resolved = storage_plan.resolve_mounts(store, mounts, image_volumes, container_id, owner=owner)
    made = [
        m.source
        for m in storage_plan.parse_canonical(resolved)
        if m.type is MountType.VOLUME and m.source not in existed
    ]
    return resolved, made


def release_container_volumes(paths: HyperPaths, container_id: str, *, anonymous: bool) -> list[str]:
    """The container no longer uses its volumes; with `anonymous` its anonymous ones
    are removed: those. Blocking."""
    if not paths.volumes.exists():
        return []
    with VolumeStore(paths.volumes, paths.containers) as store:
        return storage_plan.release_volumes(store, container_id, anonymous=anonymous)
