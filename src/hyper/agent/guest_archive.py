"""Inside the guest: copying files into and out of a container (Docker's archive API).

Standard library only. A path is first looked up by the agent itself, under
the container's root as its processes see it (/proc/PID/root of the main
process, or the rootfs before it starts), with symlinks followed by hand so
that none leads out of that root: `..` at the root stays there and an
absolute target starts again from the root, as for a chrooted process. A
container may change its files meanwhile, so that lookup only answers
`archive_stat` and refuses what is missing early; the copies themselves run
in a child forked into the container's mount namespace and chrooted into its
root (guest_process.ContainerRoot), where the kernel keeps every path inside:
`send_archive` writes a tar of a path to stdout, `receive_archive` extracts
one from stdin under a directory.

tarfile is imported by the agent just before it forks the first such child
(`load_tarfile`), not at boot, which it would slow down under TCG; after the
chroot the agent's standard library is out of reach.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from hyper.agent import guest_container as containers

# Not `from typing import TYPE_CHECKING`: importing typing costs the guest
# a tenth of a second under TCG. Type checkers treat this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import tarfile
    from typing import Any, BinaryIO

MAX_SYMLINKS = 40  # the kernel's own limit before ELOOP


class ArchiveError(Exception):
    """An archive the agent will not extract, or a path it will not overwrite."""


def load_tarfile() -> None:
    """Import tarfile (and what it imports) in the agent, before a child chroots."""
    import tarfile  # noqa: F401


# -- looking paths up inside a root ------------------------------------------
def root_path(container: containers.Container) -> str:
    """Where the agent sees the container's root: its main process's while it runs."""
    main = container.running_main()
    return f"/proc/{main.init_pid}/root" if main is not None else container.rootfs


def in_root(root: str, container_path: str) -> str:
    """The agent's path for `container_path`, which must be resolved already."""
    return root.rstrip("/") + container_path


def resolve_in_root(root: str, path: str, *, follow_final: bool) -> str:
    """`path` as the container sees it, with its symlinks resolved inside `root`.

    Returns an absolute container path free of symlinks, except for the last
    component when `follow_final` is false and `path` does not end in a slash
    (which, as for the kernel, follows it). Missing components are kept as
    they are (a dangling symlink's target is still named). Raises OSError
    with ELOOP past MAX_SYMLINKS links.
    """
    follow_final = follow_final or path.endswith("/")
    pending = [part for part in reversed(path.split("/")) if part]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        if not pending and not follow_final:
            resolved.append(part)
            break
        candidate = in_root(root, "/" + "/".join([*resolved, part]))
        try:
            is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
        except OSError:
            is_link = False  # missing, or under a non-directory: the caller's lstat says which
        if not is_link:
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved.clear()
        pending.extend(part for part in reversed(target.split("/")) if part)
    return "/" + "/".join(resolved)


def archive_name(path: str) -> str:
    """The name Docker gives `path` in a stat or at the top of its archive.

    The last component of the cleaned path, except that a path ending in
    `/.` (a directory's contents, for `docker cp`) keeps its `.`.
    """
    stripped = path.rstrip("/")
    if stripped and posixpath.basename(stripped) == ".":
        return "."
    return posixpath.basename(posixpath.normpath("/" + path)) or "/"


def tar_name(path: str) -> str:
    """The top-level name in `path`'s archive: its archive_name, but `.` for the
    root, since no member can be called `/`."""
    name = archive_name(path)
    return "." if name == "/" else name


def _refusal(path: str, exc: OSError) -> containers.StartError:
    code = exc.errno or errno.EIO
    return containers.StartError("archive", code, f"{path}: {os.strerror(code)}")


def stat_path(root: str, path: str) -> dict[str, Any]:
    """Docker's path stat: the last component lstat'ed, a symlink's target resolved."""
    try:
        resolved = resolve_in_root(root, path, follow_final=False)
        st = os.lstat(in_root(root, resolved))
        target = resolve_in_root(root, resolved, follow_final=True) if stat.S_ISLNK(st.st_mode) else ""
    except OSError as exc:
        raise _refusal(path, exc) from None
    return {
        "name": archive_name(path),
        "size": st.st_size,
        "mode": st.st_mode,
        "mtime": st.st_mtime,
        "link_target": target,
    }


def existing_path(root: str, path: str) -> str:
    """`path` resolved (but for its last component), refused when missing."""
    try:
        resolved = resolve_in_root(root, path, follow_final=False)
        os.lstat(in_root(root, resolved))
    except OSError as exc:
        raise _refusal(path, exc) from None
    return resolved


def existing_directory(root: str, path: str) -> str:
    """`path` resolved through every symlink, refused unless it is a directory."""
    try:
        resolved = resolve_in_root(root, path, follow_final=True)
        mode = os.lstat(in_root(root, resolved)).st_mode
    except OSError as exc:
        raise _refusal(path, exc) from None
    if not stat.S_ISDIR(mode):
        raise _refusal(path, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
    return resolved


# -- writing an archive -------------------------------------------------------
def tar_entry(name: str, st: os.stat_result, link_target: str = "") -> tarfile.TarInfo | None:
    """A tar header for a file with these stats, owners numeric; None for a socket.

    Built by hand rather than by TarFile.gettarinfo, which looks owner names
    up: inside a container's root that would read its nsswitch.conf and could
    load its NSS libraries into the agent's child.
    """
    import tarfile

    info = tarfile.TarInfo(name)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type, info.linkname = tarfile.SYMTYPE, link_target
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        return None
    info.mode = stat.S_IMODE(mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)  # whole seconds, as Docker writes them
    return info


def _pseudo_filesystems() -> set[int]:
    """Devices of the root's /proc and /sys mounts, whose contents are not files to copy
    (/proc/kcore alone claims terabytes)."""
    root = os.lstat("/").st_dev
    devices = set()
    for path in ("/proc", "/sys"):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_dev != root:
            devices.add(st.st_dev)
    return devices


def write_archive(out: BinaryIO, path: str, arcname: str) -> None:
    """A tar of `path` named `arcname`, directories recursed, symlinks kept, hard links linked."""
    import tarfile

    skip = _pseudo_filesystems()
    hard_links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        pending = [(path, arcname)]
        while pending:
            source, name = pending.pop()
            st = os.lstat(source)
            info = tar_entry(name, st, os.readlink(source) if stat.S_ISLNK(st.st_mode) else "")
            if info is None:
                continue
            if info.isreg() and st.st_nlink > 1:
                first = hard_links.setdefault((st.st_dev, st.st_ino), name)
                if first != name:
                    info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
            if info.isreg():
                # No symlink and no FIFO swapped in since the lstat can block or mislead this.
                fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                with open(fd, "rb") as f:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise OSError(errno.EAGAIN, f"{source} changed while it was archived")
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if info.isdir() and st.st_dev not in skip:
                children = sorted(os.listdir(source), reverse=True)
                pending += [(os.path.join(source, child), f"{name}/{child}") for child in children]


def send_archive(path: str, arcname: str) -> int:
    """In the forked child, inside the container's root: the tar goes to stdout."""
    with open(1, "wb", closefd=False) as out:
        write_archive(out, path, arcname)
    return 0


# -- extracting an archive ----------------------------------------------------
def member_path(name: str) -> str:
    """A member's path relative to the destination: no leading /, no `..` at all."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive member {name!r} points outside the destination")
    return "/".join(parts)


def _make_way(target: str, is_dir: bool, no_overwrite_dir_non_dir: bool) -> None:
    """Remove what stands where a member goes, as Docker does; directories merge."""
    import shutil

    try:
        existing_dir = stat.S_ISDIR(os.lstat(target).st_mode)
    except FileNotFoundError:
        return
    if existing_dir and is_dir:
        return
    if no_overwrite_dir_non_dir and existing_dir:
        raise ArchiveError(f"cannot overwrite directory {target} with a non-directory")
    if no_overwrite_dir_non_dir and is_dir:
        raise ArchiveError(f"cannot overwrite non-directory {target} with a directory")
    if existing_dir:
        shutil.rmtree(target)
    else:
        os.unlink(target)


def extract_archive(source: BinaryIO, dest: str, *, no_overwrite_dir_non_dir: bool = False) -> None:
    """Extract the tar read from `source` under the directory `dest`.

    Modes, numeric owners (when root), mtimes, symlinks and hard links are
    kept. Directories get their attributes last, deepest first, so that what
    is written into them changes neither their mtime nor, for a read-only
    one, whether it can be written.
    """
    import tarfile

    directories = []
    with tarfile.open(fileobj=source, mode="r|", errorlevel=2) as tar:
        for member in tar:
            name = member_path(member.name)
            if not name:
                continue  # the destination itself
            if member.islnk():
                member.linkname = member_path(member.linkname)
            member.name = name
            _make_way(os.path.join(dest, name), member.isdir(), no_overwrite_dir_non_dir)
            # A hard link shares its target's inode: its header's attributes
            # would overwrite the target's (GNU tar ignores them too).
            set_attrs = not (member.isdir() or member.islnk())
            tar.extract(member, dest, set_attrs=set_attrs, numeric_owner=True)
            if member.isdir():
                directories.append(member)
        for member in sorted(directories, key=lambda m: m.name, reverse=True):
            target = os.path.join(dest, member.name)
            tar.chown(member, target, True)
            tar.utime(member, target)
            tar.chmod(member, target)


def receive_archive(dest: str, *, no_overwrite_dir_non_dir: bool) -> int:
    """In the forked child, inside the container's root: the tar comes from stdin."""
    with open(0, "rb", closefd=False) as source:
        extract_archive(source, dest, no_overwrite_dir_non_dir=no_overwrite_dir_non_dir)
    return 0
