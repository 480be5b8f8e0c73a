"""hyperd's pods: one VM running one container, supervised from start to removal.

A pod writes its container's output to its log, acknowledging it to the
guest only once it is on disk, records the exit status, and powers the VM
off. Its QEMU is detached, so when hyperd stops or crashes the pod keeps
running; the next hyperd adopts it (`adopt`): it reconnects QMP and the agent
channel and resumes the agent's stream after the last logged offset, so the
output written meanwhile reaches the log, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from hyper.agent.host import AgentClient, AgentConnectionLost, ProcessChannel
from hyper.agent.protocol import FrameKind
from hyper.daemon.logs import LogFile
from hyper.daemon.state import ContainerRecord, StateStore
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument
from hyper.paths import HyperPaths
from hyper.runtime import spec as specs
from hyper.runtime.run import MAIN_PROCESS, ContainerRun
from hyper.runtime.settings import Settings
from hyper.vm.accel import Accel
from hyper.vm.driver import DiskSpec, VmSpec
from hyper.vm.qemu import QemuDriver, VmStartError

SYNC_BYTES = 256 * 1024  # output written before it is made durable and acknowledged
SYNC_SECONDS = 0.2
SHUTDOWN_SECONDS = 10.0
KILL_GRACE_SECONDS = 10.0
EXIT_VM_DIED = 137


def vm_document(spec: VmSpec) -> dict[str, Any]:
    doc: dict[str, Any] = json_safe(dataclasses.asdict(spec))
    return doc


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Accel):
        return value.value
    return value


def vm_spec_from(doc: dict[str, Any]) -> VmSpec:
    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value)

    return VmSpec(
        name=doc["name"],
        kernel=Path(doc["kernel"]),
        initrd=Path(doc["initrd"]),
        cmdline=doc["cmdline"],
        accel=Accel(doc["accel"]),
        memory_mib=doc["memory_mib"],
        cpus=doc["cpus"],
        run_dir=Path(doc["run_dir"]),
        disks=tuple(DiskSpec(Path(d["path"]), d["serial"], d["read_only"]) for d in doc["disks"]),
        memory_file=path(doc.get("memory_file")),
        memory_shared=bool(doc.get("memory_shared")),
        incoming_state=path(doc.get("incoming_state")),
    )


def parse_signal(text: str | int) -> int:
    if isinstance(text, int) or text.isdigit():
        number = int(text)
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        try:
            number = int(signal.Signals[name])
        except KeyError:
            raise InvalidArgument(
                f"unknown signal {text!r}", hint="use a name such as SIGTERM or a number"
            ) from None
    if not 0 < number < signal.NSIG:
        raise InvalidArgument(f"signal {number} is out of range")
    return number


class Pod:
    def __init__(
        self, paths: HyperPaths, settings: Settings, state: StateStore, record: ContainerRecord
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.state = state
        self.record = record
        self.dir = paths.containers / record.id
        self.log = LogFile(self.dir / "log.jsonl") if self.dir.exists() else None
        self.vm: QemuDriver | None = None
        self.agent: AgentClient | None = None
        self.exited = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    @property
    def id(self) -> str:
        return self.record.id

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- starting -------------------------------------------------------------
    @classmethod
    async def create(
        cls,
        paths: HyperPaths,
        settings: Settings,
        state: StateStore,
        options: specs.RunOptions,
        labels: dict[str, str],
    ) -> Pod:
        run = ContainerRun(options, paths, settings, detached=True)
        prepared = await run.prepare()
        record = ContainerRecord(
            id=run.id,
            name=options.name or run.id[:12],
            image=options.image,
            image_id=prepared.image.id,
            command=list(prepared.process.args),
            created=time.time(),
            state=specs.ContainerState.CREATED.value,
            options=dataclasses.asdict(options),
            labels=labels,
        )
        state.insert(record)
        try:
            launched = await run.launch(prepared)
        except BaseException:
            state.delete(record.id)
            raise
        pod = cls(paths, settings, state, record)
        pod.log = LogFile(pod.dir / "log.jsonl")
        start = launched.agent.received_offset
        pod.record = state.update(
            record,
            state=specs.ContainerState.RUNNING.value,
            started_at=time.time(),
            qemu_pid=launched.vm.pid,
            vm=vm_document(launched.vm.spec) | {"stream_start": start},
        )
        pod._supervise(launched.vm, launched.agent, launched.channel)
        return pod

    def _supervise(self, vm: QemuDriver, agent: AgentClient, channel: ProcessChannel) -> None:
        self.vm, self.agent = vm, agent
        self._spawn(self._pump(channel))
        self._spawn(self._watch_vm(vm))

    async def adopt(self) -> None:
        """Take over a pod an earlier hyperd started, continuing its log where it stopped."""
        doc = self.record.vm or {}
        if self.record.qemu_pid is None or not doc or self.log is None:
            await self._finish(EXIT_VM_DIED, "hyperd lost track of this container's VM")
            return
        spec = vm_spec_from(doc)
        try:
            vm = await QemuDriver.adopt(spec, self.record.qemu_pid, self.settings.qemu_binary)
        except VmStartError:
            await self._finish(EXIT_VM_DIED, "the VM stopped while hyperd was not running")
            return
        resume = self.log.last_offset()
        if resume is None:
            resume = doc.get("stream_start")
        try:
            agent = await AgentClient.connect(spec.agent_socket, 10, auto_ack=False)
            channel = agent.open_process(MAIN_PROCESS)
            self._supervise(vm, agent, channel)  # reading starts before the hello: the replay comes first
            await agent.hello(30, resume=resume)
        except HyperError as exc:
            self.vm = vm
            await self._finish(EXIT_VM_DIED, f"the VM's agent could not be reached again: {exc.message}")

    # -- running ----------------------------------------------------------------
    async def _pump(self, channel: ProcessChannel) -> None:
        assert self.log is not None and self.agent is not None
        unsynced, last = 0, None
        while True:
            try:
                if unsynced:
                    item = await asyncio.wait_for(channel.output.get(), SYNC_SECONDS)
                else:
                    item = await channel.output.get()
            except TimeoutError:
                unsynced = self._sync(last)
                continue
            if item is None:
                break
            kind, data, offset = item
            self.log.append("stdout" if kind is FrameKind.STDOUT else "stderr", data, offset)
            last = offset if offset is not None else last
            unsynced += len(data)
            if unsynced >= SYNC_BYTES:
                unsynced = self._sync(last)
            await self.log.notify()
        self._sync(last)
        try:
            status = await channel.exit_status
        except AgentConnectionLost:
            return  # hyperd is shutting down, or the VM died: _watch_vm or the next hyperd decides
        await self._finish(status, None)

    def _sync(self, offset: int | None) -> int:
        assert self.log is not None
        self.log.sync()
        if offset is not None and self.agent is not None:
            self.agent.acknowledge(offset)
        return 0

    async def _watch_vm(self, vm: QemuDriver) -> None:
        await vm.wait()
        if not self.exited.is_set():
            await self._finish(EXIT_VM_DIED, "the VM's QEMU process exited unexpectedly")

    async def _finish(self, status: int, reason: str | None) -> None:
        async with self._lock:
            if self.exited.is_set():
                return
            self.record = self.state.update(
                self.record,
                state=specs.ContainerState.EXITED.value,
                exit_code=status,
                finished_at=time.time(),
                reason=reason,
            )
            if self.agent is not None and self.agent.received_offset is not None:
                self.agent.acknowledge(self.agent.received_offset)
            vm, agent = self.vm, self.agent
            if agent is not None and agent.failure is None and vm is not None and reason is None:
                with contextlib.suppress(HyperError):
                    await agent.request("shutdown", timeout=SHUTDOWN_SECONDS)
            if vm is not None:
                await vm.stop(SHUTDOWN_SECONDS)
                await vm.close()
            if agent is not None:
                await agent.close()
            run_dir = self.paths.runtime / self.id[:12]
            shutil.rmtree(run_dir, ignore_errors=True)
            self._update_container_file(state=specs.ContainerState.EXITED.value, exit_code=status)
            if self.log is not None:
                await self.log.finish()
            self.exited.set()

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

    # -- requests ----------------------------------------------------------------
    def _running_agent(self) -> AgentClient:
        if self.exited.is_set() or self.agent is None:
            raise FailedPrecondition(f"container {self.record.name} is not running")
        return self.agent

    async def kill(self, signum: int) -> None:
        await self._running_agent().request("signal", process=MAIN_PROCESS, signal=signum)

    async def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds, then pull the VM's plug."""
        if self.exited.is_set():
            return
        with contextlib.suppress(HyperError):
            await self.kill(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), max(timeout, 0))
            return
        with contextlib.suppress(HyperError):
            await self.kill(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), KILL_GRACE_SECONDS)
            return
        if self.vm is not None:
            await self.vm.kill()  # _watch_vm records the exit
        await self.exited.wait()

    async def wait(self) -> int:
        await self.exited.wait()
        return self.record.exit_code if self.record.exit_code is not None else -1

    async def remove(self, *, force: bool) -> None:
        if not self.exited.is_set():
            if not force:
                raise FailedPrecondition(
                    f"container {self.record.name} is running", hint="stop it first, or remove it with -f"
                )
            if self.vm is not None:
                await self.vm.kill()
            await self._finish(EXIT_VM_DIED, "removed while running")
        for task in list(self._tasks):
            task.cancel()
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.state.delete(self.id)

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
