"""`hyper cp`: files between the host and a container, with Docker's rules.

One side is `CONTAINER:PATH`, the other a host path or `-` (a tar stream on
stdout or stdin). Which directory the copy lands in, and under which name,
follows Docker's `PrepareArchiveCopy`: into an existing directory under the
source's name (a source ending in `/.` gives its contents), otherwise as the
destination's name in its parent, which must exist (`plan_copy`, pure).

Container to host: hyperd's `GET …/archive` streams a tar whose top entry is
the source's name (`hyper.archive.guest_tar.top_name`). It comes from the
guest, so it is never trusted even though hyperd filtered it: it goes through
the same filter again and is extracted by `hyper.archive.extract`, renamed on
the way, which writes nothing outside the destination, never through a
symlink, never changes a directory that was there, links only to files it
wrote, and undoes a failed copy. A stream that stops early is explained: the
container's VM stopped, or the connection to hyperd was lost, or hyperd cut
it (its log says why). Host to container: the tar is built here (numeric
owners: root's, or the files' own with `-a`) and `PUT` into the directory the
plan names, which hyperd's agent extracts inside the VM.
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import stat
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hyper import errors
from hyper.archive.extract import FilteredReader, extract_archive
from hyper.archive.guest_tar import top_name
from hyper.cli.client import ArchiveCut, DaemonClient
from hyper.cli.container_commands import connect_daemon
from hyper.cli.context import CliContext
from hyper.cli.inspect_commands import human_size
from hyper.errors import DataLoss, FailedPrecondition, HyperError, InvalidArgument, NotFound, Unavailable

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
    started = time.time()
    try:
        if destination == "-":
            return _stream_archive(client, container, path)
        target = host_destination(destination)
        with client.archive(container, path) as (stat_, stream):
            plan = plan_copy(CopyEnd(path, True, stat_.is_dir), target, source_name=source_name)
            counted = _Counted(stream)
            rename = (top_name(path), plan.name)
            extract_archive(io.BufferedReader(counted), Path(plan.directory), rename=rename)
            return counted.count
    except ArchiveCut as exc:
        raise why_cut(client, container, path, started) from exc


def _stream_archive(client: DaemonClient, container: str, path: str) -> int:
    """The archive on stdout, through the same filter as an extraction."""
    with client.archive(container, path) as (_, stream):
        filtered = FilteredReader(stream, top_name(path))
        out = sys.stdout.buffer
        total = 0
        for chunk in _chunks(io.BufferedReader(filtered, CHUNK_BYTES)):
            out.write(chunk)
            total += len(chunk)
        out.flush()
        return total


def why_cut(client: DaemonClient, container: str, path: str, started: float) -> HyperError:
    """What to say when the archive stopped early: ask hyperd whether the
    container's VM stopped meanwhile; if hyperd does not answer, the connection
    to it was lost; otherwise hyperd cut the copy and its log says why."""
    what = f"the copy of {container}:{path} was cut short"
    try:
        info = client.inspect(container)
    except HyperError:
        return Unavailable(
            f"{what}: the connection to hyperd was lost", hint="check that hyperd runs: hyper info"
        )
    if info.finished_at is not None and info.finished_at >= started - 1:
        reason = info.reason or f"exit code {info.exit_code}"
        return Unavailable(f"{what}: the container's VM stopped during the copy ({reason})")
    return DataLoss(
        f"{what}: hyperd stopped it (the VM's copy failed, its connection broke, or its archive was refused)",
        hint="hyperd's log says which",
    )


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
