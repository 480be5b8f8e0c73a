"""QEMU as Hyper's hypervisor: a pure command-line builder and the driver that runs it.

The VM is a `microvm` machine (virtio-mmio, no firmware, no PCI) booting the
kernel directly. QEMU is controlled over QMP with the `qemu.qmp` library; the
agent speaks over a virtio-serial port backed by a unix socket on which QEMU
listens, so the host can connect (and, later, reconnect) at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from pathlib import Path

from qemu.qmp import QMPClient

from hyper.agent.protocol import PORT_NAME
from hyper.errors import FailedPrecondition, HyperError, Unavailable
from hyper.vm.accel import Accel
from hyper.vm.driver import VM_TRANSITIONS, VmSpec, VmState

QEMU_BINARY = "qemu-system-x86_64"
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


def _escape(value: str | Path) -> str:
    """QEMU option values escape a comma by doubling it."""
    return str(value).replace(",", ",,")


def build_command(spec: VmSpec, binary: str = QEMU_BINARY) -> list[str]:
    """The full QEMU command line for `spec`. Pure: no file or process is touched."""
    command = [
        binary,
        "-name",
        f"hyper-{spec.name}",
        "-M",
        "microvm",
        "-accel",
        spec.accel.value,
        "-m",
        f"{spec.memory_mib}M",
        "-smp",
        str(spec.cpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(spec.kernel),
        "-initrd",
        str(spec.initrd),
        "-append",
        spec.cmdline,
        "-chardev",
        f"file,id=console,path={_escape(spec.console_log)}",
        "-serial",
        "chardev:console",
        "-chardev",
        f"socket,id=qmp,path={_escape(spec.qmp_socket)},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        "-device",
        "virtio-serial-device,max_ports=2",
        "-chardev",
        f"socket,id=agent,path={_escape(spec.agent_socket)},server=on,wait=off",
        "-device",
        f"virtserialport,chardev=agent,name={PORT_NAME}",
        "-pidfile",
        str(spec.pid_file),
    ]
    if spec.memory_file is not None:
        machine = command.index("microvm")
        command[machine] = "microvm,memory-backend=ram"
        share = "on" if spec.memory_shared else "off"
        command += [
            "-object",
            f"memory-backend-file,id=ram,size={spec.memory_mib}M,mem-path={_escape(spec.memory_file)},share={share}",
        ]
    if spec.incoming_state is not None:
        command += ["-incoming", "defer"]
    if spec.accel is Accel.KVM:
        command += ["-cpu", "host"]
    else:
        # RDRAND lets the guest seed its CRNG at once; without it the first
        # read of /dev/urandom (Python does one at start-up) runs the kernel's
        # jitter-entropy loop, which takes over a second under TCG.
        command += ["-cpu", "qemu64,+rdrand"]
    for index, disk in enumerate(spec.disks):
        drive = [
            f"id=disk{index}",
            f"file={_escape(disk.path)}",
            "format=raw",
            "if=none",
            "readonly=on" if disk.read_only else "readonly=off",
            # Read-only layers go through the host page cache, shared by every VM.
            "cache=writeback",
        ]
        command += ["-drive", ",".join(drive)]
        command += ["-device", f"virtio-blk-device,drive=disk{index},serial={_escape(disk.serial)}"]
    return command


def console_tail(path: Path, limit: int = CONSOLE_TAIL_BYTES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class QemuDriver:
    """Runs one VM as a QEMU process in its own session (so a Ctrl-C meant for
    the container does not kill the VM), with QMP for control.

    `detached` VMs (hyperd's) are started with `-daemonize`: QEMU is not our
    child, so it outlives this process, and asyncio cannot kill it when its
    loop closes. Their exit is watched through a pidfd; `adopt` takes over a
    detached VM that an earlier process started.
    """

    def __init__(self, spec: VmSpec, binary: str = QEMU_BINARY, *, detached: bool = False) -> None:
        self._spec = spec
        self._binary = binary
        self._state = VmState.CREATED
        self._process: asyncio.subprocess.Process | None = None
        self._qmp: QMPClient | None = None
        self._detached = detached
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._exited: asyncio.Future[int] | None = None
        self.command = build_command(spec, binary) + (["-daemonize"] if detached else [])

    @classmethod
    async def adopt(cls, spec: VmSpec, pid: int, binary: str = QEMU_BINARY) -> QemuDriver:
        """Take over the running detached VM `spec` whose QEMU is `pid`."""
        driver = cls(spec, binary, detached=True)
        driver._state = VmState.STARTING
        try:
            driver._watch(pid)
            driver._qmp = await driver._connect_qmp()
            paused = await driver.query_status() == "paused"
        except BaseException:
            driver.release()
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
        self._spec.run_dir.mkdir(parents=True, exist_ok=True)
        log = (self._spec.run_dir / "qemu.log").open("wb")
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            self._state = VmState.STOPPED
            raise VmStartError(
                f"{self._binary} is not installed",
                command=self.command,
                exit_status=None,
                console_tail="",
                hint="install Debian's qemu-system-x86 (make demo does it)",
            ) from exc
        finally:
            log.close()
        try:
            if self._detached:
                await self._daemonized()
            self._qmp = await self._connect_qmp()
            if self._spec.incoming_state is not None:
                await self._resume_from(self._spec.incoming_state)
        except BaseException:
            await self.close()
            raise
        self._move(VmState.RUNNING)

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
        await self._execute("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(state))}"})
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
        await self._execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(state))}"})
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

    async def _daemonized(self) -> None:
        """The `-daemonize` parent exits once QEMU is set up; then QEMU's pid is in the pid file."""
        assert self._process is not None
        try:
            status = await asyncio.wait_for(self._process.wait(), QMP_CONNECT_TIMEOUT)
        except TimeoutError:
            raise self.start_error(f"QEMU did not finish starting in {QMP_CONNECT_TIMEOUT:.0f}s") from None
        if status != 0:
            raise self.start_error("QEMU exited while starting")
        try:
            pid = int(self._spec.pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise self.start_error(f"QEMU wrote no usable pid file: {exc}") from exc
        self._watch(pid)

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
            if self._spec.qmp_socket.exists():
                client = QMPClient(f"hyper-{self._spec.name}")
                try:
                    await asyncio.wait_for(client.connect(str(self._spec.qmp_socket)), 5)
                    return client
                except (TimeoutError, OSError, HyperError, Exception) as exc:
                    with contextlib.suppress(Exception):
                        await client.disconnect()
                    if loop.time() > deadline:
                        raise self.start_error(f"QMP did not answer: {exc}") from exc
            if loop.time() > deadline:
                raise self.start_error(f"QEMU did not open its QMP socket in {QMP_CONNECT_TIMEOUT:.0f}s")
            if self._detached or self._process is None:
                await asyncio.sleep(0.02)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._process.wait(), 0.02)

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
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._qmp.disconnect(), 2)
            self._qmp = None
        self.release()
        for path in (self._spec.qmp_socket, self._spec.agent_socket, self._spec.pid_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def _disconnect_quietly(qmp: QMPClient) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(qmp.disconnect(), 2)
