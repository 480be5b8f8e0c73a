"""Safe extraction of one image layer into a fresh directory (an overlayfs lower layer).

Layer tars come from registries and archives we do not trust. Following umoci:
- every entry's path is cleaned lexically and must stay under the root (`..` that
  would climb out is refused; absolute paths become relative);
- parent directories are resolved component by component *inside* the root, with
  symlinks evaluated in the root's scope (like securejoin), so no write can pass
  through a symlink to somewhere outside; the final component is never followed;
- hard links may only point at files this layer already extracted;
- OCI whiteouts become overlayfs whiteouts: `.wh.NAME` a 0:0 character device
  named NAME, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its
  directory. A whiteout only ever hides *lower* layers, never what this layer
  wrote, whatever the entry order (a directory of this layer that a whiteout also
  names is made opaque instead);
- ownership, modes, mtimes, device nodes and PAX xattrs are kept when running as
  root; without root, ownership and device nodes are skipped, and a layer that
  needs whiteouts cannot be converted (FailedPrecondition).

Extraction runs entry by entry with `tarfile`'s streaming mode; `extractall` is not
used because its own safety filters do not implement these rules.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hyper.errors import DataLoss, FailedPrecondition, InvalidArgument, ResourceExhausted

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_CHUNK = 1 << 20
_BAD_LAYER_HINT = "the image layer is malformed or hostile; do not run this image"


@dataclass(frozen=True)
class UnpackLimits:
    max_path_bytes: int = 4096
    max_name_bytes: int = 255
    max_entries: int = 1_000_000
    max_symlink_follows: int = 255
    # Bytes of file data one layer may unpack to: a layer disk must fit a VM
    # template's slot (10 GiB), and a 20 KB layer of sparse or zero-filled
    # files must not fill the host's disk.
    max_bytes: int = 10 << 30
    # Unpacking stops before the state disk has less than this free.
    reserve_bytes: int = 1 << 30


@dataclass(frozen=True)
class UnpackStats:
    entries: int
    whiteouts: int
    opaque_dirs: int
    skipped_devices: int


def clean_path(name: str, limits: UnpackLimits = UnpackLimits()) -> tuple[str, ...]:
    """Split a tar member name into components under the root, or refuse it."""
    if "\x00" in name:  # a PAX path may hold one; no file name can
        raise InvalidArgument(f"layer entry name {name[:80]!r} contains a NUL byte", hint=_BAD_LAYER_HINT)
    if len(name.encode("utf-8", "surrogateescape")) > limits.max_path_bytes:
        raise InvalidArgument(
            f"layer entry name is longer than {limits.max_path_bytes} bytes: {name[:80]!r}…",
            hint=_BAD_LAYER_HINT,
        )
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidArgument(
                    f"layer entry {name!r} points outside the layer root", hint=_BAD_LAYER_HINT
                )
            parts.pop()
            continue
        if len(part.encode("utf-8", "surrogateescape")) > limits.max_name_bytes:
            raise InvalidArgument(
                f"layer entry {name[:80]!r} has a component longer than {limits.max_name_bytes} bytes",
                hint=_BAD_LAYER_HINT,
            )
        parts.append(part)
    return tuple(parts)


def unpack_layer(
    stream: BinaryIO,
    root: Path,
    *,
    privileged: bool | None = None,
    limits: UnpackLimits = UnpackLimits(),
) -> UnpackStats:
    """Extract the uncompressed layer tar `stream` into the empty directory `root`."""
    extractor = _Extractor(root, os.geteuid() == 0 if privileged is None else privileged, limits)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                try:
                    extractor.add(archive, member)
                except OSError as exc:
                    # A name the layer's symlinks lead to can exceed NAME_MAX or PATH_MAX
                    # though every entry's own name is within bounds.
                    if exc.errno != errno.ENAMETOOLONG:
                        raise
                    raise InvalidArgument(
                        f"layer entry {member.name!r} leads to a path too long for this file system",
                        hint=_BAD_LAYER_HINT,
                    ) from exc
    except (tarfile.TarError, EOFError, zlib.error, ValueError) as exc:
        # ValueError: tarfile's own parsing of some malformed PAX records (GNU sparse) raises it.
        raise DataLoss(
            f"layer is not a readable tar archive: {exc}",
            hint="the layer blob is corrupt; remove the image and load it again",
        ) from exc
    return extractor.finish()


class _Extractor:
    def __init__(self, root: Path, privileged: bool, limits: UnpackLimits) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.privileged = privileged
        self.limits = limits
        self.entries = 0
        self.whiteouts: set[str] = set()
        self.opaque: set[str] = set()
        self.skipped_devices = 0
        self.deferred_dirs: dict[str, tarfile.TarInfo] = {}
        self.data_bytes = 0

    # -- entries ---------------------------------------------------------------

    def add(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise InvalidArgument(
                f"layer has more than {self.limits.max_entries} entries", hint=_BAD_LAYER_HINT
            )
        parts = clean_path(member.name, self.limits)
        if parts and parts[-1].startswith(WHITEOUT_PREFIX):
            self._whiteout(parts)
            return
        if not parts:
            if not member.isdir():
                raise InvalidArgument(
                    f"layer entry {member.name!r} replaces the root with a non-directory",
                    hint=_BAD_LAYER_HINT,
                )
            self.deferred_dirs[self.real_root] = member
            return
        target = os.path.join(self._resolve_dir(parts[:-1], create=True), parts[-1])
        existing = _lstat(target)
        replaced_whiteout = target in self.whiteouts
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                self._remove(target, existing)
                os.mkdir(target, 0o700)
            if replaced_whiteout:
                self._set_opaque(target)
            self.deferred_dirs[target] = member
            return
        self._remove(target, existing)
        if member.issym():
            self._check_link_length(member)
            os.symlink(member.linkname, target)
        elif member.islnk():
            os.link(self._hardlink_source(member), target, follow_symlinks=False)
            return  # a hard link shares its source's metadata
        elif member.isreg():
            self._write_file(archive, member, target)
        elif member.isfifo():
            os.mkfifo(target, 0o600)
        elif member.ischr() or member.isblk():
            if not self.privileged:
                self.skipped_devices += 1
                return
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(target, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        else:
            raise InvalidArgument(
                f"layer entry {member.name!r} has unsupported tar type {member.type!r}",
                hint=_BAD_LAYER_HINT,
            )
        self._apply_metadata(target, member)

    def _whiteout(self, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        parent = self._resolve_dir(parts[:-1], create=True)
        if base == OPAQUE_WHITEOUT:
            self._set_opaque(parent)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs metadata such as .wh..wh.plnk: meaningless to overlayfs
        name = base[len(WHITEOUT_PREFIX) :]
        if name in ("", ".", ".."):
            raise InvalidArgument(f"layer has an invalid whiteout {'/'.join(parts)!r}", hint=_BAD_LAYER_HINT)
        target = os.path.join(parent, name)
        existing = _lstat(target)
        if existing is not None:
            # Whiteouts hide lower layers only: what this layer wrote stays, and a
            # directory of its own stops showing the lower layers' contents.
            if stat.S_ISDIR(existing.st_mode):
                self._set_opaque(target)
            return
        try:
            os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        except PermissionError as exc:
            raise FailedPrecondition(
                "converting this image layer needs root: it deletes files of lower layers, "
                "which overlayfs records as device nodes",
                hint="run hyper as root (or through hyperd, which runs as root)",
            ) from exc
        self.whiteouts.add(target)

    def _set_opaque(self, directory: str) -> None:
        try:
            os.setxattr(directory, OPAQUE_XATTR, b"y", follow_symlinks=False)
        except PermissionError as exc:
            raise FailedPrecondition(
                "converting this image layer needs root: it has an opaque directory, "
                f"recorded as the {OPAQUE_XATTR} xattr",
                hint="run hyper as root (or through hyperd, which runs as root)",
            ) from exc
        self.opaque.add(directory)

    # -- path resolution -------------------------------------------------------

    def _resolve_dir(self, parts: Sequence[str], *, create: bool) -> str:
        """The real path of directory `parts`, with symlinks evaluated inside the root."""
        current: list[str] = []
        pending = list(parts)
        follows = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if current:
                    current.pop()
                continue
            candidate = os.path.join(self.real_root, *current, part)
            existing = _lstat(candidate)
            if existing is None:
                if not create:
                    raise InvalidArgument(
                        f"layer refers to {'/'.join(parts)!r}, which it does not contain",
                        hint=_BAD_LAYER_HINT,
                    )
                os.mkdir(candidate, 0o755)
            elif stat.S_ISLNK(existing.st_mode):
                follows += 1
                if follows > self.limits.max_symlink_follows:
                    raise InvalidArgument(
                        f"too many levels of symbolic links under {'/'.join(parts)!r}",
                        hint=_BAD_LAYER_HINT,
                    )
                link = os.readlink(candidate)
                if link.startswith("/"):
                    current = []
                pending = link.split("/") + pending
                continue
            elif candidate in self.whiteouts and create:
                os.unlink(candidate)
                self.whiteouts.discard(candidate)
                os.mkdir(candidate, 0o755)
                self._set_opaque(candidate)
            elif not stat.S_ISDIR(existing.st_mode):
                raise InvalidArgument(
                    f"layer writes below {'/'.join(parts)!r}, which is not a directory",
                    hint=_BAD_LAYER_HINT,
                )
            current.append(part)
        resolved = os.path.join(self.real_root, *current)
        if os.path.commonpath([os.path.realpath(resolved), self.real_root]) != self.real_root:
            raise InvalidArgument(  # unreachable unless the tree changes under us
                f"layer path {'/'.join(parts)!r} resolves outside the root", hint=_BAD_LAYER_HINT
            )
        return resolved

    def _hardlink_source(self, member: tarfile.TarInfo) -> str:
        parts = clean_path(member.linkname, self.limits)
        if not parts:
            raise InvalidArgument(f"hard link {member.name!r} points at the layer root", hint=_BAD_LAYER_HINT)
        source = os.path.join(self._resolve_dir(parts[:-1], create=False), parts[-1])
        existing = _lstat(source)
        if existing is None or stat.S_ISDIR(existing.st_mode) or source in self.whiteouts:
            raise InvalidArgument(
                f"hard link {member.name!r} points at {member.linkname!r}, "
                "which this layer has not extracted",
                hint=_BAD_LAYER_HINT,
            )
        return source

    def _check_link_length(self, member: tarfile.TarInfo) -> None:
        if not member.linkname or "\x00" in member.linkname:
            raise InvalidArgument(
                f"symlink {member.name!r} has an empty target or a NUL byte in it", hint=_BAD_LAYER_HINT
            )
        if len(member.linkname.encode("utf-8", "surrogateescape")) > self.limits.max_path_bytes:
            raise InvalidArgument(
                f"symlink {member.name!r} has a target longer than {self.limits.max_path_bytes} bytes",
                hint=_BAD_LAYER_HINT,
            )

    # -- effects ---------------------------------------------------------------

    def _remove(self, target: str, existing: os.stat_result | None) -> None:
        if existing is None:
            return
        if stat.S_ISDIR(existing.st_mode):
            shutil.rmtree(target)
            self.opaque = {d for d in self.opaque if not d.startswith(target + os.sep)}
            self.opaque.discard(target)
            prefix = target + os.sep
            self.deferred_dirs = {
                path: info
                for path, info in self.deferred_dirs.items()
                if path != target and not path.startswith(prefix)
            }
            self.whiteouts = {w for w in self.whiteouts if not w.startswith(prefix)}
        else:
            os.unlink(target)
            self.whiteouts.discard(target)

    def _write_file(self, archive: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> None:
        self.data_bytes += max(member.size, 0)
        if self.data_bytes > self.limits.max_bytes:
            raise ResourceExhausted(
                f"the layer unpacks to more than {self.limits.max_bytes >> 20} MiB (at {member.name!r})",
                hint="a layer this large, or a compressed bomb, cannot become a layer disk",
            )
        free = os.statvfs(self.root)
        if free.f_bavail * free.f_frsize - member.size < self.limits.reserve_bytes:
            raise ResourceExhausted(
                f"unpacking {member.name!r} would leave less than {self.limits.reserve_bytes >> 20} MiB"
                f" free on the disk of {self.root}",
                hint="free space there (hyper image prune) and try again",
            )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        source = archive.extractfile(member)
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            if source is not None:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)

    def _apply_metadata(self, path: str, member: tarfile.TarInfo) -> None:
        if self.privileged:
            os.chown(path, member.uid, member.gid, follow_symlinks=False)
        for key, value in member.pax_headers.items():
            if key.startswith(_XATTR_PAX_PREFIX):
                self._set_xattr(path, key[len(_XATTR_PAX_PREFIX) :], value)
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def _set_xattr(self, path: str, name: str, value: str) -> None:
        if name.startswith("trusted.overlay."):
            return  # only whiteouts may steer overlayfs; a layer must not forge it
        try:
            os.setxattr(path, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
        except OSError as exc:
            # Unsupported here, or not a valid xattr (a malformed capability, say): dropped.
            if exc.errno not in (
                errno.EPERM,
                errno.ENOTSUP,
                errno.EOPNOTSUPP,
                errno.EACCES,
                errno.EINVAL,
                errno.ERANGE,
                errno.E2BIG,
            ):
                raise

    def finish(self) -> UnpackStats:
        # Directories last: creating their children would move their mtimes, and a
        # read-only directory could not receive them.
        for path, member in sorted(self.deferred_dirs.items(), key=lambda kv: -len(kv[0])):
            self._apply_metadata(path, member)
        return UnpackStats(self.entries, len(self.whiteouts), len(self.opaque), self.skipped_devices)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
