"""A sized volume's backing: a sparse ext4 image loop-mounted on the volume's directory.

A volume made with a size (`--opt size=64m`; every volume of a tenant has
one) must not hold more than that, whatever its container writes. The
host's root file system has no project quotas to turn on while mounted, so
the bound is a file system of that size: `STATE/volumes/NAME/disk.ext4`, a
sparse file formatted with mkfs.ext4, mounted (loop, nosuid, nodev) on the
volume's `_data`. A write past it gets ENOSPC inside the container, through
the VM's share, as from a full disk. The share's helper clones `_data` only
(hyper.storage.share_launcher), so the guest never reaches the image file
itself, and mounts with `discard`, so a file deleted in the volume gives its
blocks back to the host.

The image is formatted under a temporary name and renamed once whole, so a
half-made one is never mounted; each mount and unmount happens under one
lock of the volume store (`.disks.lock`), so two processes (hyperd and a
foreground `hyper run`) never mount one image twice. A mount is made when
the volume is, again when hyperd starts (after a reboot, or anything that
unmounted it) and before a VM's share takes it; it is undone when the
volume is removed, and on every failure of its making.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from hyper.errors import FailedPrecondition, Unavailable
from hyper.locks import exclusive_lock

IMAGE = "disk.ext4"
LOCK = ".disks.lock"
MOUNT_OPTIONS = "loop,nosuid,nodev,discard"
TIMEOUT = 120.0


# No reserved blocks (a disk is all its user's); tables made lazily by the kernel, so
# a large sparse image is formatted at once and stays sparse. Volumes' disks and
# containers' writable disks (hyper.runtime.run) are made alike.
MKFS_SPARSE_EXT4 = (
    "mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
)  # fmt: skip


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except FileNotFoundError:
        raise Unavailable(
            f"cannot {what}: {command[0]} is missing", hint="install e2fsprogs and mount (util-linux)"
        ) from None
    except subprocess.TimeoutExpired:
        raise Unavailable(f"cannot {what}: {' '.join(command)} took over {TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        raise FailedPrecondition(
            f"cannot {what}: {' '.join(command)} exited {done.returncode}: {tail[0]}",
            hint="sized volumes need root, loop devices and mkfs.ext4 on the host",
        )


def mounted_paths(under: Path | None = None) -> set[str]:
    """Mount points of this mount namespace (under `under`, when given), from mountinfo."""
    found = set()
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            # Octal escapes (\040 for a space) as the kernel writes them.
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if under is None or point == str(under) or point.startswith(f"{under}/"):
                found.add(point)
    return found


def is_mounted(target: Path) -> bool:
    return os.path.ismount(target)


def make_disk(directory: Path, size: int) -> None:
    """Format a sparse image of `size` bytes in `directory` and mount it on its `_data`."""
    data = directory / "_data"
    image = directory / IMAGE
    partial = directory / f"{IMAGE}.partial"
    data.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_lock(directory.parent / LOCK):
            with open(partial, "wb") as disk:
                disk.truncate(size)
            _run([*MKFS_SPARSE_EXT4, str(partial)], "format the volume's disk")
            os.rename(partial, image)
            _mount(image, data)
            # A new ext4 has lost+found; a new volume is empty (Docker's copy-up fills empty ones).
            (data / "lost+found").rmdir()
    except BaseException:
        unmount(directory)
        partial.unlink(missing_ok=True)
        image.unlink(missing_ok=True)
        raise


def _mount(image: Path, data: Path) -> None:
    if not is_mounted(data):
        _run(["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(data)], "mount the volume's disk")


def ensure_mounted(directory: Path) -> None:
    """Mount a sized volume's image on its `_data` if it is not (hyperd's start, a VM's share)."""
    image = directory / IMAGE
    if not image.exists():
        raise FailedPrecondition(
            f"the disk of volume {directory.name} is missing ({image})",
            hint="remove the volume and make it again",
        )
    with exclusive_lock(directory.parent / LOCK):
        _mount(image, directory / "_data")


def unmount(directory: Path) -> None:
    """Unmount a volume's `_data` if mounted; its loop device goes with the mount (autoclear)."""
    data = directory / "_data"
    with exclusive_lock(directory.parent / LOCK):
        if is_mounted(data):
            _run(["umount", str(data)], "unmount the volume's disk")


def unmount_all(root: Path) -> list[str]:
    """Unmount every volume disk under `root` (STATE/volumes): a test's state
    removed, or one thrown away. Returns the mount points it undid."""
    undone = []
    for point in sorted(mounted_paths(Path(os.path.realpath(root))), reverse=True):
        if point.endswith("/_data"):
            _run(["umount", point], "unmount a volume's disk")
            undone.append(point)
    return undone
