"""The jailer: the small program that confines one QEMU and then becomes it.

Run as `python -I -S jailer.py JSON` by the QEMU driver (hyper.vm.confine), so
that it starts in a fresh single-threaded process: hyperd has threads, and a
preexec function in a threaded parent is unsafe. Standard library only, and
short on purpose so that it can be audited in one reading. In order:

1. join the VM's cgroups (made and limited by the host beforehand);
2. unshare mount, IPC and network namespaces (and a user namespace first when
   not root), make every mount private, build a tmpfs root holding only the
   bind mounts it was given (read-only unless said otherwise), pivot into it
   and make it read-only;
3. set no core dumps, move the passed descriptors to the numbers QEMU's
   command line names and close every other one;
4. empty the capability bounding and ambient sets, take the VM's uid, gid and
   groups (which clears every capability), clear the inheritable set, set
   no_new_privs;
5. for a detached VM, fork: the parent reports the child's pid and exits, the
   child starts a new session; for a foreground VM, ask for SIGKILL when the
   parent dies (after the uid change, which would clear it);
6. execute QEMU with an empty environment.

Any failure exits with status 1 and one line on stderr (QEMU's log); the
host then removes what it made. QEMU itself adds its seccomp sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import resource
import signal
import sys

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
# statvfs flags of a mount, and the mount flags that keep them on a remount
# (a remount in a user namespace may not clear a flag it inherited).
KEPT_FLAGS = (
    (os.ST_RDONLY, MS_RDONLY),
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: the jailer imports nothing it does not use
    from collections.abc import Iterable, Sequence
    from typing import Any

libc = ctypes.CDLL(None, use_errno=True)


class JailError(Exception):
    pass


def check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    check(
        libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source or fstype} on {target}",
    )


def join_cgroups(directories: Iterable[str]) -> None:
    for directory in directories:
        with open(os.path.join(directory, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))


def enter_user_namespace(host_uid: int, host_gid: int) -> None:
    """A user namespace mapping only this user to itself: the capabilities to
    build the jail, over nothing of anyone else's."""
    check(libc.unshare(CLONE_NEWUSER), "unshare a user namespace")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{host_uid} {host_uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{host_gid} {host_gid} 1")


def kept_flags(path: str) -> int:
    flags = os.statvfs(path).f_flag
    return sum(mount_flag for st_flag, mount_flag in KEPT_FLAGS if flags & st_flag)


def build_root(root: str, mounts: Sequence[dict[str, Any]], symlinks: Sequence[Sequence[str]]) -> None:
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET), "unshare namespaces")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount(None, root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=1k")
    for item in mounts:
        target = root + item["target"]
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        if not os.path.lexists(target):
            if item["kind"] == "dir":
                os.mkdir(target, 0o755)
            else:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        mount(item["source"], target, None, MS_BIND | MS_REC)
        flags = kept_flags(target) | MS_REMOUNT | MS_BIND | MS_NOSUID
        if not item["writable"]:
            flags |= MS_RDONLY
        if item["kind"] != "device":
            flags |= MS_NODEV
        mount(None, target, None, flags)
    for path, value in symlinks:
        link = root + path
        parent = os.path.dirname(link)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        os.symlink(value, link)
    os.chdir(root)
    check(libc.pivot_root(b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=1k")


def move_fds(pairs: Sequence[Sequence[int]], keep: Sequence[int]) -> list[int]:
    """Put each passed descriptor at the number QEMU's command line names, move
    the jailer's own (`keep`) above them, and close every other. Returns the
    new numbers of `keep`."""
    floor = max([2, *(target for _, target in pairs)]) + 1
    kept = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in keep]
    moved = [(fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, floor), target) for source, target in pairs]
    for fd in {*keep, *(source for source, _ in pairs)}:
        os.close(fd)
    for temporary, target in moved:
        os.dup2(temporary, target, inheritable=True)
        os.close(temporary)
    wanted = {target for _, target in pairs} | set(kept)
    highest = max(wanted | {2}) + 1
    os.closerange(highest, 1 << 20)
    for fd in range(3, highest):
        if fd not in wanted:
            with contextlib.suppress(OSError):
                os.close(fd)
    return kept


def drop_capabilities(last: int, uid: int | None, gid: int | None, groups: list[int]) -> None:
    for cap in range(last + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap} from the bounding set")
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    if uid is not None and gid is not None:
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    check(libc.capset(header, data), "clear capabilities")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")


def main(plan: dict[str, Any]) -> None:
    # The jail's tree must be traversable by the VM's own user, whatever
    # umask hyperd keeps for its private files.
    os.umask(0o022)
    parent = os.getppid()
    with open("/proc/sys/kernel/cap_last_cap") as f:  # /proc is not in the jail
        last_cap = int(f.read())
    lease_fd, report_fd = plan["lease_fd"], plan["report_fd"]
    join_cgroups(plan["cgroups"])
    mode, why = plan["mode"], ""
    if mode == "user-namespace":
        try:
            enter_user_namespace(plan["host_uid"], plan["host_gid"])
        except (JailError, OSError) as exc:
            mode, why = "minimal", f" {exc}"  # not allowed here after all: do what can be done
    if mode in ("privileged", "user-namespace"):
        build_root(plan["root"], plan["mounts"], plan["symlinks"])
    os.write(report_fd, f"mode {mode}{why}\n".encode())
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core dump would hold guest memory
    report_fd, *_ = move_fds(plan["fds"], [report_fd, *([lease_fd] if lease_fd is not None else [])])
    drop_capabilities(last_cap, plan["uid"], plan["gid"], plan["groups"])
    if plan["detach"]:
        child = os.fork()
        if child:
            os.write(report_fd, f"pid {child}\n".encode())
            os._exit(0)
        os.setsid()
    elif plan["die_with_parent"]:
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "set the parent-death signal")
        if os.getppid() != parent:
            raise JailError("the parent exited before QEMU started")
    os.execve(plan["binary"], plan["argv"], {})


if __name__ == "__main__":
    try:
        main(json.loads(sys.argv[1]))
    except (JailError, OSError, ValueError, KeyError) as exc:
        print(f"hyper-jailer: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
