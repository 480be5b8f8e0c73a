"""Inside the guest: a container's volumes, bind mounts and tmpfs, and its read-only root.

Standard library only. The VM's file share (virtio-9p, tag "hyper") is
mounted once at SHARE_ROOT; it holds `CONTAINER/mN` for each volume or host
directory of each container (hyper.storage.share lays it out on the host).
`mount_all` mounts a container's list over its assembled root: each
destination is resolved inside that root (an image's symlinks are followed
as the container would see them, never out of it), made if missing, and
mounted on, parents before children. A new empty volume over a non-empty
image directory first gets that directory's files (Docker's copy-up).
"""

from __future__ import annotations

import errno
import os
import stat

from hyper.agent import guest_sys as sys_
from hyper.agent.guest_sys import MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT

SHARE_TAG = "hyper"
SHARE_ROOT = "/run/hyper/share"
# cache=mmap: reads and writes go straight to the host (another container or
# the host sees them at once) and shared writable mappings work (SQLite's WAL,
# LMDB). msize: the largest 9p message the guest's virtio transport takes.
SHARE_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000,cache=mmap"
MAX_SYMLINKS = 40
# tmpfs options a container may name, as mount flags (Docker's --tmpfs takes mount options).
TMPFS_FLAGS = {
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
}

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class MountError(Exception):
    """A mount the host asked for cannot be made; `errno` says why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code
        self.message = message


def mount_share(mounted: list[str]) -> str:
    """The VM's file share at SHARE_ROOT, mounted on first use (appended to `mounted`)."""
    if SHARE_ROOT not in mounted:
        os.makedirs(SHARE_ROOT, exist_ok=True)
        # nodev: a device node in a volume is the host's file, never a guest device.
        sys_.mount(SHARE_TAG, SHARE_ROOT, "9p", MS_NODEV, SHARE_OPTIONS)
        mounted.append(SHARE_ROOT)
    return SHARE_ROOT


def resolve_in_root(root: str, path: str) -> str:
    """`path` inside the container root `root`, with the image's symlinks followed
    as the container would (absolute ones from its root, `..` stopping there).
    The result is under `root`; its last components may not exist yet."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise MountError(errno.ELOOP, f"too many symlinks in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def _make_mount_point(root: str, target: str, is_dir: bool) -> str:
    """The resolved destination, made (directories on the way; a file for a file)."""
    path = resolve_in_root(root, target)
    if path == root.rstrip("/"):
        raise MountError(errno.EINVAL, "cannot mount over the container's root")
    parent = os.path.dirname(path)
    # Parents resolved above contain no symlink; a component made here is a directory.
    os.makedirs(parent, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if is_dir:
            os.mkdir(path, 0o755)
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        return path
    if stat.S_ISDIR(st.st_mode) != is_dir:
        kind = "a directory" if is_dir else "a file"
        raise MountError(errno.ENOTDIR if is_dir else errno.EISDIR, f"{target} in the image is not {kind}")
    return path


def copy_up(image_dir: str, volume: str) -> None:
    """Docker's copy-up: an empty volume gets the image directory's files, owners and modes."""
    try:
        if os.listdir(volume) or not os.path.isdir(image_dir) or os.path.islink(image_dir):
            return
    except FileNotFoundError:
        return
    st = os.lstat(image_dir)
    _copy_tree(image_dir, volume)
    os.chown(volume, st.st_uid, st.st_gid)
    os.chmod(volume, stat.S_IMODE(st.st_mode))


def _copy_tree(source: str, target: str) -> None:
    for entry in os.scandir(source):
        st = entry.stat(follow_symlinks=False)
        destination = os.path.join(target, entry.name)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(destination, 0o700)
            _copy_tree(entry.path, destination)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry.path), destination)
        elif stat.S_ISREG(st.st_mode):
            _copy_file(entry.path, destination)
        else:
            continue  # devices, fifos and sockets of an image are not carried into a volume
        os.chown(destination, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(destination, stat.S_IMODE(st.st_mode))
            os.utime(destination, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_file(source: str, destination: str) -> None:
    in_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        out_fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while os.sendfile(out_fd, in_fd, None, 1 << 20):
                pass
        finally:
            os.close(out_fd)
    finally:
        os.close(in_fd)


def tmpfs_options(options: list[str]) -> tuple[int, str]:
    """Mount flags and data for a tmpfs: Docker's defaults (noexec, nosuid, nodev)
    changed by the container's options; size= and mode= become tmpfs data."""
    flags = MS_NOEXEC | MS_NOSUID | MS_NODEV
    data = []
    for option in options:
        if option in TMPFS_FLAGS:
            add, remove = TMPFS_FLAGS[option]
            flags = (flags | add) & ~remove
        elif option.partition("=")[0] in ("size", "mode", "nr_inodes", "uid", "gid") and "," not in option:
            data.append(option)
        else:
            raise MountError(errno.EINVAL, f"unknown tmpfs option {option!r}")
    return flags, ",".join(data)


def read_mounts(value: object) -> list[dict[str, Any]]:
    """The host's list of mounts, checked: anything else is refused (ValueError)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("mounts must be a list")
    mounts = []
    for item in value:
        if not isinstance(item, dict) or item.get("type") not in ("bind", "tmpfs"):
            raise ValueError("each mount must be a bind or tmpfs mount")
        target = item.get("target")
        if not isinstance(target, str) or not target.startswith("/") or "\0" in target:
            raise ValueError("a mount's target must be an absolute path")
        if item["type"] == "bind":
            source = item.get("source")
            if not isinstance(source, str) or any(p in ("", ".", "..") for p in source.split("/")):
                raise ValueError("a bind mount's source must be a path in the share")
        options = item.get("options", [])
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise ValueError("a mount's options must be a list of strings")
        mounts.append(item)
    return mounts


def mount_all(rootfs: str, mounts: list[dict[str, Any]], mounted: list[str], agent_mounts: list[str]) -> None:
    """Mount each of `mounts` in the container root `rootfs`, parents first,
    appending each mount point to `mounted` (the share itself to `agent_mounts`)."""
    for item in sorted(mounts, key=lambda m: len([p for p in m["target"].split("/") if p])):
        if item["type"] == "tmpfs":
            flags, data = tmpfs_options(item.get("options", []))
            path = _make_mount_point(rootfs, item["target"], True)
            sys_.mount("tmpfs", path, "tmpfs", flags, data)
            mounted.append(path)
            continue
        source = os.path.join(mount_share(agent_mounts), item["source"])
        is_dir = os.path.isdir(source)
        if not os.path.lexists(source):
            raise MountError(errno.ENOENT, f"the volume for {item['target']} is not in the VM's share")
        path = _make_mount_point(rootfs, item["target"], is_dir)
        if item.get("copy_up") and is_dir:
            copy_up(path, source)
        sys_.mount(source, path, None, MS_BIND | MS_REC)
        mounted.append(path)
        if item.get("read_only"):
            sys_.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NODEV)


def read_only_root(rootfs: str) -> None:
    """--read-only: the root's own mount read-only; its volumes, tmpfs, /dev and /etc files keep theirs."""
    sys_.mount(None, rootfs, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
