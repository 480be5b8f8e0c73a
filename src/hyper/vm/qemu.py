"""QEMU as Hyper's hypervisor: the driver that starts, controls and stops one VM.

The VM is a `microvm` machine (virtio-mmio, no firmware, no PCI) booting the
kernel directly. QEMU is controlled over QMP with the `qemu.qmp` library; the
agent speaks over a virtio-serial port backed by a unix socket on which QEMU
listens, so the host can connect (and, later, reconnect) at any time.

QEMU never starts unconfined: the driver prepares its jail (hyper.vm.confine)
and runs the jailer (hyper.vm.jailer), which becomes QEMU; the command line
and the descriptors it names come from hyper.vm.qemu_command. Template state
moves over descriptors too (QMP `getfd` + `fd:` migration), because the
sandbox forbids QEMU to spawn `cat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from qemu.qmp import EventListener, QMPClient

from hyper.errors import FailedPrecondition, HyperError, Unavailable
from hyper.vm import confine
from hyper.vm.driver import SCSI_CONTROLLER, VM_TRANSITIONS, FileShare, HotDisk, VmSpec, VmState
from hyper.vm.jail import JailMode, jail_mounts, jail_symlinks, jailer_document
from hyper.vm.qemu_command import QEMU_BINARY, build_command, open_passed, passed_files

__all__ = ["QEMU_BINARY", "QemuDriver", "VmStartError", "build_command", "console_tail"]

JAILER_TIMEOUT = 30.0
CONSOLE_TAIL_BYTES = 3000
QMP_CONNECT_TIMEOUT = 30.0
QMP_COMMAND_TIMEOUT = 30.0
# qemu.qmp logs every failed connection attempt at ERROR; we retry on purpose.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class VmStartError(Unavailable):
    """QEMU did not start, or stopped before the guest was ready."""

    def __init__(
        self,
        message: str,
        *,
        command: list[str],
        exit_status: int | None,
        console_tail: str,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.command = command
        self.exit_status = exit_status
        self.console_tail = console_tail


def console_tail(path: Path, limit: int = CONSOLE_TAIL_BYTES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class QemuDriver:
    """Runs one VM as a confined QEMU process in its own session (so a Ctrl-C
    meant for the container does not kill the VM), with QMP for control.

    A foreground VM's QEMU is our child and is killed when its owner dies
    (the jailer sets a parent-death signal). `detached` VMs (hyperd's) are
    forked off by the jailer: QEMU is not our child, so it outlives this
    process, and asyncio cannot kill it when its loop closes. Their exit is
    watched through a pidfd; `adopt` takes over a detached VM that an earlier
    process started.
    """

    def __init__(
        self,
        spec: VmSpec,
        binary: str = QEMU_BINARY,
        *,
        detached: bool = False,
        nic_fds: Sequence[int] = (),
        share: FileShare | None = None,
    ) -> None:
        if spec.file_share and share is None:
            raise ValueError(f"VM {spec.name} has a file share device but no share to serve it")
        self._spec = spec
        self._share = share
        self._share_fd: int | None = None
        # The host sides of the NICs with a tap or stream backend, in order: the
        # caller keeps (and closes) these; QEMU gets copies.
        self._nic_fds = tuple(nic_fds)
        self._binary = binary
        self._state = VmState.CREATED
        self._process: asyncio.subprocess.Process | None = None
        self._qmp: QMPClient | None = None
        self.io_error: str | None = None  # the first BLOCK_IO_ERROR, in words
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._detached = detached
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._exited: asyncio.Future[int] | None = None
        self._jail_released = False
        self.command = build_command(spec, binary)

    @classmethod
    async def adopt(
        cls, spec: VmSpec, pid: int, binary: str = QEMU_BINARY, *, share: FileShare | None = None
    ) -> QemuDriver:
        """Take over the running detached VM `spec` whose QEMU is `pid` (and its file share)."""
        driver = cls(spec, binary, detached=True, share=share)
        driver._state = VmState.STARTING
        if not confine.belongs_to(pid, spec.jail, str(spec.run_dir)):
            # Gone, or the pid now belongs to someone else: nothing to kill, only to clean.
            await driver.close()
            raise driver.start_error(f"QEMU process {pid} is gone")
        try:
            driver._watch(pid)
            driver._qmp = await driver._connect_qmp()
            paused = await driver.query_status() == "paused"
        except BaseException:
            await driver.close()  # hyperd gives this VM up: it must not run on unseen
            raise
        driver._state = VmState.PAUSED if paused else VmState.RUNNING
        return driver

    def _watch(self, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError as exc:
            raise self.start_error(f"QEMU process {pid} is gone") from exc
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[int] = loop.create_future()

        def on_exit() -> None:
            loop.remove_reader(pidfd)
            if not exited.done():
                exited.set_result(-1)  # not our child: its status is not ours to read

        loop.add_reader(pidfd, on_exit)
        self._pid, self._pidfd, self._exited = pid, pidfd, exited

    def release(self) -> None:
        """Let go of a detached VM without stopping it (hyperd shutting down)."""
        for task in list(self._event_tasks):
            task.cancel()
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._qmp is not None:
            qmp, self._qmp = self._qmp, None
            asyncio.get_running_loop().create_task(_disconnect_quietly(qmp))

    @property
    def spec(self) -> VmSpec:
        return self._spec

    @property
    def state(self) -> VmState:
        return self._state

    @property
    def pid(self) -> int | None:
        if self._detached:
            return self._pid
        return self._process.pid if self._process else None

    def _move(self, new: VmState) -> None:
        if new not in VM_TRANSITIONS[self._state]:
            raise FailedPrecondition(
                f"VM {self._spec.name} cannot go from {self._state.value} to {new.value}"
            )
        self._state = new

    def start_error(self, message: str, hint: str | None = None) -> VmStartError:
        status = self._process.returncode if self._process else None
        tail = console_tail(self._spec.console_log)
        qemu_log = console_tail(self._spec.run_dir / "qemu.log", 1000).strip()
        details = f"{message}"
        if status is not None:
            details += f" (QEMU exit status {status})"
        if qemu_log:
            details += f"\nQEMU said: {qemu_log}"
        return VmStartError(
            details,
            command=self.command,
            exit_status=status,
            console_tail=tail,
            hint=hint or f"the console log is {self._spec.console_log}",
        )

    async def start(self) -> None:
        self._move(VmState.STARTING)
        self._spec.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        preparing = asyncio.ensure_future(asyncio.to_thread(confine.prepare, self._spec))
        try:
            prepared = await asyncio.shield(preparing)
        except BaseException:
            self._state = VmState.STOPPED
            if not preparing.done() or (not preparing.cancelled() and preparing.exception() is None):
                await _undo_preparation(preparing)  # cancelled meanwhile: the thread made a jail
            raise
        self._spec = dataclasses.replace(self._spec, jail=prepared.spec)
        try:
            if self._share is not None and self._spec.file_share:
                self._share_fd = await asyncio.to_thread(self._share.start)
            if self._detached:
                # The jailer forks QEMU off, reports its pid and exits. Cancelled
                # before that pid is read, close() would have nothing to kill (nor
                # would confine.release, without a cgroup of the VM's own) and QEMU
                # would run on, nobody's: the spawn ends first, however cancelled.
                await _to_the_end(asyncio.ensure_future(self._spawn(prepared)))
            else:
                await self._spawn(prepared)  # QEMU is our child: close() kills it
            self._qmp = await self._connect_qmp()
            if self._spec.incoming_state is not None:
                await self._resume_from(self._spec.incoming_state)
        except BaseException:
            prepared.hand_over()
            await self.close()
            raise
        self._move(VmState.RUNNING)

    async def _spawn(self, prepared: confine.PreparedJail) -> None:
        """Run the jailer, which confines itself and becomes QEMU (forking first when detached)."""
        found = shutil.which(self._binary)
        if found is None:
            self._state = VmState.STOPPED
            raise VmStartError(
                f"{self._binary} is not installed",
                command=self.command,
                exit_status=None,
                console_tail="",
                hint="install Debian's qemu-system-x86 (make demo does it)",
            )
        binary = os.path.realpath(found)
        jail = prepared.spec
        root = self._spec.run_dir / "root"
        root.mkdir(mode=0o700, exist_ok=True)
        report_read, report_write = os.pipe()
        opened: list[int] = []
        try:
            pairs = []
            nic_fds = iter(self._nic_fds)
            for passed in passed_files(self._spec):
                if passed.kind == "nic":
                    source = next(nic_fds, None)
                    if source is None:
                        raise FailedPrecondition(f"VM {self._spec.name}: no descriptor for {passed.path}")
                    opened.append(fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, 3))
                elif passed.kind == "share":
                    assert self._share_fd is not None
                    opened.append(self._share_fd)
                    self._share_fd = None
                else:
                    opened.append(open_passed(passed))
                pairs.append((opened[-1], passed.fd))
            lease_fd = prepared.lease.fd if prepared.lease is not None else None
            document = jailer_document(
                jail=jail,
                argv=self.command,
                binary=binary,
                fds=pairs,
                root=str(root),
                mounts=jail_mounts(self._spec, binary, confine.host_layout()),
                symlinks=jail_symlinks(confine.host_layout()),
                report_fd=report_write,
                lease_fd=lease_fd,
                detach=self._detached,
                die_with_parent=not self._detached,
                host_uid=os.getuid(),
                host_gid=os.getgid(),
            )
            with (self._spec.run_dir / "qemu.log").open("wb") as log:
                self._process = await asyncio.create_subprocess_exec(
                    *confine.jailer_command(document),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    pass_fds=[*opened, report_write, *([lease_fd] if lease_fd is not None else [])],
                )
        except BaseException:
            os.close(report_read)
            raise
        finally:
            for fd in (*opened, report_write):
                os.close(fd)
            prepared.hand_over()
        report = await self._jailer_report(report_read)
        for line in report:
            word, _, value = line.partition(" ")
            if word == "mode" and value.split(" ", 1)[0] != jail.mode.value:
                actual = JailMode(value.split(" ", 1)[0])
                self._spec = dataclasses.replace(self._spec, jail=dataclasses.replace(jail, mode=actual))
        if self._detached:
            await self._detached_pid(report)

    async def _jailer_report(self, fd: int) -> list[str]:
        """What the jailer wrote before it executed QEMU (its pipe closes then)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            data = await asyncio.wait_for(reader.read(), JAILER_TIMEOUT)
        except TimeoutError:
            raise self.start_error(f"the jailer did not start QEMU in {JAILER_TIMEOUT:.0f}s") from None
        finally:
            transport.close()
        return data.decode(errors="replace").splitlines()

    async def _detached_pid(self, report: list[str]) -> None:
        """The jailer forked QEMU off and exited; QEMU's pid is in its report."""
        assert self._process is not None
        try:
            status = await asyncio.wait_for(self._process.wait(), JAILER_TIMEOUT)
        except TimeoutError:
            raise self.start_error(f"the jailer did not finish in {JAILER_TIMEOUT:.0f}s") from None
        pids = [line.split()[1] for line in report if line.startswith("pid ")]
        if status != 0 or not pids:
            raise self.start_error("QEMU exited while starting")
        self._watch(int(pids[0]))

    async def _execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        if self._qmp is None:
            raise FailedPrecondition(f"VM {self._spec.name} has no QMP connection")
        try:
            return await asyncio.wait_for(self._qmp.execute(command, arguments), QMP_COMMAND_TIMEOUT)
        except TimeoutError as exc:
            raise self.start_error(f"QMP {command} did not answer in {QMP_COMMAND_TIMEOUT:.0f}s") from exc
        except Exception as exc:
            raise self.start_error(f"QMP {command} failed: {exc}") from exc

    async def _resume_from(self, state: Path) -> None:
        """Load a template's device state (its RAM is the mapped memory file) and run it."""
        await self._execute(
            "migrate-set-capabilities", {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
        )
        await self._pass_fd(state, os.O_RDONLY, "template-state")
        await self._execute("migrate-incoming", {"uri": "fd:template-state"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + QMP_COMMAND_TIMEOUT
        while True:
            status = await self._execute("query-status")
            if isinstance(status, dict) and status.get("status") != "inmigrate":
                break
            if loop.time() > deadline:
                raise self.start_error("the VM template did not load in time")
            await asyncio.sleep(0.005)
        if status.get("status") != "paused":
            raise self.start_error(f"the VM template loaded into state {status.get('status')!r}")
        await self._execute("cont")

    async def _pass_fd(self, path: Path, flags: int, name: str) -> None:
        """Open `path` here and hand the descriptor to QEMU under `name` (QMP getfd):
        QEMU needs no right on the file, and no process to spawn."""
        if self._qmp is None:
            raise FailedPrecondition(f"VM {self._spec.name} has no QMP connection")
        try:
            fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self.start_error(f"cannot open {path}: {exc.strerror}") from exc
        try:
            self._qmp.send_fd_scm(fd)
            await self._execute("getfd", {"fdname": name})
        finally:
            os.close(fd)

    @property
    def share(self) -> FileShare | None:
        """The VM's file share (its 9p server), to add volumes to while it runs."""
        return self._share

    async def attach_disk(self, disk: HotDisk) -> None:
        """Hot-add `disk` on the VM's SCSI controller (the guest sees a new
        sd device with the disk's serial). QEMU opens nothing: the file's
        descriptor is passed over QMP into an fd set it opens as /dev/fdset/N."""
        if self._qmp is None or not self._spec.scsi:
            raise FailedPrecondition(f"VM {self._spec.name} cannot take disks while it runs")
        try:
            fd = os.open(disk.path, (os.O_RDONLY if disk.read_only else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise self.start_error(f"cannot open {disk.path}: {exc.strerror}") from exc
        try:
            self._qmp.send_fd_scm(fd)
            await self._execute("add-fd", {"fdset-id": disk.fdset, "opaque": str(disk.path)})
        finally:
            os.close(fd)
        node: dict[str, object] = {
            "driver": "raw",
            "node-name": disk.node,
            "read-only": disk.read_only,
            # As the command line's drives: through the host page cache, shared by every VM.
            "cache": {"direct": False, "no-flush": False},
            "file": {"driver": "file", "filename": f"/dev/fdset/{disk.fdset}"},
        }
        if not disk.read_only:
            node |= {"discard": "unmap", "detect-zeroes": "unmap"}
        device = {
            "driver": "scsi-hd",
            "id": disk.device,
            "bus": f"{SCSI_CONTROLLER}.0",
            "drive": disk.node,
            "serial": disk.serial,
            "scsi-id": disk.target,
            "lun": 0,
            "werror": "report",
            "rerror": "report",
        }
        try:
            await self._execute("blockdev-add", node)
            await self._execute("device_add", device)
        except BaseException:
            with contextlib.suppress(HyperError):
                await self._execute("blockdev-del", {"node-name": disk.node})
            with contextlib.suppress(HyperError):
                await self._execute("remove-fd", {"fdset-id": disk.fdset})
            raise

    async def detach_disk(self, disk: HotDisk) -> None:
        """Remove a hot-added disk (the guest has unmounted it). The device goes
        first; QEMU lets go of its block node a moment later, so deleting the
        node is tried until it is free."""
        await self._execute("device_del", {"id": disk.device})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + QMP_COMMAND_TIMEOUT
        while True:
            try:
                await self._execute("blockdev-del", {"node-name": disk.node})
                break
            except VmStartError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.02)
        await self._execute("remove-fd", {"fdset-id": disk.fdset})

    async def pause(self) -> None:
        """Stop every vCPU: the whole VM, guest kernel included, is frozen."""
        self._move(VmState.PAUSED)
        try:
            await self._execute("stop")
        except BaseException:
            self._state = VmState.RUNNING
            raise

    async def resume(self) -> None:
        self._move(VmState.RUNNING)
        try:
            await self._execute("cont")
        except BaseException:
            self._state = VmState.PAUSED
            raise

    async def block_stats(self) -> dict[str, dict[str, int]]:
        """Bytes and operations per disk (by serial's device id), as QEMU counted them."""
        reply = await self._execute("query-blockstats")
        result: dict[str, dict[str, int]] = {}
        for entry in reply if isinstance(reply, list) else []:
            stats = entry.get("stats") if isinstance(entry, dict) else None
            if not isinstance(stats, dict):
                continue
            name = str(entry.get("qdev") or entry.get("device") or entry.get("node-name") or "")
            result[name] = {
                "read_bytes": int(stats.get("rd_bytes", 0)),
                "write_bytes": int(stats.get("wr_bytes", 0)),
                "reads": int(stats.get("rd_operations", 0)),
                "writes": int(stats.get("wr_operations", 0)),
            }
        return result

    async def save_state(self, state: Path) -> None:
        """Pause the VM and write its device state (not its RAM, which is in the
        shared memory file) to `state`, for VMs to be started from later."""
        await self._execute("stop")
        await self._execute(
            "migrate-set-capabilities", {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
        )
        await self._pass_fd(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "template-state")
        await self._execute("migrate", {"uri": "fd:template-state"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + QMP_COMMAND_TIMEOUT
        while True:
            reply = await self._execute("query-migrate")
            status = reply.get("status") if isinstance(reply, dict) else None
            if status == "completed":
                return
            if status in ("failed", "cancelled") or loop.time() > deadline:
                detail = reply.get("error-desc") if isinstance(reply, dict) else None
                raise self.start_error(f"saving the VM state failed: {detail or status}")
            await asyncio.sleep(0.01)

    def _has_exited(self) -> bool:
        if self._detached:
            return self._exited is not None and self._exited.done()
        return self._process is not None and self._process.returncode is not None

    async def _connect_qmp(self) -> QMPClient:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + QMP_CONNECT_TIMEOUT
        while True:
            if self._has_exited():
                raise self.start_error("QEMU exited while starting")
            # The socket is ours, bound before QEMU started: a connection waits
            # in its backlog until QEMU accepts it and greets.
            client = QMPClient(f"hyper-{self._spec.name}")
            try:
                await asyncio.wait_for(client.connect(str(self._spec.qmp_socket)), 5)
                self._watch_io_errors(client)
                return client
            except (TimeoutError, OSError, HyperError, Exception) as exc:
                with contextlib.suppress(Exception):
                    await client.disconnect()
                if loop.time() > deadline:
                    raise self.start_error(f"QMP did not answer: {exc}") from exc
            if self._detached or self._process is None:
                await asyncio.sleep(0.02)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._process.wait(), 0.02)

    def _watch_io_errors(self, client: QMPClient) -> None:
        """Remember the first disk error QEMU reports (a full host disk, say):
        drives report errors to the guest instead of pausing the VM, and the
        owner tells the user why the container failed."""
        listener = EventListener("BLOCK_IO_ERROR")
        client.register_listener(listener)

        async def watch() -> None:
            async for event in listener:
                data = event.get("data") or {}
                if self.io_error is None and isinstance(data, dict):
                    reason = str(data.get("reason") or "I/O error")
                    full = data.get("nospace") or "No space" in reason
                    where = "the host's disk is full" if full else "the host's disk failed"
                    self.io_error = f"{where} ({data.get('operation', 'write')}: {reason})"

        task = asyncio.get_running_loop().create_task(watch())
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    async def query_status(self) -> str:
        if self._qmp is None:
            raise FailedPrecondition(f"VM {self._spec.name} has no QMP connection")
        reply = await asyncio.wait_for(self._qmp.execute("query-status"), 5)
        assert isinstance(reply, dict)
        return str(reply.get("status"))

    async def wait(self, timeout: float | None = None) -> int | None:
        if self._detached:
            if self._exited is None:
                return None
            try:
                return await asyncio.wait_for(asyncio.shield(self._exited), timeout)
            except TimeoutError:
                return None
        if self._process is None:
            return None
        try:
            return await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            return None

    async def stop(self, timeout: float) -> None:
        """The guest agent powers the VM off; this waits for that, then pulls the plug."""
        if self._state in (VmState.STOPPED, VmState.CREATED):
            self._state = VmState.STOPPED
            return
        self._move(VmState.STOPPING)
        if await self.wait(timeout) is None and self._qmp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._qmp.execute("quit"), 2)
            await self.wait(2)
        await self.kill()

    def kill_now(self) -> None:
        """SIGKILL QEMU at once, from a signal handler (nothing is awaited): whatever
        waits on the guest fails fast, and `close` then reaps and cleans up."""
        pid = self.pid
        if pid is not None and not self._has_exited():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def kill(self) -> None:
        if self._detached:
            if self._pid is not None and self._exited is not None and not self._exited.done():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, signal.SIGKILL)
                await self.wait(10)
            if self._state is not VmState.CREATED:
                self._state = VmState.STOPPED
            return
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            await process.wait()
        if self._state is not VmState.CREATED:
            self._state = VmState.STOPPED

    async def close(self) -> None:
        await self.kill()
        self._state = VmState.STOPPED
        for task in list(self._event_tasks):
            task.cancel()
        if self._share_fd is not None:
            os.close(self._share_fd)
            self._share_fd = None
        if self._share is not None:
            await asyncio.shield(asyncio.to_thread(self._share.close))
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._qmp.disconnect(), 2)
            self._qmp = None
        self.release()
        for path in (self._spec.qmp_socket, self._spec.agent_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if not self._jail_released:
            self._jail_released = True
            # Shielded: a second Ctrl-C must not leave the cgroup and id lease behind.
            await asyncio.shield(asyncio.to_thread(confine.release, self._spec.jail))


async def _to_the_end(future: asyncio.Future[None]) -> None:
    """Await `future` until it ends even when cancelled meanwhile (bounded: it has
    timeouts of its own); a cancellation is raised after, once it ended."""
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        if not future.cancelled():
            future.exception()  # the cancellation is what the caller hears of
        raise cancelled
    future.result()


async def _undo_preparation(preparing: asyncio.Future[confine.PreparedJail]) -> None:
    with contextlib.suppress(Exception):
        prepared = await preparing
        prepared.hand_over()
        await asyncio.to_thread(confine.release, prepared.spec)


async def _disconnect_quietly(qmp: QMPClient) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(qmp.disconnect(), 2)
