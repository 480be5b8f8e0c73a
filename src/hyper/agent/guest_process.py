"""Inside the guest: creating a container process, and what the agent knows of it.

Standard library only. A process is started through a forked shim that
enters new mount and PID namespaces and forks the container's PID 1, so the
first process of a container is its PID 1 as in Docker, and when it exits
the kernel ends everything else in its namespace. An exec's shim instead
joins the mount and PID namespaces and the root of a running container's
main process, so its child is one more process of that container (and dies
with its PID 1). The shim relays the exit status (a signal death as 128+N);
two close-on-exec pipes report the PID and, if exec never happened, why.

The agent also forks children that run its own Python code inside a
container's root (copying files in and out): they are Processes too, with
the same stdio and exit reporting.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios

from hyper.agent import guest_container as containers
from hyper.agent import guest_sys as sys_
from hyper.agent.protocol import FrameKind

# Not `from typing import TYPE_CHECKING`: importing typing costs the guest
# a tenth of a second under TCG. Type checkers treat this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Process:
    """One process the host started; plain class to keep dataclasses out of the guest."""

    __slots__ = (
        "init_pid",
        "oom_killed",
        "outputs",
        "owner",
        "shim_pid",
        "status",
        "stdin_buffer",
        "stdin_eof",
        "stdin_fd",
        "stdin_owed",
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
        self.stdin_owed = 0  # stdin bytes taken and not yet credited to the host
        self.status = status
        # The container whose main process this is (its exit ends the container); None for execs.
        self.owner: containers.Container | None = None
        self.oom_killed = False  # an OOM killer killed a process of its container during its run


class ContainerRoot:
    """Open handles on a container's root and, while it runs, its namespaces.

    Opened by the agent, so that a container that is gone is refused before
    anything is forked; a forked child enters them. Without namespaces (the
    container has no running main process) the root is the container's
    rootfs as the agent sees it.
    """

    __slots__ = ("cgroupns_fd", "mnt_fd", "pid_fd", "root_fd")

    def __init__(
        self,
        root_fd: int,
        mnt_fd: int | None = None,
        pid_fd: int | None = None,
        cgroupns_fd: int | None = None,
    ) -> None:
        self.root_fd, self.mnt_fd, self.pid_fd, self.cgroupns_fd = root_fd, mnt_fd, pid_fd, cgroupns_fd

    @classmethod
    def open(cls, container: containers.Container, *, need_running: bool) -> ContainerRoot:
        main = container.running_main()
        if main is None:
            if need_running:
                raise containers.not_running(container.id)
            return cls(_open_dir(container.rootfs))
        proc = f"/proc/{main.init_pid}"
        fds: list[int] = []
        try:
            fds.append(os.open(f"{proc}/ns/pid", os.O_RDONLY | os.O_CLOEXEC))
            if os.fstat(fds[0]).st_ino != container.pid_ns:
                raise ProcessLookupError(errno.ESRCH, "PID recycled")
            fds.append(os.open(f"{proc}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC))
            fds.append(_open_dir(f"{proc}/root"))
            if container.cgroup is not None:
                fds.append(os.open(f"{proc}/ns/cgroup", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            # The main process exited and is not reaped yet (or its PID was reused).
            for fd in fds:
                os.close(fd)
            if need_running:
                raise containers.not_running(container.id) from None
            return cls(_open_dir(container.rootfs))
        return cls(fds[2], fds[1], fds[0], fds[3] if len(fds) > 3 else None)

    @property
    def fds(self) -> list[int]:
        return [fd for fd in (self.root_fd, self.mnt_fd, self.pid_fd) if fd is not None and fd >= 0]

    @property
    def all_fds(self) -> list[int]:
        """`fds` and the cgroup namespace's, which only an exec's process joins."""
        return [*self.fds, *([self.cgroupns_fd] if self.cgroupns_fd is not None else [])]

    def enter(self, *, pid_namespace: bool) -> None:
        """In a forked child: join the mount namespace, chroot, and with
        `pid_namespace` make the next fork's child a member of the container's
        PID namespace. Closes the handles."""
        if self.mnt_fd is not None:
            # Joining a mount namespace resets the root to the namespace's
            # own, the guest's initramfs: the container's root is this fd.
            sys_.setns(self.mnt_fd, sys_.CLONE_NEWNS)
        os.fchdir(self.root_fd)
        os.chroot(".")
        if pid_namespace and self.pid_fd is not None:
            sys_.setns(self.pid_fd, sys_.CLONE_NEWPID)
        for fd in self.fds:  # the cgroup namespace's stays: the next fork's child joins it
            with contextlib.suppress(OSError):
                os.close(fd)
        self.mnt_fd = self.pid_fd = None
        self.root_fd = -1

    def close(self) -> None:
        for fd in self.all_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.mnt_fd = self.pid_fd = self.cgroupns_fd = None
        self.root_fd = -1

    def __enter__(self) -> ContainerRoot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def spawn(stream: int, request: containers.ProcessRequest, join: ContainerRoot | None = None) -> Process:
    """Start `request`'s process: PID 1 of new namespaces, or with `join` one
    more process of a running container."""
    parent_fds: list[int] = []
    child_fds: list[int] = []
    tty_fd = None
    if request.tty:
        master, tty_fd = os.openpty()
        set_window_size(master, request.rows, request.cols)
        parent_fds.append(master)
        child_fds.append(tty_fd)
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
    # The cgroup's descriptors are the agent's (it closes them); the child joins through them.
    cgroup_fds = [fd for fd in (request.cgroup_fd, request.cgroupns_fd, request.pid_ns_fd) if fd is not None]
    shim = os.fork()
    if shim == 0:
        _run_shim(
            request,
            tty_fd,
            stdio,
            join,
            keep=[*child_fds, *cgroup_fds, report_w, pid_w],
            report_w=report_w,
            pid_w=pid_w,
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
    tty_fd: int | None,
    stdio: tuple[int, int, int] | None,
    join: ContainerRoot | None,
    *,
    keep: list[int],
    report_w: int,
    pid_w: int,
) -> None:
    """The forked shim: enters new namespaces (or joins a container's), forks
    the process, relays its status."""
    try:
        _leave_agent([*keep, *(join.fds if join is not None else ())])
        if join is None and request.pid_ns_fd is not None:
            sys_.unshare(sys_.CLONE_NEWNS)
            sys_.setns(request.pid_ns_fd, sys_.CLONE_NEWPID)  # the fork below is the pod's
        elif join is None:
            sys_.unshare(sys_.CLONE_NEWNS | sys_.CLONE_NEWPID)
        else:
            join.enter(pid_namespace=True)
        init = os.fork()
        if init == 0:
            if stdio is not None:
                for target, fd in enumerate(stdio):
                    os.dup2(fd, target)
            os.close(pid_w)
            containers.exec_in_container(request, tty_fd, report_w, in_root=join is not None)
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


def spawn_call(stream: int, call: Callable[[], int], *, stdin: bool, keep: list[int]) -> Process:
    """Fork a child that runs `call` with its stdio on pipes and the agent's
    descriptors closed but `keep`; its return value is the exit status, an
    exception is written to stderr and exits 1."""
    if stdin:
        stdin_r, stdin_w = os.pipe()
    else:
        stdin_r, stdin_w = os.open("/dev/null", os.O_RDONLY), -1
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    child = os.fork()
    if child == 0:
        status = 1
        try:
            _leave_agent([stdin_r, out_w, err_w, *keep])
            for target, fd in enumerate((stdin_r, out_w, err_w)):
                if fd != target:
                    os.dup2(fd, target)
                    os.close(fd)
            status = call()
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(2, f"{exc}\n".encode(errors="replace")[:4000])
        finally:
            os._exit(status)
    for fd in (stdin_r, out_w, err_w):
        os.close(fd)
    process = Process(stream, child, child)
    process.stdin_fd = stdin_w if stdin else None
    process.outputs[out_r] = FrameKind.STDOUT
    process.outputs[err_r] = FrameKind.STDERR
    for fd in (stdin_w, out_r, err_r):
        if fd >= 0:
            os.set_blocking(fd, False)
    return process


def _leave_agent(keep: list[int]) -> None:
    """In a child forked from the agent: drop its signal set-up and descriptors."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in _open_fds():
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):  # one of them was listdir's own
                os.close(fd)


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


def spawn_keepalive(stream: int) -> Process:
    """A pod's infra process: PID 1 of a new PID namespace, which the pod's
    containers join when the pod shares one (`hyper pod create --share pid`),
    reaping what is reparented to it, until a signal ends it."""
    pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
    shim = os.fork()
    if shim == 0:
        try:
            _leave_agent([pid_w])
            os.closerange(0, 3)
            sys_.unshare(sys_.CLONE_NEWPID)
            init = os.fork()
            if init == 0:
                os.close(pid_w)  # the agent reads the pid until every copy is closed
                _keep_alive()
            os.write(pid_w, str(init).encode())
            os.close(pid_w)
            _, status = os.waitpid(init, 0)
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)
        except BaseException:
            os._exit(125)
    os.close(pid_w)
    init_text = _read_all(pid_r)
    if not init_text.isdigit():
        raise containers.StartError("setup", 0, "the pod's keep-alive could not be started")
    return Process(stream, shim, int(init_text))


def _keep_alive() -> None:
    """PID 1 of the pod's PID namespace: reap, until SIGTERM, SIGINT or SIGHUP
    (a namespace's init gets only the signals it handles)."""

    def end(signum: int, frame: object) -> None:
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, end)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    while True:
        signal.pause()
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
