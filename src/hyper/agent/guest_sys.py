"""Linux system calls the guest agent needs that Python 3.11 does not wrap.

Standard library only (ctypes): mount, umount, unshare, setns, finit_module
and reboot, plus the boot steps that use them (kernel modules, /proc, /dev).
Runs inside the VM as part of PID 1.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
SYS_FINIT_MODULE = 313
SYS_PIVOT_ROOT = 155
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
BLKFLSBUF = 0x1261
CLOCK_REALTIME = 0
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.reboot.argtypes = [ctypes.c_int]


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _b(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str = "") -> None:
    result = _libc.mount(_b(source), target.encode(), _b(fstype), flags, data.encode() or None)
    _check(result, f"mount {source} on {target} ({fstype})")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    """Join the namespace `fd` refers to (an open /proc/PID/ns/* file)."""
    _check(_libc.setns(fd, nstype), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(SYS_PIVOT_ROOT, new_root.encode(), put_old.encode()), f"pivot_root {new_root}")


def finit_module(path: str, params: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        result = _libc.syscall(SYS_FINIT_MODULE, fd, params.encode(), 0)
        if result != 0:
            code = ctypes.get_errno()
            if code != errno.EEXIST:  # built in or already loaded
                raise OSError(code, f"loading {path}: {os.strerror(code)}")
    finally:
        os.close(fd)


def set_clock(unix_ns: int) -> None:
    """Set the wall clock: a VM resumed from a template wakes with the template's time."""
    spec = _Timespec(unix_ns // 1_000_000_000, unix_ns % 1_000_000_000)
    _check(_libc.clock_settime(CLOCK_REALTIME, ctypes.byref(spec)), "clock_settime")


def add_entropy(seed: bytes) -> None:
    """Mix host randomness into the CRNG, credited, and reseed it at once.

    Every VM resumed from one template starts with the same CRNG state; this
    makes their random streams diverge before any container runs.
    """
    import fcntl

    fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
        fcntl.ioctl(fd, RNDRESEEDCRNG, 0)
    finally:
        os.close(fd)


def disk_size(device: str) -> int:
    """The disk's size in 512-byte sectors; 0 while the kernel has not read it yet."""
    try:
        with open(f"/sys/block/{os.path.basename(device)}/size") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def flush_block_device(device: str) -> None:
    """Drop the guest's cached blocks of `device`.

    A template's guest scanned its placeholder disks at boot; a VM resumed from
    it has other files behind the same devices and must not read stale blocks.
    """
    import fcntl

    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKFLSBUF, 0)
    finally:
        os.close(fd)


def power_off() -> None:
    os.sync()
    _libc.reboot(LINUX_REBOOT_CMD_POWER_OFF)
    os._exit(0)  # reached only if reboot(2) failed; the kernel then panics and QEMU exits


def module_params(cmdline: str, module: str) -> str:
    """The `module.key=value` words of the kernel command line, as modprobe passes them."""
    wanted = module.replace("-", "_") + "."
    params = []
    for word in cmdline.split():
        if word == "--":
            break
        name, _, _ = word.partition("=")
        if name.replace("-", "_").startswith(wanted) and len(name) > len(wanted):
            params.append(word[len(wanted) :])
    return " ".join(params)


def load_modules(listing: str, cmdline: str, group: str | None, log: list[str]) -> int:
    """Load the modules of `group` (every group: None), listed one per line as
    `PATH REQUIRED(0|1) GROUP`.

    Optional ones (soft dependencies such as a CPU-specific crc32c) may fail.
    Returns how many lines the group had.
    """
    count = 0
    for line in listing.splitlines():
        words = line.split()
        if len(words) != 3 or group not in (None, words[2]):
            continue
        path, required = words[0], words[1]
        count += 1
        name = os.path.basename(path).split(".ko")[0]
        try:
            finit_module(path, module_params(cmdline, name))
        except OSError as exc:
            if required == "1":
                raise
            log.append(f"optional module {name} not loaded: {exc.strerror}")
    return count


def mount_basics() -> None:
    """The agent's own /proc, /sys, /dev, /dev/pts, /run and /tmp."""
    for path in ("/proc", "/sys", "/dev", "/run", "/tmp"):
        os.makedirs(path, exist_ok=True)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755")
    os.makedirs("/dev/pts", exist_ok=True)
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=620,gid=5",
    )
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def bring_up_loopback() -> None:
    import fcntl
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def _find_device(sys_dir: str, attribute: str, value: str) -> str | None:
    """The /dev node of the entry of `sys_dir` whose `attribute` file reads `value`."""
    try:
        entries = os.listdir(sys_dir)
    except FileNotFoundError:
        return None
    for entry in entries:
        try:
            with open(f"{sys_dir}/{entry}/{attribute}") as f:
                if f.read().strip() == value:
                    return f"/dev/{entry}"
        except OSError:
            continue
    return None


def find_port(name: str) -> str | None:
    """The /dev path of the virtio-serial port called `name`, if it exists yet."""
    return _find_device("/sys/class/virtio-ports", "name", name)


def find_disk(serial: str) -> str | None:
    """The /dev path of the disk whose serial is `serial`: a virtio-blk disk
    (its `serial`), or a SCSI disk hot-added to a pod's VM (the unit serial
    number page of its VPD, SPC's 0x80: four bytes of header, then the serial)."""
    found = _find_device("/sys/block", "serial", serial)
    if found is not None:
        return found
    try:
        entries = os.listdir("/sys/block")
    except FileNotFoundError:
        return None
    for entry in entries:
        if not entry.startswith("sd"):
            continue
        try:
            with open(f"/sys/block/{entry}/device/vpd_pg80", "rb") as f:
                page = f.read(260)
        except OSError:
            continue
        if page[4:].rstrip(b"\0 ").decode(errors="replace") == serial:
            return f"/dev/{entry}"
    return None
