"""The guest agent: PID 1 inside every Hyper VM.

Standard library only. At boot it loads the kernel modules the appliance
lists, mounts the basics, and opens its virtio-serial port. Then it serves
the host: mounts container roots, starts processes in them (a container's
main process, then execs that join it), streams their stdio as frames,
forwards signals and window sizes, reaps every child (it is PID 1), reports
exit statuses, lists a container's processes and the VM's resource figures,
copies files into and out of containers, and powers the VM off when told to.

Output produced while the host is not connected is kept, up to
OUTPUT_BUFFER_LIMIT bytes; past that the agent stops reading the processes'
pipes, so they block instead of losing data.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import signal
import socket
import sys
import time

from hyper.agent import guest_boot, guest_cgroups, guest_net
from hyper.agent import guest_container as containers
from hyper.agent import guest_sys as sys_
from hyper.agent.guest_process import Process, set_window_size
from hyper.agent.guest_requests import ContainerRequests
from hyper.agent.protocol import (
    MAX_DATA_CHUNK,
    PROTOCOL_VERSION,
    STDIN_WINDOW,
    FrameDecoder,
    FrameKind,
    ProtocolError,
    decode_message,
    encode_frame,
    encode_message,
    require,
    sync_frame,
)

# Not `from typing import TYPE_CHECKING`: importing typing costs the guest
# a tenth of a second under TCG. Type checkers treat this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Modules the agent imports inside functions, which the appliance builder
# cannot see by importing it (traceback: only on a fatal error; tarfile: on
# the first copy into or out of a container, to spare the boot its import).
LAZY_IMPORTS = ("traceback", "tarfile")
OUTPUT_BUFFER_LIMIT = 8 << 20
RECONNECT_POLL_SECONDS = 0.05
REEXEC_ENV = "HYPER_AGENT_REEXEC"  # the state an agent executing itself again hands over


class Agent(ContainerRequests):
    """Serves one host connection at a time over `channel_fd` until shutdown."""

    def __init__(self, channel_fd: int, boot_log: list[str], *, reconnect: bool = True) -> None:
        self.channel_fd = channel_fd
        self.boot_log = boot_log
        self.reconnect = reconnect
        self.selector = selectors.DefaultSelector()
        self.decoder = FrameDecoder()
        # Everything sent and not yet acknowledged: `retained` holds the stream
        # from absolute offset `retained_base`; `write_pos` is the next byte to write.
        self.retained = bytearray()
        self.retained_base = 0
        self.write_pos = 0
        self.sync_prefix = b""  # written before the stream on a new connection
        self.connected = False
        self.running = True
        self.processes: dict[int, Process] = {}
        self.by_shim: dict[int, Process] = {}
        self.by_fd: dict[int, Process] = {}
        self.containers: dict[str, containers.Container] = {}
        self.layer_mounts: dict[str, str] = {}
        self.other_mounts: list[str] = []
        self.hostname = socket.gethostname()
        self.etc_files: dict[str, str] = {}
        self.output_paused = False
        self._watched: dict[int, int] = {}
        self.reexec_pending = False
        os.set_blocking(channel_fd, False)
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        self._watch(self._wakeup_r, selectors.EVENT_READ)

    # -- selector bookkeeping -------------------------------------------------
    def _watch(self, fd: int, events: int) -> None:
        current = self._watched.get(fd, 0)
        if events == current:
            return
        if events == 0:
            self.selector.unregister(fd)
            del self._watched[fd]
        elif current == 0:
            self.selector.register(fd, events)
            self._watched[fd] = events
        else:
            self.selector.modify(fd, events)
            self._watched[fd] = events

    def _update_channel_watch(self) -> None:
        if not self.connected:
            self._watch(self.channel_fd, 0)
            return
        events = selectors.EVENT_READ
        if self._unwritten():
            events |= selectors.EVENT_WRITE
        self._watch(self.channel_fd, events)

    def _update_output_watches(self) -> None:
        paused = len(self.retained) > OUTPUT_BUFFER_LIMIT
        if paused == self.output_paused:
            return
        self.output_paused = paused
        for fd in self.by_fd:
            process = self.by_fd[fd]
            if fd in process.outputs:
                want = 0 if paused else selectors.EVENT_READ
                extra = selectors.EVENT_WRITE if fd == process.tty_master and process.stdin_buffer else 0
                self._watch(fd, want | extra)

    # -- sending --------------------------------------------------------------
    @property
    def stream_end(self) -> int:
        return self.retained_base + len(self.retained)

    def _unwritten(self) -> bool:
        return bool(self.sync_prefix) or self.write_pos < self.stream_end

    def send(self, message: dict[str, Any]) -> None:
        self.retained += encode_message(message)
        self._after_queue()

    def send_data(self, kind: FrameKind, stream: int, data: bytes) -> None:
        self.retained += encode_frame(kind, stream, data)
        self._after_queue()

    def _after_queue(self) -> None:
        self._flush()
        self._update_channel_watch()
        self._update_output_watches()

    def _flush(self) -> None:
        while self.connected and self._unwritten():
            if self.sync_prefix:
                chunk: bytes | bytearray = self.sync_prefix
            else:
                start = self.write_pos - self.retained_base
                chunk = self.retained[start : start + MAX_DATA_CHUNK * 4]
            try:
                written = os.write(self.channel_fd, chunk)
            except BlockingIOError:
                return
            except OSError as exc:
                # Whatever the port says when its host vanishes mid-write, it
                # means "host gone", never "power off": PID 1 must not die of it.
                print(f"hyper-agent: channel write failed: {exc.strerror}", file=sys.stderr)
                self._disconnected()
                return
            if self.sync_prefix:
                self.sync_prefix = self.sync_prefix[written:]
            else:
                self.write_pos += written

    def _acknowledge(self, offset: int) -> None:
        """The host has the stream up to `offset`: forget it."""
        drop = min(offset, self.write_pos) - self.retained_base
        if drop > 0:
            del self.retained[:drop]
            self.retained_base += drop
            self._update_output_watches()

    # -- connection -----------------------------------------------------------
    def _disconnected(self) -> None:
        # What was sent stays retained: the next host resumes from its last offset.
        self.connected = False
        self.sync_prefix = b""
        self.decoder = FrameDecoder()
        self._update_channel_watch()
        if not self.reconnect:
            self.running = False

    def _probe_connection(self) -> None:
        """A virtio port reads EOF while no host is attached; poll until one is."""
        try:
            data = os.read(self.channel_fd, MAX_DATA_CHUNK)
        except BlockingIOError:
            self.connected = True
            self._update_channel_watch()
            return
        except OSError:
            return  # still no host; try again at the next poll
        if data:
            self.connected = True
            self._update_channel_watch()
            self._receive(data)
        elif not self.reconnect:
            self.running = False

    def _on_channel_readable(self) -> None:
        try:
            data = os.read(self.channel_fd, MAX_DATA_CHUNK * 4)
        except BlockingIOError:
            return
        except OSError:
            self._disconnected()
            return
        if not data:
            self._disconnected()
            return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        try:
            for frame in self.decoder.feed(data):
                if frame.kind == FrameKind.CONTROL:
                    self._handle_message(decode_message(frame.payload))
                elif frame.kind == FrameKind.STDIN:
                    self._handle_stdin(frame.stream, frame.payload)
                else:
                    raise ProtocolError(f"host sent a {frame.kind.name} frame")
        except ProtocolError as exc:
            print(f"hyper-agent: dropping host connection: {exc}", file=sys.stderr)
            self._disconnected()

    # -- requests -------------------------------------------------------------
    def _handle_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ack":  # the only message without a response
            self._acknowledge(require(message, "offset", int))
            return
        request_id = message.get("id")
        handler = getattr(self, f"_do_{kind}", None)
        if handler is None:
            self.send(
                {
                    "type": "response",
                    "id": request_id,
                    "ok": False,
                    "error": f"unknown request {kind!r}",
                }
            )
            return
        try:
            reply = handler(message) or {}
        except containers.StartError as exc:
            self.send(
                {
                    "type": "response",
                    "id": request_id,
                    "ok": False,
                    "error": exc.message,
                    "stage": exc.stage,
                    "errno": exc.errno,
                }
            )
            return
        except Exception as exc:
            # A request the agent cannot carry out is refused; it never takes PID 1 down.
            self.send({"type": "response", "id": request_id, "ok": False, "error": f"{kind}: {exc}"})
            return
        self.send({"type": "response", "id": request_id, "ok": True, **reply})

    def _do_hello(self, message: dict[str, Any]) -> dict[str, Any]:
        nonce = bytes.fromhex(require(message, "nonce", str))
        if not 8 <= len(nonce) <= 64:
            raise ProtocolError("hello needs a nonce of 8 to 64 bytes")
        # The sync goes first even when this hello fails, so that the host finds
        # the answer; until a valid resume, the new stream starts at its end.
        self.sync_prefix = sync_frame(nonce)
        self.write_pos = self.stream_end
        version = require(message, "version", int)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"host speaks protocol {version}, agent speaks {PROTOCOL_VERSION}")
        resume = message.get("resume")
        if resume is None:
            # A host with no past: start after everything sent so far.
            self.retained_base = self.stream_end
            self.retained.clear()
        elif not isinstance(resume, int) or isinstance(resume, bool) or not 0 <= resume <= self.stream_end:
            raise ProtocolError(
                f"cannot resume from {resume}: the agent holds {self.retained_base} to {self.stream_end}"
            )
        else:
            # A host may record less than it acknowledged (hyperd logs only the
            # main process's output, and acknowledges execs' too): what it
            # acknowledged it does not want again.
            resume = max(resume, self.retained_base)
            self._acknowledge(resume)
        self.write_pos = self.retained_base if resume is None else resume
        return {
            "version": PROTOCOL_VERSION,
            "kernel": os.uname().release,
            "log": self.boot_log,
            "resume_from": self.write_pos,
            "process": process_fingerprint(),
        }

    def _do_reseed(self, message: dict[str, Any]) -> dict[str, Any]:
        """A VM resumed from a template: the host's clock and randomness, then
        this agent executes itself again, once its answer is sent.

        Every clone of a template wakes with the template's CRNG, and this
        process with its stack canary and pointer guard (AT_RANDOM), its
        address layout and its hash seed. Entropy first, then a fresh execve,
        gives each clone its own (see docs/security.md for what stays shared).
        """
        if self.processes or self.containers:
            raise ValueError("reseed is only for a VM that runs no container yet")
        sys_.set_clock(require(message, "time_ns", int))
        sys_.add_entropy(bytes.fromhex(require(message, "entropy", str))[:512])
        self.reexec_pending = True
        return {}

    def _reexec(self) -> None:
        """Execute the agent again on the same channel, after everything sent is written."""
        deadline = time.monotonic() + 5
        while self._unwritten() and self.connected and time.monotonic() < deadline:
            self._flush()
            if self._unwritten():
                time.sleep(0.002)
        log = [*self.boot_log, f"{time.monotonic():.3f} executing again"]
        state = {"fd": self.channel_fd, "offset": self.stream_end, "log": log}
        os.set_inheritable(self.channel_fd, True)
        os.environ[REEXEC_ENV] = json.dumps(state)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, sys.orig_argv)

    def _do_setup(self, message: dict[str, Any]) -> dict[str, Any]:
        self.hostname = require(message, "hostname", str)
        if os.getpid() == 1:
            socket.sethostname(self.hostname)
        if "time_ns" in message:
            sys_.set_clock(require(message, "time_ns", int))
        if "entropy" in message:
            sys_.add_entropy(bytes.fromhex(require(message, "entropy", str))[:512])
        etc = require(message, "etc_files", dict)
        self.etc_files = {str(k): str(v) for k, v in etc.items() if k in ("hosts", "hostname", "resolv.conf")}
        network = message.get("network")
        if network is not None:
            if not isinstance(network, dict):
                raise ProtocolError("setup's network must be an object")
            return {"interfaces": guest_net.configure(network)}
        return {}

    def _do_signal(self, message: dict[str, Any]) -> dict[str, Any]:
        process = self.processes.get(require(message, "process", int))
        signum = require(message, "signal", int)
        if process is not None and process.status is None and 0 < signum < signal.NSIG:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.init_pid, signum)
        return {}

    def _do_resize(self, message: dict[str, Any]) -> dict[str, Any]:
        process = self.processes.get(require(message, "process", int))
        rows, cols = require(message, "rows", int), require(message, "cols", int)
        if process is not None and process.tty_master is not None:
            set_window_size(process.tty_master, rows, cols)
        return {}

    def _do_shutdown(self, message: dict[str, Any]) -> dict[str, Any]:
        for process in self.processes.values():
            if process.status is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.init_pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(p.status is None for p in self.processes.values()) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
        for container in self.containers.values():
            containers.teardown(container)
        for path in reversed(self.other_mounts + list(self.layer_mounts.values())):
            try:
                sys_.umount(path)
            except OSError:
                sys_.umount(path, sys_.MNT_DETACH)
        os.sync()
        self.running = False
        return {}

    # -- processes ------------------------------------------------------------
    def _register(self, process: Process) -> Process:
        stream = process.stream
        for fd in (*process.outputs, process.stdin_fd):
            if fd is not None:
                self.by_fd[fd] = process
        for fd in process.outputs:
            self._watch(fd, 0 if self.output_paused else selectors.EVENT_READ)
        self.processes[stream] = process
        self.by_shim[process.shim_pid] = process
        return process

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            process = self.by_shim.pop(pid, None)
            if process is None or process.status == -1:
                continue  # an orphan reparented to PID 1, or a start that failed
            code = os.waitstatus_to_exitcode(status)
            process.status = code if code >= 0 else 128 - code
            owner = process.owner
            if owner is not None and owner.cgroup is not None:
                process.oom_killed = guest_cgroups.oom_kills(owner.cgroup) > owner.oom_base
                # Nothing of a container outlives its main process (a PID
                # namespace shared with other containers would keep them).
                guest_cgroups.kill_all(owner.cgroup)
            self._maybe_report_exit(process)

    def _maybe_report_exit(self, process: Process) -> None:
        if process.status is None or process.outputs:
            return
        if process.stdin_fd is not None:
            self._close_fd(process.stdin_fd)
            process.stdin_fd = None
        self.processes.pop(process.stream, None)
        exited: dict[str, Any] = {"type": "exited", "process": process.stream, "status": process.status}
        if process.oom_killed:
            exited["oom_killed"] = True
        self.send(exited)

    def _close_fd(self, fd: int) -> None:
        self._watch(fd, 0)
        self.by_fd.pop(fd, None)
        with contextlib.suppress(OSError):
            os.close(fd)

    def _on_output(self, fd: int) -> None:
        process = self.by_fd[fd]
        try:
            data = os.read(fd, MAX_DATA_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            # EIO: the last holder of a pty's other end closed it. Anything else
            # also ends this stream rather than the agent.
            if exc.errno != errno.EIO:
                print(f"hyper-agent: reading process output failed: {exc.strerror}", file=sys.stderr)
            data = b""
        kind = process.outputs[fd]
        if data:
            self.send_data(kind, process.stream, data)
            return
        del process.outputs[fd]
        if fd == process.tty_master:
            process.tty_master = None
        self._close_fd(fd)
        self._maybe_report_exit(process)

    def _handle_stdin(self, stream: int, data: bytes) -> None:
        process = self.processes.get(stream)
        target = None
        if process is not None:
            target = process.tty_master if process.tty_master is not None else process.stdin_fd
        if process is None or target is None:
            # Nobody will read it: taken off the host's hands all the same, so
            # that a writer waiting for credit is not left waiting.
            if data:
                self.send({"type": "stdin_credit", "process": stream, "bytes": len(data)})
            return
        if not data:
            process.stdin_eof = True
        process.stdin_buffer += data
        self._pump_stdin(process)

    def _credit_stdin(self, process: Process, taken: int) -> None:
        """Tell the host it may send `taken` more bytes, in batches."""
        process.stdin_owed += taken
        if process.stdin_owed and (process.stdin_owed >= STDIN_WINDOW // 4 or not process.stdin_buffer):
            self.send({"type": "stdin_credit", "process": process.stream, "bytes": process.stdin_owed})
            process.stdin_owed = 0

    def _pump_stdin(self, process: Process) -> None:
        target = process.tty_master if process.tty_master is not None else process.stdin_fd
        if target is None:
            return
        taken = 0
        while process.stdin_buffer:
            try:
                written = os.write(target, process.stdin_buffer[:MAX_DATA_CHUNK])
            except BlockingIOError:
                break
            except OSError:
                taken += len(process.stdin_buffer)
                process.stdin_buffer.clear()  # the reader is gone
                break
            del process.stdin_buffer[:written]
            taken += written
        if taken:
            self._credit_stdin(process, taken)
        reading = selectors.EVENT_READ if target in process.outputs and not self.output_paused else 0
        if process.stdin_buffer:
            self._watch(target, reading | selectors.EVENT_WRITE)
        elif process.stdin_eof and target == process.stdin_fd:
            self._close_fd(target)
            process.stdin_fd = None
        else:
            self._watch(target, reading)

    # -- loop -----------------------------------------------------------------
    def run(self) -> None:
        if not self.connected:
            self._probe_connection()
        while self.running:
            timeout = None if self.connected else RECONNECT_POLL_SECONDS
            for key, events in self.selector.select(timeout):
                fd = int(key.fd)
                if fd == self._wakeup_r:
                    _drain(fd)
                    self._reap()
                elif fd == self.channel_fd:
                    if events & selectors.EVENT_READ:
                        self._on_channel_readable()
                    if events & selectors.EVENT_WRITE and self.connected:
                        self._flush()
                        self._update_channel_watch()
                        self._update_output_watches()
                elif fd in self.by_fd:
                    process = self.by_fd[fd]
                    if events & selectors.EVENT_WRITE:
                        self._pump_stdin(process)
                    if events & selectors.EVENT_READ and fd in self.by_fd:
                        self._on_output(fd)
                if not self.running:
                    break
            if self.reexec_pending:
                self._reexec()
            if not self.connected and self.running:
                self._probe_connection()
        self._flush_before_exit()

    def _flush_before_exit(self) -> None:
        deadline = time.monotonic() + 2
        while self._unwritten() and self.connected and time.monotonic() < deadline:
            self._flush()
            if self._unwritten():
                time.sleep(0.005)


def process_fingerprint() -> dict[str, int]:
    """What must differ between clones of one template once reseeded: where
    the kernel put this process's stack, and the interpreter's hash seed (both
    drawn at execve from the CRNG). For the host's tests; it is no secret from it."""
    with open("/proc/self/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return {"start_stack": int(fields[25]), "hash_seed": hash("hyper") & 0xFFFFFFFF}


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def main() -> None:
    """PID 1's entry point. It never returns: the VM powers off at the end."""
    try:
        carried = os.environ.pop(REEXEC_ENV, None)
        if carried is None:
            channel, log = guest_boot.boot()
            Agent(channel, log).run()
        else:
            # Executed again by _reexec: booted already; the stream goes on where it was.
            state = json.loads(carried)
            os.set_inheritable(state["fd"], False)
            agent = Agent(state["fd"], [*state["log"], f"{time.monotonic():.3f} agent executed again"])
            agent.retained_base = agent.write_pos = int(state["offset"])
            agent.run()
    except BaseException:
        import traceback

        traceback.print_exc()
        print("hyper-agent: fatal error, powering off", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys_.power_off()
