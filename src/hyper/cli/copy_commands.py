"""`hyper cp`: files between the host and a container, with Docker's rules.

One side is `CONTAINER:PATH`, the other a host path or `-` (a tar stream on
stdout or stdin). Which directory the copy lands in, and under which name,
follows Docker's `PrepareArchiveCopy`: into an existing directory under the
source's name (a source ending in `/.` gives its contents), otherwise as the
destination's name in its parent, which must exist (`plan_copy`, pure).

Container to host: hyperd's `GET …/archive` streams a tar whose top entry is
the source's name; it is extracted here, renamed on the way, and never
trusted: no absolute names, no `..`, nothing written through a symlink
(every parent is checked and files are opened with O_NOFOLLOW), links kept
inside the destination as Docker's own extractor does, no devices, no
set-user-ID bits, owners not applied. Host to container: the tar is built
here (numeric owners: root's, or the files' own with `-a`) and `PUT` into the
directory the plan names, which hyperd's agent extracts inside the VM.
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import shutil
import stat
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hyper import errors
from hyper.cli.client import DaemonClient, PathStat
from hyper.cli.container_commands import connect_daemon
from hyper.cli.context import CliContext
from hyper.cli.inspect_commands import human_size
from hyper.errors import DataLoss, FailedPrecondition, HyperError, InvalidArgument, NotFound

CHUNK_BYTES = 256 * 1024
SPOOL_BYTES = 32 << 20  # a tar to upload is kept in memory up to this, then in a temporary file
MAX_SYMLINKS = 40
# Go FileMode bits of what cannot be copied onto: pipes, sockets, devices.
_SPECIAL_MODE_BITS = (1 << 25) | (1 << 24) | (1 << 26) | (1 << 21)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cp = subparsers.add_parser(
        "cp",
        help="copy files between a container and the host",
        description="hyper cp CONTAINER:SRC DEST|-  or  hyper cp SRC|- CONTAINER:DEST",
    )
    cp.add_argument("-a", "--archive", action="store_true", help="keep the files' owners (to a container)")
    cp.add_argument("-L", "--follow-link", action="store_true", help="copy what a source symlink points to")
    cp.add_argument("-q", "--quiet", action="store_true", help="no summary on a terminal")
    cp.add_argument("source", metavar="SRC")
    cp.add_argument("destination", metavar="DEST")
    cp.set_defaults(func=cp_command)


# ---- Docker's path rules (pure) ------------------------------------------------------


@dataclass(frozen=True)
class CopyArg:
    container: str | None
    path: str


def split_copy_arg(arg: str) -> CopyArg:
    """Docker's rule: `NAME:PATH` names a container unless the argument is an
    absolute path or starts with `.` (`./a:b` is a local file)."""
    if arg.startswith("/"):
        return CopyArg(None, arg)
    container, sep, path = arg.partition(":")
    if not sep or container.startswith(".") or not container:
        return CopyArg(None, arg)
    return CopyArg(container, path)


def specifies_current_dir(path: str) -> bool:
    stripped = path.rstrip("/")
    return bool(stripped) and posixpath.basename(stripped) == "."


def asserts_directory(path: str) -> bool:
    """A path ending in `/` or `/.` must name a directory."""
    return path.endswith("/") or specifies_current_dir(path)


def split_path_dir_entry(path: str) -> tuple[str, str]:
    """Docker's SplitPathDirEntry: the cleaned path's directory and last
    component, which is `.` for a path ending in `/.`."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if specifies_current_dir(path):
        return cleaned, "."
    if cleaned == "/":
        return "/", "/"
    return posixpath.dirname(cleaned) or ".", posixpath.basename(cleaned)


@dataclass(frozen=True)
class CopyEnd:
    """One side of a copy: its path, and what is there."""

    path: str
    exists: bool = True
    is_dir: bool = False


@dataclass(frozen=True)
class CopyPlan:
    """Extract into `directory`, with the archive's top entry named `name`."""

    directory: str
    name: str


def plan_copy(source: CopyEnd, destination: CopyEnd, *, source_name: str | None = None) -> CopyPlan:
    """Docker's PrepareArchiveCopy. `source_name` is the name the copy takes
    into a directory (by default the source path's last component)."""
    base = source_name or split_path_dir_entry(source.path)[1]
    if base == "/":
        base = "."  # the root's archive holds its contents
    parent, destination_base = split_path_dir_entry(destination.path)
    if destination.exists and destination.is_dir:
        return CopyPlan(destination.path, base)
    if destination.exists and source.is_dir:
        raise InvalidArgument(
            f"cannot copy directory: {destination.path} is a file", hint="copy it to a directory"
        )
    if not destination.exists and not source.is_dir and asserts_directory(destination.path):
        raise NotFound(
            f"no such directory: {destination.path}", hint="create it first, or drop the trailing slash"
        )
    return CopyPlan(parent, destination_base)


# ---- extracting on the host, safely ------------------------------------------------------


def member_parts(name: str) -> list[str]:
    """A member's path as components: no absolute names, no `..` at all."""
    if name.startswith("/"):
        raise DataLoss(f"refusing archive member {name!r}: it has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise DataLoss(f"refusing archive member {name!r}: it points outside the destination")
    return parts


def renamed(parts: list[str], old: str, new: str) -> list[str]:
    """The top component `old` as `new`; `.` stands for the archive's root."""
    if old == ".":
        return parts if new == "." else [new, *parts]
    if not parts or parts[0] != old:
        return parts
    return parts[1:] if new == "." else [new, *parts[1:]]


def _check_parents(directory: Path, parts: Sequence[str], *, create: bool) -> None:
    """Every directory between `directory` and the member is a real directory
    (made when missing and `create`): nothing is written through a symlink."""
    current = directory
    for part in parts[:-1]:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            if not create:
                raise DataLoss(f"refusing archive link: {current} does not exist") from None
            os.mkdir(current, 0o755)
            continue
        if stat.S_ISLNK(mode):
            raise DataLoss(f"refusing to write through the symbolic link {current}")
        if not stat.S_ISDIR(mode):
            raise InvalidArgument(f"cannot copy into {current}: it is not a directory")


def _make_way(target: Path, is_dir: bool) -> bool:
    """Remove a non-directory where a non-directory goes (never following it);
    True when a directory is there already. Docker's NoOverwriteDirNonDir."""
    try:
        existing_dir = stat.S_ISDIR(os.lstat(target).st_mode)
    except FileNotFoundError:
        return False
    if existing_dir and not is_dir:
        raise InvalidArgument(f"cannot overwrite directory {target} with non-directory")
    if is_dir and not existing_dir:
        raise InvalidArgument(f"cannot overwrite non-directory {target} with directory")
    if not existing_dir:
        os.unlink(target)
    return existing_dir


def _safe_mode(mode: int) -> int:
    # Permission bits and sticky, never set-user/group-ID from a container's files.
    return mode & 0o1777


def extract_archive(source: IO[bytes], directory: Path, *, rename: tuple[str, str] | None = None) -> int:
    """Extract the tar read from `source` under `directory`; its number of members.

    `rename` = (old, new) names the top entry `new` instead of `old`.
    Device and FIFO members are skipped. Directories get their modes and
    times last, deepest first.
    """
    directories: list[tuple[Path, tarfile.TarInfo]] = []
    count = 0
    try:
        with tarfile.open(fileobj=source, mode="r|") as tar:
            for member in tar:
                parts = member_parts(member.name)
                if rename is not None:
                    parts = renamed(parts, *rename)
                if not parts:
                    continue  # the destination directory itself
                count += 1
                target = directory.joinpath(*parts)
                _check_parents(directory, parts, create=True)
                if member.isdir():
                    if not _make_way(target, True):
                        os.mkdir(target, 0o700)
                    directories.append((target, member))
                elif member.isreg():
                    _make_way(target, False)
                    _write_file(tar, member, target)
                elif member.issym():
                    _check_link_inside(member, parts)
                    _make_way(target, False)
                    os.symlink(member.linkname, target)
                    os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
                elif member.islnk():
                    link_parts = member_parts(member.linkname)
                    if rename is not None:
                        link_parts = renamed(link_parts, *rename)
                    _check_parents(directory, link_parts, create=False)
                    _make_way(target, False)
                    os.link(directory.joinpath(*link_parts), target, follow_symlinks=False)
    except tarfile.TarError as exc:
        raise DataLoss(f"the archive from the container is not a valid tar: {exc}") from exc
    for target, member in reversed(directories):
        os.chmod(target, _safe_mode(member.mode))
        os.utime(target, (member.mtime, member.mtime))
    return count


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    data = tar.extractfile(member)
    assert data is not None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(target, flags, 0o600), "wb") as out:
        shutil.copyfileobj(data, out, CHUNK_BYTES)
        os.fchmod(out.fileno(), _safe_mode(member.mode))
        out.flush()
        os.utime(out.fileno(), (member.mtime, member.mtime))


def _check_link_inside(member: tarfile.TarInfo, parts: Sequence[str]) -> None:
    """Docker's rule: a relative symlink may not point above the copy's directory."""
    target = member.linkname
    if target.startswith("/"):
        return
    resolved = posixpath.normpath(posixpath.join(*parts[:-1], target) if parts[:-1] else target)
    if resolved == ".." or resolved.startswith("../"):
        raise DataLoss(f"refusing archive member {member.name!r}: its link {target!r} points outside")


# ---- building an archive on the host ---------------------------------------------------


def write_archive(out: IO[bytes], source: Path, name: str, *, keep_owner: bool) -> None:
    """A tar of `source` whose top entry is `name`: directories recursed,
    symlinks kept, hard links linked, owners numeric (root's unless `keep_owner`)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        pending = [(source, name)]
        while pending:
            path, arcname = pending.pop()
            info = tar.gettarinfo(str(path), arcname)
            if info is None:
                continue  # a socket
            if not keep_owner:
                info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
            if info.isdir():
                children = sorted(os.listdir(path), reverse=True)
                pending += [(path / child, f"{arcname}/{child}") for child in children]


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while data := stream.read(CHUNK_BYTES):
        yield data


# ---- the command ------------------------------------------------------------------------


def cp_command(args: argparse.Namespace, ctx: CliContext) -> int:
    source, destination = split_copy_arg(args.source), split_copy_arg(args.destination)
    if source.container is not None and destination.container is not None:
        raise InvalidArgument("copying between containers is not supported", hint="copy through the host")
    if source.container is None and destination.container is None:
        raise InvalidArgument(
            "must specify at least one container source", hint="name one side CONTAINER:PATH"
        )
    if source.container is not None and not source.path:
        raise InvalidArgument(f"no path given in {args.source!r}", hint="use CONTAINER:/path")
    if destination.container is not None and not destination.path:
        raise InvalidArgument(f"no path given in {args.destination!r}", hint="use CONTAINER:/path")
    try:
        with connect_daemon(ctx) as client:
            if source.container is not None:
                copied = copy_from_container(client, source.container, source.path, destination.path, args)
                where = destination.path
            else:
                assert destination.container is not None
                copied = copy_to_container(client, source.path, destination.container, destination.path, args)
                where = f"{destination.container}:{destination.path}"
    except OSError as exc:
        raise _host_error(exc) from exc
    if not args.quiet and where != "-" and ctx.stderr.isatty():
        print(f"Successfully copied {human_size(copied)} to {where}", file=ctx.stderr)
    return 0


def _host_error(exc: OSError) -> HyperError:
    what = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    if isinstance(exc, PermissionError):
        return errors.PermissionDenied(what)
    if isinstance(exc, FileNotFoundError):
        return NotFound(what)
    return FailedPrecondition(what)


class _Counted(io.RawIOBase):
    """Counts what is read through it: the size `cp` reports."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


def copy_from_container(
    client: DaemonClient, container: str, path: str, destination: str, args: argparse.Namespace
) -> int:
    """Container to host; the archive's size."""
    source_name: str | None = None
    if args.follow_link:
        stat_ = client.path_stat(container, path)
        if stat_.is_symlink and stat_.link_target:
            source_name = split_path_dir_entry(path)[1]
            path = stat_.link_target
    if destination == "-":
        with client.archive(container, path) as (_, stream):
            out = sys.stdout.buffer
            total = 0
            for chunk in _chunks(stream):
                out.write(chunk)
                total += len(chunk)
            out.flush()
            return total
    target = host_destination(destination)
    with client.archive(container, path) as (stat_, stream):
        plan = plan_copy(CopyEnd(path, True, stat_.is_dir), target, source_name=source_name)
        counted = _Counted(stream)
        rename = (_archive_top(stat_), plan.name)
        extract_archive(io.BufferedReader(counted), Path(plan.directory), rename=rename)
        return counted.count


def _archive_top(stat_: PathStat) -> str:
    """The top entry's name in hyperd's archive of this path (the root's is `.`)."""
    return "." if stat_.name in ("/", "") else stat_.name


def host_destination(path: str) -> CopyEnd:
    """Docker's CopyInfoDestinationPath: symlinks at the destination followed; when
    nothing is there, its parent must be a directory."""
    resolved = path
    for _ in range(MAX_SYMLINKS):
        if not os.path.islink(resolved):
            break
        link = os.readlink(resolved)
        resolved = link if link.startswith("/") else os.path.join(os.path.dirname(resolved), link)
    else:
        raise InvalidArgument(f"too many levels of symbolic links at {path}")
    if resolved != path and path.endswith("/"):
        resolved += "/"
    if os.path.lexists(resolved):
        return CopyEnd(resolved, True, os.path.isdir(resolved))
    parent = split_path_dir_entry(resolved)[0]
    if not os.path.isdir(parent):
        raise NotFound(f"no such directory: {parent}", hint="create it first")
    return CopyEnd(resolved, False, False)


def container_destination(client: DaemonClient, container: str, path: str) -> CopyEnd:
    """The destination in the container, a symlink followed once, as Docker's CLI does."""
    try:
        found = client.path_stat(container, path)
        if found.is_symlink and found.link_target:
            path = found.link_target
            found = client.path_stat(container, path)
    except NotFound:
        return CopyEnd(path, False, False)  # its parent must exist: the copy will say
    if found.mode & _SPECIAL_MODE_BITS:
        raise InvalidArgument(f"destination {container}:{path} must be a directory or a regular file")
    return CopyEnd(path, True, found.is_dir)


def copy_to_container(
    client: DaemonClient, source: str, container: str, path: str, args: argparse.Namespace
) -> int:
    """Host to container; the archive's size."""
    destination = container_destination(client, container, path)
    if source == "-":
        if not (destination.exists and destination.is_dir):
            raise InvalidArgument(f'destination "{container}:{path}" must be a directory')
        counted = _Counted(sys.stdin.buffer)
        client.put_archive(container, destination.path, _chunks(io.BufferedReader(counted)))
        return counted.count
    local = Path(source)
    try:
        info = os.stat(local) if args.follow_link else os.lstat(local)
    except FileNotFoundError:
        raise NotFound(f"lstat {os.path.abspath(source)}: no such file or directory") from None
    is_dir = stat.S_ISDIR(info.st_mode)
    if asserts_directory(source) and not is_dir:
        raise InvalidArgument(f"not a directory: {source}")
    if args.follow_link and local.is_symlink():
        local = local.resolve()
    plan = plan_copy(CopyEnd(source, True, is_dir), destination)
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
        write_archive(spool, local, plan.name, keep_owner=args.archive)
        size = spool.tell()
        spool.seek(0)
        client.put_archive(container, plan.directory, _chunks(spool))
    return size
