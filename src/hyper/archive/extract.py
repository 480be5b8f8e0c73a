"""The hyper CLI's extraction of a container's archive onto the host (`hyper cp CTR:SRC DST`).

The archive comes from hyperd, which filtered the guest's tar already; this is
the second layer, and it runs the same filter again (`FilteredReader`) before
anything is written, then keeps to rules of its own about the host's files:

- every write goes through directory file descriptors opened component by
  component with O_NOFOLLOW, from the destination directory down: nothing
  is written through a symlink, whether the archive made it or it was on the
  host before, and nothing lands outside the destination;
- entries only under the requested name, renamed as the copy's plan says
  (`rename`), which the filter has made sure of;
- hard links only to regular files this extraction wrote (checked by inode
  as well as by name), never to a file that was on the host;
- a directory that was on the host is never changed (mode, times, owner):
  only directories this extraction made get the archive's modes and times,
  set last, deepest first; owners are never applied;
- a regular file, symlink or link that replaces a host file of the same name
  first moves it aside; a directory is never replaced by a non-directory nor
  the reverse (Docker's NoOverwriteDirNonDir);
- FIFOs and devices are skipped; set-user-ID and set-group-ID bits never set;
- relative symlinks may not point above the copy's directory (Docker's rule
  for its client; absolute ones are kept, since they are never followed here).

A copy that fails part way (a refused archive, a stream cut because the VM
died or the connection was lost, a full disk, Ctrl-C) removes what it made,
deepest first, and puts back what it moved aside, so the destination is as it
was; a copy that succeeds removes what it moved aside.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
import secrets
import shutil
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hyper.archive.guest_tar import ArchiveRefused, GuestTarFilter
from hyper.errors import DataLoss, InvalidArgument

CHUNK_BYTES = 256 * 1024
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SET_ID_BITS = stat.S_ISUID | stat.S_ISGID

Parts = tuple[str, ...]


class FilteredReader(io.RawIOBase):
    """A tar stream read through GuestTarFilter: what it yields has passed the rules."""

    def __init__(self, source: IO[bytes], top: str) -> None:
        self._source = source
        self._filter = GuestTarFilter(top)
        self._pending = b""
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending and not self._ended:
            data = self._source.read(CHUNK_BYTES)
            if data:
                self._pending = self._filter.feed(data)
            else:
                self._pending, self._ended = self._filter.close(), True
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def safe_mode(mode: int) -> int:
    """Permission bits and sticky, never set-user/group-ID from a container's files."""
    return mode & 0o1777


@dataclass
class _Made:
    """What one extraction did to the host, to finish or to undo it."""

    created: list[tuple[Parts, bool]] = field(default_factory=list)  # (path, is a directory), in order
    moved_aside: list[tuple[Parts, str]] = field(default_factory=list)  # (path, its stand-in name)
    directories: dict[Parts, tarfile.TarInfo | None] = field(default_factory=dict)  # made here: attrs to set
    files: dict[Parts, tuple[int, int]] = field(default_factory=dict)  # regular files written: (dev, ino)


class _Extraction:
    """One extraction under `root_fd`; every path is a tuple of components below it."""

    def __init__(self, root_fd: int, directory: Path) -> None:
        self.root_fd = root_fd
        self.directory = directory
        self.made = _Made()
        # The last directory walked to: an archive's members come directory by
        # directory, and walking each path again is most of the work.
        self._last: tuple[Parts, int] | None = None

    def forget_last(self) -> None:
        if self._last is not None:
            os.close(self._last[1])
            self._last = None

    def shown(self, parts: Sequence[str]) -> str:
        return str(self.directory.joinpath(*parts))

    # -- walking ----------------------------------------------------------------
    def open_directory(self, parts: Parts, *, create: bool) -> int:
        """A file descriptor of the directory `parts`, never through a symlink;
        missing components are made (and recorded) when `create`."""
        if self._last is not None and self._last[0] == parts:
            return os.dup(self._last[1])
        fd = os.dup(self.root_fd)
        try:
            for index, part in enumerate(parts):
                try:
                    child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise DataLoss(
                            f"refusing archive link: {self.shown(parts[: index + 1])} is missing"
                        ) from None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    self.made.created.append((parts[: index + 1], True))
                    self.made.directories[parts[: index + 1]] = None
                    child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = self.shown(parts[: index + 1])
                    if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise DataLoss(f"refusing to write through the symbolic link {where}") from None
                    raise InvalidArgument(f"cannot copy into {where}: it is not a directory") from None
                os.close(fd)
                fd = child
            self.forget_last()
            self._last = (parts, os.dup(fd))
            return fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def lstat(parent_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def make_way(self, parent_fd: int, parts: Parts, *, is_dir: bool) -> os.stat_result | None:
        """What stands at `parts`: a directory where a directory goes is kept;
        a non-directory where a non-directory goes is moved aside (and put back
        if the copy fails); a directory and a non-directory never replace each other."""
        existing = self.lstat(parent_fd, parts[-1])
        if existing is None:
            return None
        existing_dir = stat.S_ISDIR(existing.st_mode)
        if existing_dir and not is_dir:
            raise InvalidArgument(f"cannot overwrite directory {self.shown(parts)} with non-directory")
        if is_dir and not existing_dir:
            raise InvalidArgument(f"cannot overwrite non-directory {self.shown(parts)} with directory")
        if not existing_dir:
            aside = f".hyper-cp-{secrets.token_hex(8)}"
            os.rename(parts[-1], aside, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            self.made.moved_aside.append((parts, aside))
            return None
        return existing

    # -- members ----------------------------------------------------------------
    def directory_member(self, parts: Parts, member: tarfile.TarInfo) -> None:
        parent = self.open_directory(parts[:-1], create=True)
        try:
            if self.make_way(parent, parts, is_dir=True) is None:
                os.mkdir(parts[-1], 0o700, dir_fd=parent)
                self.made.created.append((parts, True))
                self.made.directories[parts] = member
            elif parts in self.made.directories:
                self.made.directories[parts] = member  # made here as a parent: it takes the member's attrs
        finally:
            os.close(parent)

    def file_member(self, parts: Parts, member: tarfile.TarInfo, data: IO[bytes]) -> None:
        parent = self.open_directory(parts[:-1], create=True)
        try:
            self.make_way(parent, parts, is_dir=False)
            fd = os.open(parts[-1], _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
            self.made.created.append((parts, False))
            with open(fd, "wb") as out:
                shutil.copyfileobj(data, out, CHUNK_BYTES)
                out.flush()
                os.fchmod(fd, safe_mode(member.mode))
                os.utime(fd, (member.mtime, member.mtime))
                written = os.fstat(fd)
            self.made.files[parts] = (written.st_dev, written.st_ino)
        finally:
            os.close(parent)

    def symlink_member(self, parts: Parts, member: tarfile.TarInfo) -> None:
        check_link_inside(member.linkname, parts, self.shown(parts))
        parent = self.open_directory(parts[:-1], create=True)
        try:
            self.make_way(parent, parts, is_dir=False)
            os.symlink(member.linkname, parts[-1], dir_fd=parent)
            self.made.created.append((parts, False))
            os.utime(parts[-1], (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)

    def hardlink_member(self, parts: Parts, target: Parts) -> None:
        inode = self.made.files.get(target)
        if inode is None:
            raise ArchiveRefused(
                f"hard link {self.shown(parts)} points at {self.shown(target)}, which this copy did not write"
            )
        source_parent = self.open_directory(target[:-1], create=False)
        try:
            found = self.lstat(source_parent, target[-1])
            if found is None or (found.st_dev, found.st_ino) != inode:
                raise DataLoss(f"{self.shown(target)} changed during the copy; not linking to it")
            parent = self.open_directory(parts[:-1], create=True)
            try:
                self.make_way(parent, parts, is_dir=False)
                os.link(
                    target[-1], parts[-1], src_dir_fd=source_parent, dst_dir_fd=parent, follow_symlinks=False
                )
                self.made.created.append((parts, False))
                self.made.files[parts] = inode
            finally:
                os.close(parent)
        finally:
            os.close(source_parent)

    # -- the end --------------------------------------------------------------------
    def finish(self) -> None:
        """Directories made here get their modes and times, deepest first; what
        was moved aside goes."""
        self.forget_last()
        for parts, member in sorted(self.made.directories.items(), key=lambda item: -len(item[0])):
            if member is None or not parts:
                continue
            fd = self.open_directory(parts, create=False)
            try:
                os.fchmod(fd, safe_mode(member.mode))
                os.utime(fd, (member.mtime, member.mtime))
            finally:
                os.close(fd)
        for parts, aside in self.made.moved_aside:
            with contextlib.suppress(OSError), self._parent(parts) as parent:
                os.unlink(aside, dir_fd=parent)

    def undo(self) -> None:
        """Remove what this extraction made, deepest last-made first, and put back
        what it moved aside. Best effort: a directory someone else wrote into stays."""
        self.forget_last()
        for parts, is_dir in reversed(self.made.created):
            with contextlib.suppress(OSError, DataLoss, InvalidArgument), self._parent(parts) as parent:
                if is_dir:
                    os.rmdir(parts[-1], dir_fd=parent)
                else:
                    os.unlink(parts[-1], dir_fd=parent)
        for parts, aside in reversed(self.made.moved_aside):
            with contextlib.suppress(OSError, DataLoss, InvalidArgument), self._parent(parts) as parent:
                if self.lstat(parent, parts[-1]) is None:
                    os.rename(aside, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)

    @contextlib.contextmanager
    def _parent(self, parts: Parts) -> Iterator[int]:
        fd = self.open_directory(parts[:-1], create=False)
        try:
            yield fd
        finally:
            os.close(fd)


def check_link_inside(target: str, parts: Sequence[str], shown: str) -> None:
    """Docker's rule: a relative symlink may not point above the copy's directory."""
    if target.startswith("/"):
        return
    resolved = posixpath.normpath(posixpath.join(*parts[:-1], target) if parts[:-1] else target)
    if resolved == ".." or resolved.startswith("../"):
        raise DataLoss(f"refusing archive member {shown}: its link {target!r} points outside")


def _renamed(name: str, top: str, new: str) -> Parts:
    """A filtered member name (`top/…`, or `./…`) as components below the
    destination directory, its top component named `new` (`.`: the directory itself)."""
    parts = [part for part in name.split("/") if part]
    if not parts or parts[0] != top:
        raise ArchiveRefused(f"member {name[:200]!r} is not under {top!r}")  # the filter already ensures it
    return (() if new == "." else (new,)) + tuple(parts[1:])


def extract_archive(source: IO[bytes], directory: Path, *, rename: tuple[str, str] | None = None) -> int:
    """Extract a container's tar read from `source` under `directory`; its number of members.

    `rename` = (top, new): the archive's top entry is `top` (Docker's name for
    the path copied; `.` for a directory's contents) and lands as `new`
    (`.`: into `directory` itself). Without it the archive's members may have
    any relative names and land as they are. On any failure what was made is
    undone before the error propagates.
    """
    top, new = rename if rename is not None else (".", ".")
    root_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    extraction = _Extraction(root_fd, directory)
    count = 0
    try:
        filtered = io.BufferedReader(FilteredReader(source, top), CHUNK_BYTES)
        with tarfile.open(fileobj=filtered, mode="r|") as tar:
            for member in tar:
                parts = _renamed(member.name, top, new)
                if not parts:
                    continue  # the destination directory itself: never changed
                count += 1
                if member.isdir():
                    extraction.directory_member(parts, member)
                elif member.isreg():
                    data = tar.extractfile(member)
                    assert data is not None
                    extraction.file_member(parts, member, data)
                elif member.issym():
                    extraction.symlink_member(parts, member)
                elif member.islnk():
                    extraction.hardlink_member(parts, _renamed(member.linkname, top, new))
                # FIFOs: skipped (the filter has dropped devices already)
        extraction.finish()
    except tarfile.TarError as exc:
        extraction.undo()
        raise DataLoss(f"the archive from the container is not a valid tar: {exc}") from exc
    except BaseException:
        extraction.undo()
        raise
    finally:
        extraction.forget_last()
        os.close(root_fd)
    return count
