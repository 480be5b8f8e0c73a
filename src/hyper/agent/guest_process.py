"""Inside the guest: creating a container process, and what the agent knows of it.

Standard library only. A process is started through a forked shim that
enters new mount and PID namespaces and forks the container's PID 1, so the
first process of a container is its PID 1 as in Docker, and when it exits
the kernel ends everything else in its namespace. The shim relays the exit
status (a signal death as 128+N); two close-on-exec pipes report the PID
and, if exec never happened, why.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import termios

from hyper.agent import guest_container as containers
from hyper.agent import guest_sys as sys_
from hyper.agent.protocol import FrameKind


class Process:
    """One process the host started; plain class to keep dataclasses out of the guest."""

    __slots__ = (
        "init_pid",
        "outputs",
        "shim_pid",
        "status",
        "stdin_buffer",
        "stdin_eof",
        "stdin_fd",
        "stream",
        "tty_master",
    )

    def __init__(self, stream: int, shim_pid: int, init_pid: int, status: int | None = None) -> None:
        self.stream = stream
        self.shim_pid = shim_pid
        self.init_pid = init_pid
        self.stdin_fd: int | None = None
        self.tty_master: int | None = None
        self.outputs: dict[int, FrameKind] = {}
        self.stdin_buffer = bytearray()
        self.stdin_eof = False
        self.status = status


def spawn(stream: int, request: containers.ProcessRequest) -> Process:
    parent_fds: list[int] = []
    child_fds: list[int] = []
    tty_path = None
    if request.tty:
        master, slave = os.openpty()
        set_window_size(master, request.rows, request.cols)
        tty_path = os.ttyname(slave)
        parent_fds.append(master)
        child_fds.append(slave)
        stdio = None
    else:
        if request.stdin:
            stdin_r, stdin_w = os.pipe()
            parent_fds.append(stdin_w)
        else:
            stdin_r, stdin_w = os.open("/dev/null", os.O_RDONLY), -1
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        parent_fds += [out_r, err_r]
        child_fds += [stdin_r, out_w, err_w]
        stdio = (stdin_r, out_w, err_w)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
    shim = os.fork()
    if shim == 0:
        _run_shim(
            request, tty_path, stdio, keep=[*child_fds, report_w, pid_w], report_w=report_w, pid_w=pid_w
        )
    for fd in (*child_fds, report_w, pid_w):
        os.close(fd)
    init_text = _read_all(pid_r)
    failure = _read_all(report_r)
    if failure or not init_text.isdigit():
        for fd in parent_fds:
            os.close(fd)
        if failure:
            raise containers.parse_start_error(failure)
        raise containers.StartError("setup", 0, "the process could not be started")
    process = Process(stream, shim, int(init_text))
    if request.tty:
        process.tty_master = parent_fds[0]
        process.outputs[parent_fds[0]] = FrameKind.STDOUT
    else:
        process.stdin_fd = stdin_w if request.stdin else None
        process.outputs[parent_fds[-2]] = FrameKind.STDOUT
        process.outputs[parent_fds[-1]] = FrameKind.STDERR
    for fd in parent_fds:
        os.set_blocking(fd, False)
    return process


def _run_shim(
    request: containers.ProcessRequest,
    tty_path: str | None,
    stdio: tuple[int, int, int] | None,
    *,
    keep: list[int],
    report_w: int,
    pid_w: int,
) -> None:
    """The forked shim: enters new namespaces, forks the container's PID 1, relays its status."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in _open_fds():
            if fd > 2 and fd not in keep:
                with contextlib.suppress(OSError):  # one of them was listdir's own
                    os.close(fd)
        sys_.unshare(sys_.CLONE_NEWNS | sys_.CLONE_NEWPID)
        init = os.fork()
        if init == 0:
            if stdio is not None:
                for target, fd in enumerate(stdio):
                    os.dup2(fd, target)
            os.close(pid_w)
            containers.exec_in_container(request, tty_path, report_w)
        os.write(pid_w, str(init).encode())
        for fd in keep:
            os.close(fd)
        os.closerange(0, 3)
        _, status = os.waitpid(init, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(
                report_w,
                f"setup\0{getattr(exc, 'errno', 0) or 0}\0{type(exc).__name__}: {exc}".encode(),
            )
        os._exit(125)


def set_window_size(fd: int, rows: int, cols: int) -> None:
    rows, cols = max(1, min(rows, 0xFFFF)), max(1, min(cols, 0xFFFF))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _open_fds() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/fd")]
