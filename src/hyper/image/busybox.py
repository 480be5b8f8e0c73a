"""A minimal root filesystem built from the host's static busybox.

Hyper's demo and its tests need a runnable image without network access to a
registry; Debian's busybox-static gives one: a single static binary plus a symlink
per applet, and the few files under /etc that tools expect. The tar is
reproducible (fixed mtimes and order), so its layer digest is stable.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from hyper.errors import FailedPrecondition

DEFAULT_BUSYBOX = Path("/bin/busybox")
FIXED_MTIME = 1_700_000_000  # reproducible output; any constant would do

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"

# (path, mode, uid, gid)
_DIRECTORIES = (
    ("bin", 0o755, 0, 0),
    ("dev", 0o755, 0, 0),
    ("etc", 0o755, 0, 0),
    ("home", 0o755, 0, 0),
    ("home/app", 0o755, 1000, 1000),
    ("proc", 0o555, 0, 0),
    ("root", 0o700, 0, 0),
    ("sys", 0o555, 0, 0),
    ("tmp", 0o1777, 0, 0),
    ("usr", 0o755, 0, 0),
    ("var", 0o755, 0, 0),
)


def busybox_applets(busybox: Path = DEFAULT_BUSYBOX) -> list[str]:
    """The applet names `busybox --list` reports."""
    try:
        result = subprocess.run(
            [str(busybox), "--list"], capture_output=True, check=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise FailedPrecondition(
            f"cannot run {busybox} --list: {exc}",
            hint="install a static busybox (apt-get install busybox-static)",
        ) from exc
    return sorted({name for name in result.stdout.split() if name and "/" not in name})


def write_busybox_rootfs_tar(dest: Path, busybox: Path = DEFAULT_BUSYBOX) -> Path:
    """Write a root filesystem tar with busybox at /bin/busybox to `dest`."""
    applets = busybox_applets(busybox)
    if "sh" not in applets:
        raise FailedPrecondition(f"{busybox} has no `sh` applet", hint="install Debian's busybox-static")
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as archive:
        for path, mode, uid, gid in _DIRECTORIES:
            archive.addfile(_info(path, tarfile.DIRTYPE, mode, uid, gid))
        binary = _info("bin/busybox", tarfile.REGTYPE, 0o755)
        binary.size = busybox.stat().st_size
        with busybox.open("rb") as source:
            archive.addfile(binary, source)
        for applet in applets:
            if applet == "busybox":
                continue
            link = _info(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
            link.linkname = "busybox"
            archive.addfile(link)
        for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            data = text.encode()
            info = _info(name, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return dest


def _info(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = FIXED_MTIME
    return info
