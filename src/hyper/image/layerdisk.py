"""Turning an unpacked layer directory into a read-only disk image the guest mounts.

erofs is preferred: read-only by design, compact, and mkfs.erofs (erofs-utils 1.5)
keeps what overlayfs needs: ownership, modes, mtimes (`--preserve-mtime`), device
nodes (whiteouts are 0:0 character devices) and xattrs including
`trusted.overlay.opaque` (xattrs stay on with the default tolerance; `-x-1` would
drop them). The image is left uncompressed so the guest kernel needs no erofs
compression support and the host page cache holds it as-is.

Without mkfs.erofs, `mkfs.ext4 -d DIR` builds an ext4 image sized from the tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hyper.errors import FailedPrecondition, InternalError

FS_EROFS = "erofs"
FS_EXT4 = "ext4"
DISK_FILE = {FS_EROFS: "disk.erofs", FS_EXT4: "disk.ext4"}
_EXT4_BLOCK = 4096
_EXT4_INODE_SIZE = 256
_STDERR_TAIL = 2000


def available_fs_type() -> str:
    """The filesystem layer disks are built with on this host."""
    if shutil.which("mkfs.erofs"):
        return FS_EROFS
    if shutil.which("mkfs.ext4"):
        return FS_EXT4
    raise FailedPrecondition(
        "neither mkfs.erofs nor mkfs.ext4 is installed; image layers cannot be converted",
        hint="install erofs-utils (apt-get install erofs-utils)",
    )


def erofs_command(source: Path, output: Path, *, privileged: bool) -> list[str]:
    command = ["mkfs.erofs", "--quiet", "--preserve-mtime"]
    if not privileged:
        # Files unpacked without root belong to the invoking user, not the image.
        command.append("--all-root")
    return [*command, str(output), str(source)]


def ext4_command(source: Path, output: Path, size_bytes: int, inodes: int) -> list[str]:
    return [
        "mkfs.ext4",
        "-q",
        "-F",
        "-d",
        str(source),
        "-b",
        str(_EXT4_BLOCK),
        "-N",
        str(inodes),
        "-I",
        str(_EXT4_INODE_SIZE),
        "-O",
        "^has_journal,^resize_inode",
        "-m",
        "0",
        "-E",
        "root_owner=0:0,lazy_itable_init=0",
        str(output),
        str(size_bytes // 1024) + "k",
    ]


def ext4_geometry(source: Path) -> tuple[int, int]:
    """A generous (size in bytes, inode count) for an ext4 image holding `source`."""
    blocks, inodes = 0, 16
    for directory, dirnames, filenames in os.walk(source):
        inodes += 1
        blocks += 1
        for name in (*dirnames, *filenames):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if name in filenames:
                inodes += 1
                blocks += -(-info.st_size // _EXT4_BLOCK) + 1
    inodes = inodes + inodes // 4 + 64
    data = blocks * _EXT4_BLOCK
    metadata = inodes * _EXT4_INODE_SIZE
    size = (data + metadata) * 5 // 4 + 8 * 1024 * 1024
    return size - size % _EXT4_BLOCK, inodes


def build_layer_disk(source: Path, output: Path, fs_type: str, *, privileged: bool) -> None:
    """Write a read-only filesystem image of directory `source` to `output`."""
    if fs_type == FS_EROFS:
        _run(erofs_command(source, output, privileged=privileged))
    elif fs_type == FS_EXT4:
        size, inodes = ext4_geometry(source)
        _run(ext4_command(source, output, size, inodes))
    else:
        raise InternalError(f"unknown layer disk filesystem {fs_type!r}")


def _run(command: Sequence[str]) -> None:
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=3600
        )
    except FileNotFoundError as exc:
        raise FailedPrecondition(
            f"{command[0]} is not installed", hint="install erofs-utils or e2fsprogs"
        ) from exc
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()[-_STDERR_TAIL:]
        raise InternalError(
            f"`{' '.join(command)}` failed with exit status {result.returncode}: {stderr}",
            hint="check free disk space in the image store; report a bug if it persists",
        )


def remove_tree(path: Path) -> None:
    """Remove a tree even where unpacking left read-only directories."""

    def make_writable(function: object, failed: str, excinfo: object) -> None:
        parent = os.path.dirname(failed)
        os.chmod(parent, 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, 0o700)
            shutil.rmtree(failed, ignore_errors=True)
        else:
            os.unlink(failed)

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=make_writable)
