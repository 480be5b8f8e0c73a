"""The share launcher: the small program that builds a VM's file share and becomes its 9p server.

Run as `python -I -S share_launcher.py JSON` by hyper.storage.share, in a
fresh single-threaded process (hyperd has threads, and setns and unshare of
a mount namespace refuse threaded callers). Standard library only, short on
purpose so that it can be audited in one reading, like hyper.vm.jailer.

QEMU serves the guest's 9p requests but, jailed and without capabilities, it
cannot give files their owners. QEMU's proxy driver hands the file system
work to `virtfs-proxy-helper`, which keeps the few capabilities that need
(chown, DAC override, fowner, fsetid, setuid/setgid for creating files as
the guest's user, mknod) and passes opened descriptors back to QEMU over a
socket. This program confines that helper before it starts:

1. (without root) a user namespace mapping only this user, to root;
2. new mount, IPC and network namespaces, every mount private;
3. each volume cloned from the host as a detached mount (open_tree), made
   nosuid, nodev and noexec (and read-only when asked) recursively;
4. a tmpfs root holding only the libraries the helper loads (read-only
   binds) and `/share`, a second tmpfs in which each volume is moved to
   `CONTAINER/mN`; `/share` and the root are then made read-only;
5. pivot_root into that root, the host's root detached: nothing else of
   the host is in this mount namespace, and the host's namespace never
   holds these mounts (no host process walks into a volume through them,
   and nothing is left mounted when the helper dies);
6. a PID namespace of its own (the helper runs as uid 0, and uid 0 may
   signal the host's root processes without any capability), the socket at
   descriptor 3, every other closed, no core dumps, the capability bounding
   set down to what the helper keeps (and chroot, which it uses first),
   no_new_privs; the helper chroots into /share itself.

`attach` (for containers added to a running pod's VM) clones new volumes in
the host's namespace, joins the helper's, and moves them under /share.

Any failure exits with status 1 and one line on stderr (the share's log).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import stat
import sys

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
# What virtfs-proxy-helper keeps (its init_capabilities), and chroot, which it
# calls before dropping to them: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID,
# SETUID, MKNOD, SYS_CHROOT.
HELPER_CAPABILITIES = (0, 1, 3, 4, 6, 7, 27, 18)
SOCKET_FD = 3
SHARE = "/share"

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: the launcher imports nothing it does not use
    from collections.abc import Sequence
    from typing import Any

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class LaunchError(Exception):
    pass


class MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise LaunchError(f"{what}: {os.strerror(errno)}")
    return result


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


def clone_tree(source: str, read_only: bool) -> int:
    """A detached, recursive copy of the mount tree at `source`, with the share's flags."""
    fd = check(
        libc.syscall(
            ctypes.c_long(SYS_OPEN_TREE),
            ctypes.c_int(AT_FDCWD),
            source.encode(),
            ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE),
        ),
        f"clone the mount at {source}",
    )
    flags = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC
    attr = MountAttr(flags | (MOUNT_ATTR_RDONLY if read_only else 0))
    check(
        libc.syscall(
            ctypes.c_long(SYS_MOUNT_SETATTR),
            ctypes.c_int(fd),
            b"",
            ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        f"set the share's mount flags on {source}",
    )
    return fd


def place_tree(tree: int, target: str) -> None:
    """Move a cloned tree onto `target`, a directory or file made here (never a symlink)."""
    fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise LaunchError(f"{target} is a symlink")
        check(
            libc.syscall(
                ctypes.c_long(SYS_MOVE_MOUNT),
                ctypes.c_int(tree),
                b"",
                ctypes.c_int(fd),
                b"",
                ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | 0x40),  # | MOVE_MOUNT_T_EMPTY_PATH
            ),
            f"mount a volume on {target}",
        )
    finally:
        os.close(fd)


def clone_entries(entries: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    trees = []
    for entry in entries:
        tree = clone_tree(entry["source"], bool(entry["read_only"]))
        is_dir = stat.S_ISDIR(os.fstat(tree).st_mode)
        trees.append((tree, {**entry, "dir": is_dir}))
    return trees


def make_target(share: str, relative: str, is_dir: bool) -> str:
    """CONTAINER/mN under the share, made fresh: an existing name is refused."""
    parts = relative.split("/")
    if len(parts) != 2 or any(p in ("", ".", "..") for p in parts):
        raise LaunchError(f"bad share entry {relative!r}")
    parent = os.path.join(share, parts[0])
    try:
        os.mkdir(parent, 0o755)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(parent).st_mode):
            raise LaunchError(f"{parent} is not a directory") from None
    target = os.path.join(parent, parts[1])
    if is_dir:
        os.mkdir(target, 0o755)
    else:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    return target


def place_all(share: str, trees: list[tuple[int, dict[str, Any]]]) -> None:
    for tree, entry in trees:
        place_tree(tree, make_target(share, entry["target"], entry["dir"]))
        os.close(tree)


def enter_user_namespace(host_uid: int, host_gid: int) -> None:
    check(libc.unshare(CLONE_NEWUSER), "unshare a user namespace")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {host_uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {host_gid} 1")


def kept_flags(path: str) -> int:
    """The flags a read-only remount must keep (a user namespace may not clear inherited ones)."""
    flags = os.statvfs(path).f_flag
    table = (
        (os.ST_NOEXEC, MS_NOEXEC),
        (os.ST_NOATIME, 0x400),
        (os.ST_NODIRATIME, 0x800),
        (os.ST_RELATIME, 1 << 21),
    )
    return sum(mount_flag for st_flag, mount_flag in table if flags & st_flag)


def build_root(plan: dict[str, Any]) -> None:
    """In the new mount namespace: the share's root, entered with pivot_root."""
    root = plan["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    trees = clone_entries(plan["entries"])
    mount(None, root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=1k")
    for item in plan["libraries"]:
        target = root + item["path"]
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        if item["kind"] == "dir":
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        mount(item["path"], target, None, MS_BIND | MS_REC)
        flags = kept_flags(target) | MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
        mount(None, target, None, flags)
    for path, value in plan["symlinks"]:
        os.symlink(value, root + path)
    share = root + SHARE
    os.mkdir(share, 0o755)
    mount(None, share, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=256k,nr_inodes=4k")
    place_all(share, trees)
    mount(None, share, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755")
    os.chdir(root)
    check(libc.pivot_root(b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755")


def restrict(last_cap: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core dump would hold guest data
    for cap in range(last_cap + 1):
        if cap not in HELPER_CAPABILITIES:
            check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")


def launch(plan: dict[str, Any]) -> None:
    """Namespaces first (a PID namespace too: the helper runs as uid 0 and must
    not be able to signal the host's root processes), then fork: the child is
    PID 1 of the new PID namespace and becomes the helper; this process reports
    its pid and exits, so the helper outlives whoever started it (hyperd's VMs
    do) and ends when QEMU closes its socket."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    report_fd = plan["report_fd"]
    if plan["mode"] == "user-namespace":
        enter_user_namespace(plan["host_uid"], plan["host_gid"])
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID), "unshare namespaces")
    child = os.fork()
    if child:
        os.write(report_fd, f"pid {child}\n".encode())
        os._exit(0)
    os.setsid()
    build_root(plan)
    restrict(last_cap)
    os.dup2(plan["socket_fd"], SOCKET_FD, inheritable=True)
    for fd in range(SOCKET_FD + 1, 1024):
        with contextlib.suppress(OSError):
            os.close(fd)
    # -n: stay in the foreground and log to stderr (the share's log); -f: the socket to QEMU.
    os.execve(plan["helper"], ["virtfs-proxy-helper", "-n", "-f", str(SOCKET_FD), "-p", SHARE], {})


def attach(plan: dict[str, Any]) -> None:
    """Add volumes to a running share: clone them here, join the helper's mount
    namespace and move them in under /share (made writable for the moment)."""
    if plan["mode"] != "privileged":
        raise LaunchError("volumes can be added to a running VM's share only as root")
    trees = clone_entries(plan["entries"])
    namespace = os.open(f"/proc/{int(plan['pid'])}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    check(libc.setns(namespace, CLONE_NEWNS), "join the share's mount namespace")
    os.close(namespace)
    os.chdir("/")  # setns of a mount namespace moved the root to the helper's
    mount(None, SHARE, None, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755")
    try:
        place_all(SHARE, trees)
    finally:
        mount(None, SHARE, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755")


if __name__ == "__main__":
    try:
        document = json.loads(sys.argv[2])
        if sys.argv[1] == "launch":
            launch(document)
        elif sys.argv[1] == "attach":
            attach(document)
        else:
            raise LaunchError(f"unknown command {sys.argv[1]!r}")
    except (LaunchError, OSError, ValueError, KeyError, IndexError) as exc:
        print(f"hyper-share: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
