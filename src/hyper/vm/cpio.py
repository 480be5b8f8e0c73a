"""A writer for the `newc` cpio format that the kernel unpacks as an initramfs.

Written here rather than calling cpio(1) so that the appliance can hold
device nodes and exact modes without root, and so that the output is
deterministic (fixed inode numbers and mtimes) for the same input.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Entry:
    """One archive member. `source` is a host file to copy; `data` literal content."""

    path: str  # absolute path inside the archive
    mode: int  # full st_mode, including the file type
    data: bytes = b""
    source: Path | None = None
    rdev: tuple[int, int] = (0, 0)


def directory(path: str, perms: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perms)


def regular(path: str, data: bytes = b"", perms: int = 0o644, source: Path | None = None) -> Entry:
    return Entry(path, stat.S_IFREG | perms, data, source)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def char_device(path: str, major: int, minor: int, perms: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perms, rdev=(major, minor))


def _header(ino: int, entry: Entry, size: int, name: bytes) -> bytes:
    fields = (ino, entry.mode, 0, 0, 1, 0, size, 0, 0, *entry.rdev, len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % value for value in fields)


def _pad(out: BinaryIO, length: int) -> None:
    out.write(b"\0" * (-length % 4))


def write_archive(out: BinaryIO, entries: list[Entry]) -> None:
    """Parents are emitted before children; duplicate paths keep the first entry."""
    seen: set[str] = set()
    ordered: list[Entry] = []
    for entry in entries:
        parts = entry.path.strip("/").split("/")
        for depth in range(1, len(parts)):
            parent = "/" + "/".join(parts[:depth])
            if parent not in seen:
                seen.add(parent)
                ordered.append(directory(parent))
        if entry.path not in seen:
            seen.add(entry.path)
            ordered.append(entry)
    for ino, entry in enumerate(ordered, start=1):
        name = entry.path.lstrip("/").encode()
        content = entry.source.read_bytes() if entry.source is not None else entry.data
        header = _header(ino, entry, len(content), name)
        out.write(header + name + b"\0")
        _pad(out, len(header) + len(name) + 1)
        out.write(content)
        _pad(out, len(content))
    trailer = Entry("TRAILER!!!", 0)
    name = trailer.path.encode()
    header = _header(0, trailer, 0, name)
    out.write(header + name + b"\0")
    _pad(out, len(header) + len(name) + 1)
