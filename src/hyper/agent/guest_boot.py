"""Inside the guest: what PID 1 does before it serves, and why in this order.

Standard library only. The appliance arrives as an initramfs, which the
kernel unpacks into `rootfs`, the one mount that can never be unmounted or
pivoted away from. A container set up on top of it could only be chrooted,
and chroot is no boundary for root (umount2("/", MNT_DETACH) and setns took
a container out to the agent's files). So the agent leaves the initramfs as
switch_root does: it copies itself (the interpreter, its libraries and the
precompiled standard library, not the kernel modules) into a tmpfs, empties
rootfs, and makes the tmpfs its root. Containers then get a real root with
pivot_root, and a process that climbs out of one finds an empty rootfs.

Every kernel module the guest needs is loaded first, and module loading is
then closed for the life of the VM (`kernel.modules_disabled`), with a few
more sysctls that keep kernel addresses and logs from a container.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time

from hyper.agent import guest_cgroups
from hyper.agent import guest_sys as sys_
from hyper.agent.guest_sys import MS_MOVE, MS_NODEV, MS_NOSUID
from hyper.agent.protocol import PORT_NAME

APPLIANCE_DIR = "/opt/hyper-agent"
MODULES_LIST = f"{APPLIANCE_DIR}/modules.list"
NEW_ROOT = "/.hyper-root"
# Mounted before the move: they follow the agent into its new root.
MOVED_MOUNTS = ("/proc", "/sys", "/dev", "/run", "/tmp")
# Set once modules are loaded; none can be changed back without a reboot.
HARDENING_SYSCTLS = (
    ("kernel/kptr_restrict", "2"),  # no kernel addresses in /proc, even for root
    ("kernel/dmesg_restrict", "1"),
    ("kernel/kexec_load_disabled", "1"),
    ("kernel/unprivileged_bpf_disabled", "1"),
    ("kernel/modules_disabled", "1"),  # last: the point of no return for module loading
)


def copy_tree(source: str, target: str, *, skip: str) -> int:
    """Copy `source` into the existing directory `target`: directories, files
    and symlinks, modes kept; other mounts and `skip` (a path) left out.
    Kernel modules are not copied: they are loaded already. Returns bytes copied."""
    copied = 0
    device = os.lstat(source).st_dev
    for entry in os.scandir(source):
        path = entry.path
        st = entry.stat(follow_symlinks=False)
        if path == skip or st.st_dev != device or entry.name.endswith((".ko", ".ko.xz", ".ko.zst")):
            continue
        destination = os.path.join(target, entry.name)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(destination, stat.S_IMODE(st.st_mode))
            copied += copy_tree(path, destination, skip=skip)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(path), destination)
        elif stat.S_ISREG(st.st_mode):
            copied += _copy_file(path, destination, stat.S_IMODE(st.st_mode))
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(destination, st.st_mode, st.st_rdev)
    return copied


def _copy_file(source: str, destination: str, mode: int) -> int:
    size = 0
    in_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out_fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            while sent := os.sendfile(out_fd, in_fd, None, 1 << 24):
                size += sent
        finally:
            os.close(out_fd)
    finally:
        os.close(in_fd)
    return size


def empty_tree(path: str, *, keep: str) -> None:
    """Remove everything under `path` on its own filesystem but `keep`,
    leaving the mount points of other filesystems (empty) in place."""
    device = os.lstat(path).st_dev
    for entry in os.scandir(path):
        st = entry.stat(follow_symlinks=False)
        if entry.path == keep or st.st_dev != device:
            continue
        if stat.S_ISDIR(st.st_mode):
            empty_tree(entry.path, keep=keep)
            with contextlib.suppress(OSError):  # `keep` is under it
                os.rmdir(entry.path)
        else:
            os.unlink(entry.path)


def leave_initramfs() -> int:
    """Move the agent's root from rootfs onto a tmpfs (switch_root's steps).
    Returns the bytes copied."""
    os.mkdir(NEW_ROOT, 0o755)
    sys_.mount("tmpfs", NEW_ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    copied = copy_tree("/", NEW_ROOT, skip=NEW_ROOT)
    for mount_point in MOVED_MOUNTS:
        target = NEW_ROOT + mount_point
        os.makedirs(target, exist_ok=True)
        sys_.mount(mount_point, target, None, MS_MOVE)
    empty_tree("/", keep=NEW_ROOT)
    os.chdir(NEW_ROOT)
    sys_.mount(NEW_ROOT, "/", None, MS_MOVE)
    os.chroot(".")
    os.chdir("/")
    return copied


def write_sysctl(name: str, value: str) -> None:
    with open(f"/proc/sys/{name}", "w") as f:
        f.write(value)


def boot() -> tuple[int, list[str]]:
    """Everything PID 1 does before it can serve: mounts, modules, a real
    root, hardening, the channel. Returns the channel's fd and the boot log."""
    log: list[str] = [f"{time.monotonic():.3f} agent started"]
    sys_.mount_basics()
    with open("/proc/cmdline") as f:
        cmdline = f.read()
    try:
        with open(MODULES_LIST) as f:
            sys_.load_modules(f.read(), cmdline, None, log)
    except FileNotFoundError:
        log.append("no modules.list: using the kernel's built-in drivers")
    log.append(f"{time.monotonic():.3f} modules loaded")
    copied = leave_initramfs()
    log.append(f"{time.monotonic():.3f} left the initramfs ({copied >> 10} KiB copied)")
    guest_cgroups.mount_hierarchy(log)  # each container's limits (guest_cgroups)
    for name, value in HARDENING_SYSCTLS:
        try:
            write_sysctl(name, value)
        except OSError as exc:
            log.append(f"sysctl {name} not set: {exc.strerror}")
    try:
        sys_.bring_up_loopback()
    except OSError as exc:
        log.append(f"loopback not configured: {exc}")
    deadline = time.monotonic() + 10
    while (port := sys_.find_port(PORT_NAME)) is None or not os.path.exists(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"virtio-serial port {PORT_NAME} did not appear")
        time.sleep(0.005)
    log.append(f"{time.monotonic():.3f} channel open")
    return os.open(port, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC), log
