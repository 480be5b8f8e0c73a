"""Inside the guest: assemble a container's root and start its processes.

Standard library only. A container's root is an overlay of read-only layer
disks under a writable upper directory on its own disk, with /proc, /sys,
/dev and the /etc files a container expects. Each process gets its own mount
and PID namespace (the first process is PID 1 of its container, as in
Docker), masks and read-only /proc and /sys paths as runc does, and enters
the container's root with pivot_root (the agent has left the initramfs for a
tmpfs at boot, guest_boot, so this works) and the old root detached, so no
chroot trick leads back to the agent. It then takes Docker's confinement
(capabilities, seccomp, no-new-privileges, rlimits: guest_security) and the
requested user, and execs. A process exec'ed into a running container joins
its main process's namespaces and root instead (guest_process does that
before it forks), skips the mounting, and takes the same confinement.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat

# os.execvpe imports warnings on first use, which in the child is after the
# chroot, where the agent's standard library is out of reach: import it now.
import warnings  # noqa: F401

from hyper.agent import guest_cgroups, guest_security, guest_volumes
from hyper.agent import guest_sys as sys_
from hyper.agent.guest_sys import MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT

# Not `from typing import TYPE_CHECKING`: importing typing costs the guest
# a tenth of a second under TCG. Type checkers treat this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from hyper.agent.guest_process import Process

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUN_ROOT = "/run/hyper"
# Character devices every container gets in its /dev: (name, major, minor).
DEVICE_NODES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
# runc's defaults (Docker's MaskedPaths and ReadonlyPaths), not applied to privileged containers.
MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEFAULT_SHM_BYTES = 64 << 20
# Devices a privileged container does not get: the agent's channel.
AGENT_DEVICE_PREFIXES = ("vport", "hvc")
DEV_SYMLINKS = (
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)


class StartError(Exception):
    """A process could not be started; `stage` says where, `errno` why.

    Also the agent's structured refusal of other requests about a container:
    stage "container" (ENOENT: no such container, ESRCH: it is not running)
    and stage "archive" (the path's errno).
    """

    def __init__(self, stage: str, code: int, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.errno = code
        self.message = message


def not_running(container_id: str) -> StartError:
    return StartError("container", errno.ESRCH, f"container {container_id} is not running")


# Plain classes rather than dataclasses: importing dataclasses pulls in
# inspect, ast and tokenize, a quarter of a second of the guest's boot under TCG.
class Container:
    __slots__ = (
        "cgroup",
        "confinement",
        "id",
        "main",
        "mounts",
        "oom_base",
        "pid_ns",
        "privileged",
        "rootfs",
        "writable",
    )

    def __init__(self, container_id: str, rootfs: str, *, privileged: bool = False) -> None:
        self.id = container_id
        self.rootfs = rootfs
        self.privileged = privileged
        # Its cgroup's path (guest_cgroups), None where the kernel has none;
        # and the cgroup's OOM kill count when the main process started.
        self.cgroup: str | None = None
        self.oom_base = 0
        self.writable: str | None = None  # where its writable disk is mounted
        # What the main process was confined with (guest_security's message):
        # an exec takes the same, as in Docker.
        self.confinement: dict[str, object] | None = None
        self.mounts: list[str] = []  # mounted paths, in mount order
        # The process `start` made PID 1 of the container; exec joins its
        # namespaces. `pid_ns` is the inode of that PID namespace, which tells
        # its processes apart and guards against a recycled PID.
        self.main: Process | None = None
        self.pid_ns = 0

    def running_main(self) -> Process | None:
        """The main process while it runs; None before start and after it exited."""
        main = self.main
        return main if main is not None and main.status is None else None


class ProcessRequest:
    """A process the host asked for, as the agent passes it to the child."""

    __slots__ = (
        "args",
        "cgroup_fd",
        "cgroupns_fd",
        "cols",
        "confinement",
        "cwd",
        "env",
        "hostname",
        "init",
        "make_cwd",
        "pid_ns_fd",
        "privileged",
        "rootfs",
        "rows",
        "stdin",
        "tty",
        "user",
    )

    def __init__(
        self,
        *,
        rootfs: str,
        args: list[str],
        env: list[str],
        cwd: str,
        user: str,
        hostname: str,
        tty: bool,
        stdin: bool,
        rows: int = 24,
        cols: int = 80,
        make_cwd: bool = True,
        confinement: dict[str, object] | None = None,
        privileged: bool = False,
        init: bool = False,
        cgroup_fd: int | None = None,
        cgroupns_fd: int | None = None,
        pid_ns_fd: int | None = None,
    ) -> None:
        self.rootfs, self.args, self.env, self.cwd, self.user = rootfs, args, env, cwd, user
        self.hostname, self.tty, self.stdin, self.rows, self.cols = hostname, tty, stdin, rows, cols
        # guest_security's message; None runs the process unconfined (the
        # agent's own copies into a container's root, never a user's command).
        self.confinement = confinement
        self.privileged = privileged  # no masked or read-only paths
        self.init = init  # a minimal init is PID 1 and runs the command as its child
        # Docker creates a missing working directory for a container's main
        # process, but an exec's must exist.
        self.make_cwd = make_cwd
        # The container's cgroup.procs, which the child joins first; an exec
        # also joins the main process's cgroup namespace (`cgroupns_fd`).
        self.cgroup_fd = cgroup_fd
        self.cgroupns_fd = cgroupns_fd
        # A PID namespace to join instead of a new one: a pod's that shares one.
        self.pid_ns_fd = pid_ns_fd


class Identity:
    __slots__ = ("gid", "groups", "home", "uid")

    def __init__(self, uid: int, gid: int, groups: tuple[int, ...], home: str) -> None:
        self.uid, self.gid, self.groups, self.home = uid, gid, groups, home

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and (self.uid, self.gid, self.groups, self.home) == (
            other.uid,
            other.gid,
            other.groups,
            other.home,
        )

    def __hash__(self) -> int:
        return hash((self.uid, self.gid, self.groups, self.home))

    def __repr__(self) -> str:
        return f"Identity(uid={self.uid}, gid={self.gid}, groups={self.groups}, home={self.home!r})"


def _no_symlinks_under(root: str, relative: str) -> str:
    """Join `relative` under `root`, refusing a symlink anywhere on the way.

    The image is the tenant's and may hold a symlink such as /dev -> /; the
    agent must never mount through it onto its own tree.
    """
    path = root
    for part in [p for p in relative.split("/") if p not in ("", ".")]:
        if part == "..":
            raise StartError("mount", 22, f"path {relative!r} leaves the container root")
        path = os.path.join(path, part)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            raise StartError("mount", 40, f"/{relative} is a symlink in the image; cannot mount there")
    return path


def _ensure_dir(root: str, relative: str) -> str:
    path = _no_symlinks_under(root, relative)
    os.makedirs(path, exist_ok=True)
    return path


def _ensure_file(root: str, relative: str) -> str:
    path = _no_symlinks_under(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):
        with open(path, "a"):
            pass
    return path


def assemble_rootfs(
    container_id: str,
    layer_dirs: list[str],
    writable_dir: str,
    etc_files: dict[str, str],
    *,
    privileged: bool = False,
    shm_bytes: int = DEFAULT_SHM_BYTES,
    mounts: list[dict[str, object]] | None = None,
    read_only: bool = False,
    agent_mounts: list[str] | None = None,
) -> Container:
    """Overlay the layers (bottom → top) under the writable dir; add /dev, /sys, /etc
    files, then the container's volumes, binds and tmpfs (guest_volumes; the VM's
    share goes on `agent_mounts`), and with `read_only` make the root read-only.

    /sys is read-only and /dev holds only the basic nodes, unless `privileged`:
    then /sys is writable and /dev has every device of the VM but the agent's channel.
    """
    base = f"{RUN_ROOT}/containers/{container_id}"
    rootfs = f"{base}/rootfs"
    upper, work = f"{writable_dir}/upper", f"{writable_dir}/work"
    for path in (rootfs, upper, work, f"{base}/etc"):
        os.makedirs(path, exist_ok=True)
    container = Container(container_id, rootfs, privileged=privileged)
    lower = ":".join(reversed(layer_dirs))  # overlayfs lists the top layer first
    sys_.mount("overlay", rootfs, "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}")
    container.mounts.append(rootfs)

    sysfs = _ensure_dir(rootfs, "sys")
    sysfs_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | (0 if privileged else MS_RDONLY)
    sys_.mount("sysfs", sysfs, "sysfs", sysfs_flags)
    container.mounts.append(sysfs)
    _ensure_dir(rootfs, "proc")  # mounted by each process, inside its PID namespace

    dev = _ensure_dir(rootfs, "dev")
    sys_.mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    container.mounts.append(dev)
    for name, major, minor in DEVICE_NODES:
        os.mknod(f"{dev}/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(f"{dev}/{name}", 0o666)
    for name, target in DEV_SYMLINKS:
        os.symlink(target, f"{dev}/{name}")
    for sub in ("pts", "shm"):
        os.makedirs(f"{dev}/{sub}", exist_ok=True)
    if privileged:
        _all_devices(dev)
    sys_.mount("/dev/pts", f"{dev}/pts", None, sys_.MS_BIND)
    container.mounts.append(f"{dev}/pts")
    shm_kib = max(shm_bytes, 4096) // 1024
    sys_.mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"mode=1777,size={shm_kib}k")
    container.mounts.append(f"{dev}/shm")

    for name, content in etc_files.items():
        source = f"{base}/etc/{name}"
        with open(source, "w") as f:
            f.write(content)
        target = _ensure_file(rootfs, f"etc/{name}")
        sys_.mount(source, target, None, sys_.MS_BIND)
        container.mounts.append(target)
    try:
        shared = agent_mounts if agent_mounts is not None else []
        guest_volumes.mount_all(rootfs, mounts or [], container.mounts, shared)
    except guest_volumes.MountError as exc:
        teardown(container)
        raise StartError("mount", exc.errno, exc.message) from exc
    except BaseException:
        teardown(container)
        raise
    if read_only:
        guest_volumes.read_only_root(rootfs)
    return container


def _all_devices(dev: str) -> None:
    """Nodes for the VM's devices in a privileged container's /dev (as Docker
    gives the host's), from sysfs; the agent's channel is left out."""
    for kind, type_bit in (("char", stat.S_IFCHR), ("block", stat.S_IFBLK)):
        try:
            entries = os.listdir(f"/sys/dev/{kind}")
        except FileNotFoundError:
            continue
        for numbers in entries:
            try:
                with open(f"/sys/dev/{kind}/{numbers}/uevent") as f:
                    fields = dict(line.rstrip("\n").partition("=")[::2] for line in f)
            except OSError:
                continue
            name = fields.get("DEVNAME", "")
            if not name or ".." in name.split("/") or name.startswith((*AGENT_DEVICE_PREFIXES, "pts/")):
                continue
            major, _, minor = numbers.partition(":")
            path = f"{dev}/{name}"
            if os.path.lexists(path):
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mknod(path, 0o660 | type_bit, os.makedev(int(major), int(minor)))


def teardown(container: Container) -> None:
    for path in reversed(container.mounts):
        try:
            sys_.umount(path)
        except OSError:
            sys_.umount(path, sys_.MNT_DETACH)
    container.mounts.clear()


def _read_table(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return []


def resolve_identity(
    user: str, passwd_path: str, group_path: str, group_add: list[str] | None = None
) -> Identity:
    """Docker's `-u` forms: name, uid, name:group, uid:gid, against the image's
    files; `group_add` (--group-add: names or numbers) joins the user's groups."""
    name, _, group = user.partition(":")
    name = name or "0"
    passwd = [row for row in _read_table(passwd_path) if len(row) >= 7]
    groups = [row for row in _read_table(group_path) if len(row) >= 4]
    entry = next((row for row in passwd if row[0] == name), None)
    if entry is None and name.isdigit():
        entry = next((row for row in passwd if row[2] == name), None)
    if entry is not None:
        uid, gid, home, login = int(entry[2]), int(entry[3]), entry[5] or "/", entry[0]
    elif name.isdigit():
        uid, gid, home, login = int(name), 0, "/", ""
    else:
        raise StartError("user", 22, f"unable to find user {name}: no matching entries in passwd file")
    if group:
        match = next((row for row in groups if row[0] == group), None)
        if match is not None:
            gid = int(match[2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise StartError("user", 22, f"unable to find group {group}: no matching entries in group file")
    extra = [
        int(row[2])
        for row in groups
        if login and login in row[3].split(",") and row[2].isdigit() and int(row[2]) != gid
    ]
    for added in group_add or ():
        match = next((row for row in groups if row[0] == added), None)
        if match is None and not added.isdigit():
            raise StartError("user", 22, f"unable to find group {added}: no matching entries in group file")
        number = int(match[2] if match is not None else added)
        if number not in extra:
            extra.append(number)
    return Identity(uid, gid, tuple(extra), home)


def complete_env(env: list[str], identity: Identity, hostname: str, tty: bool) -> list[str]:
    """Docker's defaults for what the image and the user left unset."""
    names = {item.partition("=")[0] for item in env}
    result = list(env)
    if "PATH" not in names:
        result.insert(0, f"PATH={DEFAULT_PATH}")
    if "HOSTNAME" not in names:
        result.append(f"HOSTNAME={hostname}")
    if "HOME" not in names:
        result.append(f"HOME={identity.home}")
    if tty and "TERM" not in names:
        result.append("TERM=xterm")
    return result


def env_dict(env: list[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        result[key] = value
    return result


def exec_in_container(
    request: ProcessRequest, tty_fd: int | None, error_fd: int, *, in_root: bool = False
) -> None:
    """Runs in the forked child that is PID 1 of the new namespaces; never returns.

    With `in_root` the child was forked inside a running container's
    namespaces and root (an exec): nothing is mounted. `tty_fd` is the
    terminal's slave side, which becomes the controlling terminal and stdio.
    Any failure is written to `error_fd` as `stage\\0errno\\0message` before
    exiting, so that the agent can answer with Docker's 126 or 127.
    """
    rootfs, args, cwd = request.rootfs, request.args, request.cwd
    stage = "setup"
    try:
        for signum in range(1, signal.NSIG):
            if signum not in (signal.SIGKILL, signal.SIGSTOP):
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.setsid()
        if tty_fd is not None:
            # Both imported by guest_process already: after an exec's chroot
            # the agent's standard library is out of reach.
            import fcntl
            import termios

            fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)
            for target in (0, 1, 2):
                os.dup2(tty_fd, target)
            if tty_fd > 2:
                os.close(tty_fd)
        if request.cgroup_fd is not None:
            if request.cgroupns_fd is None:
                guest_cgroups.join(request.cgroup_fd)
            else:
                os.write(request.cgroup_fd, b"0")
                sys_.setns(request.cgroupns_fd, guest_cgroups.CLONE_NEWCGROUP)
        if not in_root:
            stage = "mount"
            enter_root(
                rootfs,
                masked=not request.privileged,
                cgroup=request.cgroup_fd is not None,
                paths=request.confinement or {},
            )
        stage = "user"
        group_add = guest_security.read_groups(request.confinement) if request.confinement else None
        identity = resolve_identity(request.user, "/etc/passwd", "/etc/group", group_add)
        full_env = complete_env(request.env, identity, request.hostname, tty_fd is not None)
        stage = "cwd"
        if cwd and request.make_cwd:
            os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd or "/")
        stage = "confine"
        if request.confinement is not None:
            guest_security.confine_message(
                request.confinement, uid=identity.uid, gid=identity.gid, groups=identity.groups
            )
        else:
            os.setgroups(list(identity.groups))
            os.setgid(identity.gid)
            os.setuid(identity.uid)
        os.closerange(3, error_fd)
        os.closerange(error_fd + 1, 65536)
        if request.init and run_init(error_fd):
            return  # never: run_init's parent side exits
        stage = "exec"
        os.execvpe(args[0], args, env_dict(full_env))
    except StartError as exc:
        _report(error_fd, exc.stage, exc.errno, exc.message)
    except OSError as exc:
        _report(error_fd, stage, exc.errno or 0, _describe(stage, args, exc))
    except BaseException as exc:
        _report(error_fd, stage, 0, f"{type(exc).__name__}: {exc}")
    os._exit(127)


def enter_root(
    rootfs: str, *, masked: bool, cgroup: bool = False, paths: dict[str, object] | None = None
) -> None:
    """In a new mount namespace: this PID namespace's /proc, with `cgroup` this
    cgroup namespace's hierarchy at /sys/fs/cgroup (read-only unless privileged,
    as Docker mounts it), the masked and read-only paths (runc's, or those in
    `paths`, the confinement message, as CRI gives them), then pivot_root
    into `rootfs` with the old root detached."""
    sys_.mount(None, "/", None, MS_REC | sys_.MS_PRIVATE)
    sys_.mount("proc", f"{rootfs}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if cgroup and os.path.isdir(f"{rootfs}/sys/fs/cgroup"):
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | (MS_RDONLY if masked else 0)
        sys_.mount("cgroup2", f"{rootfs}/sys/fs/cgroup", "cgroup2", flags)
    if masked:
        given = paths or {}
        masked_paths = guest_security.read_paths(given, "masked_paths")
        readonly_paths = guest_security.read_paths(given, "readonly_paths")
        for path in MASKED_PATHS if masked_paths is None else masked_paths:
            _mask(_no_symlinks_under(rootfs, path))
        for path in READONLY_PATHS if readonly_paths is None else readonly_paths:
            _read_only(_no_symlinks_under(rootfs, path))
    os.chdir(rootfs)
    # pivot_root(".", "."): the old root is stacked under the new one, and
    # detaching "." then drops it, with no directory needed in the image.
    sys_.pivot_root(".", ".")
    sys_.umount(".", sys_.MNT_DETACH)
    os.chdir("/")


def _mask(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        sys_.mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
    else:
        sys_.mount("/dev/null", path, None, MS_BIND)


def _read_only(path: str) -> None:
    if not os.path.lexists(path):
        return
    sys_.mount(path, path, None, MS_BIND | MS_REC)
    sys_.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def run_init(error_fd: int) -> bool:
    """Docker's --init: this process stays PID 1 of the container and runs the
    command as its child, forwarding signals to it and reaping every orphan,
    and exits with the command's status. False in the child, which goes on to
    exec the command; the parent never returns."""
    child = os.fork()
    if child == 0:
        return False
    os.close(error_fd)  # the child's copy reports a failed exec

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in range(1, signal.NSIG):
        if signum not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, forward)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)


def _describe(stage: str, args: list[str], exc: OSError) -> str:
    """Docker's (Go's) wording: the docker CLI tells 126 from 127 by these
    lower-case texts ("permission denied", "is a directory", "no such file or directory")."""
    reason = go_strerror(exc)
    if stage == "exec":
        if exc.errno == errno.ENOENT and "/" not in args[0]:
            return f'exec: "{args[0]}": executable file not found in $PATH'
        return f'exec: "{args[0]}": {reason}'
    return f"{stage}: {reason}"


def go_strerror(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:] if exc.strerror else text


def _report(fd: int, stage: str, code: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, f"{stage}\0{code}\0{message}".encode()[:4000])


def parse_start_error(data: bytes) -> StartError:
    stage, _, rest = data.decode(errors="replace").partition("\0")
    code, _, message = rest.partition("\0")
    return StartError(stage, int(code) if code.isdigit() else 0, message)
