"""QEMU's command line for a VM, and the descriptors it names.

Pure but for `open_passed`: the command line is a function of the VmSpec
alone. QEMU opens none of the VM's files itself but the kernel, initrd and
template memory (QEMU 7.2 takes those only by path): the host binds the QMP
and agent sockets, opens the console log and the disks, and the jailer puts
them at the fixed descriptor numbers `passed_files` assigns (`-add-fd` and
`/dev/fdset/N`, as libvirt does), so the VM's uid needs no right on them.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from hyper.agent.protocol import PORT_NAME
from hyper.vm.accel import Accel
from hyper.vm.driver import SCSI_CONTROLLER, VmSpec
from hyper.vm.jail import TCG_TB_MIB

QEMU_BINARY = "qemu-system-x86_64"
# QEMU's own seccomp filter: no obsolete or privilege-raising system calls, no
# fork or exec, no changing its own scheduling or resource limits.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
QMP_FD, AGENT_FD, CONSOLE_FD, FIRST_DISK_FD = 3, 4, 5, 6
NIC_FD_BACKENDS = ("tap", "stream")
# The guest mounts its file share by this tag (hyper.storage.share.MOUNT_TAG).
SHARE_TAG = "hyper"


def _escape(value: str | Path) -> str:
    """QEMU option values escape a comma by doubling it."""
    return str(value).replace(",", ",,")


@dataclass(frozen=True)
class PassedFile:
    """A descriptor the host opens for QEMU, at the number its command line names."""

    fd: int
    path: Path
    # "listener" (a bound, listening unix socket), "log", "disk", "nic" (opened by the caller)
    # or "share" (the 9p server's socket, given by the share)
    kind: str
    writable: bool
    fdset: int | None = None  # for `-add-fd`: files QEMU opens as /dev/fdset/N


def passed_files(spec: VmSpec) -> tuple[PassedFile, ...]:
    """QMP and agent sockets, the console log, one descriptor per distinct disk,
    and the file share's socket (given by the share, not opened here)."""
    files = [
        PassedFile(QMP_FD, spec.qmp_socket, "listener", True),
        PassedFile(AGENT_FD, spec.agent_socket, "listener", True),
        PassedFile(CONSOLE_FD, spec.console_log, "log", True, fdset=1),
    ]
    disks: dict[tuple[Path, bool], PassedFile] = {}
    for disk in spec.disks:
        key = (disk.path, not disk.read_only)
        if key not in disks:
            number = len(disks)
            disks[key] = PassedFile(FIRST_DISK_FD + number, disk.path, "disk", key[1], fdset=2 + number)
    nics = [
        PassedFile(FIRST_DISK_FD + len(disks) + index, Path(f"nic{index}"), "nic", True)
        for index, nic in enumerate(spec.nics)
        if nic.backend in NIC_FD_BACKENDS
    ]
    if spec.file_share:
        share_fd = FIRST_DISK_FD + len(disks) + len(nics)
        files.append(PassedFile(share_fd, spec.run_dir / "share", "share", True))
    return (*files, *disks.values(), *nics)


def nic_arguments(spec: VmSpec, files: tuple[PassedFile, ...]) -> list[str]:
    """-netdev and -device for each NIC: a passed tap or stream descriptor, or a
    hub port with nothing else on its hub (a device connected to nothing)."""
    fds = {int(str(f.path)[3:]): f.fd for f in files if f.kind == "nic"}
    command: list[str] = []
    for index, nic in enumerate(spec.nics):
        if nic.backend == "tap":
            netdev = f"tap,id=net{index},fd={fds[index]},vhost=off"
        elif nic.backend == "stream":
            netdev = f"stream,id=net{index},addr.type=fd,addr.str={fds[index]}"
        else:
            netdev = f"hubport,id=net{index},hubid={index}"
        command += ["-netdev", netdev, "-device", f"virtio-net-device,netdev=net{index},mac={nic.mac}"]
    return command


def _disk_fdset(files: tuple[PassedFile, ...], path: Path, writable: bool) -> int:
    [fdset] = [f.fdset for f in files if f.kind == "disk" and f.path == path and f.writable == writable]
    assert fdset is not None
    return fdset


def build_command(spec: VmSpec, binary: str = QEMU_BINARY) -> list[str]:
    """The full QEMU command line for `spec`. Pure: no file or process is touched."""
    files = passed_files(spec)
    accel = spec.accel.value if spec.accel is Accel.KVM else f"tcg,tb-size={TCG_TB_MIB}"
    command = [
        binary,
        "-name",
        f"hyper-{spec.name}",
        "-M",
        "microvm",
        "-accel",
        accel,
        "-m",
        f"{spec.memory_mib}M",
        "-smp",
        str(spec.cpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-sandbox",
        SANDBOX,
        "-kernel",
        str(spec.kernel),
        "-initrd",
        str(spec.initrd),
        "-append",
        spec.cmdline,
    ]
    for passed in files:
        if passed.fdset is not None:
            # `opaque` names the file, for query-fdsets and for people reading `ps`.
            command += ["-add-fd", f"fd={passed.fd},set={passed.fdset},opaque={_escape(passed.path)}"]
    console = next(f for f in files if f.kind == "log")
    command += [
        "-chardev",
        f"file,id=console,path=/dev/fdset/{console.fdset}",
        "-serial",
        "chardev:console",
        "-chardev",
        f"socket,id=qmp,fd={QMP_FD},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        "-device",
        "virtio-serial-device,max_ports=2",
        "-chardev",
        f"socket,id=agent,fd={AGENT_FD},server=on,wait=off",
        "-device",
        f"virtserialport,chardev=agent,name={PORT_NAME}",
    ]
    if spec.memory_file is None:
        # Memory the guest frees goes back to the host: the guest reports free
        # 2 MiB blocks and QEMU drops them (MADV_DONTNEED on anonymous RAM).
        command += ["-device", "virtio-balloon-device,free-page-reporting=on"]
    else:
        # No balloon beside a memory file: QEMU 7.2 discards a reported range
        # by punching a hole in the file (then MADV_DONTNEED), even for a
        # private mapping, so a clone's freed pages would zero the template's
        # file under every other VM (seen: the next clone's agent crashed).
        # docs/pool.md, "Idle memory".
        machine = command.index("microvm")
        command[machine] = "microvm,memory-backend=ram"
        share = "on" if spec.memory_shared else "off"
        command += [
            "-object",
            f"memory-backend-file,id=ram,size={spec.memory_mib}M,mem-path={_escape(spec.memory_file)},share={share}",
        ]
    if spec.incoming_state is not None:
        command += ["-incoming", "defer"]
    if spec.accel is Accel.KVM:
        command += ["-cpu", "host"]
    else:
        # RDRAND lets the guest seed its CRNG at once; without it the first
        # read of /dev/urandom (Python does one at start-up) runs the kernel's
        # jitter-entropy loop, which takes over a second under TCG.
        command += ["-cpu", "qemu64,+rdrand"]
    for index, disk in enumerate(spec.disks):
        drive = [
            f"id=disk{index}",
            f"file=/dev/fdset/{_disk_fdset(files, disk.path, not disk.read_only)}",
            "format=raw",
            "if=none",
            # A writable drive would otherwise open read-only first (auto-read-only)
            # and find no read-only descriptor in its fd set.
            "readonly=on" if disk.read_only else "readonly=off,auto-read-only=off",
            # Read-only layers go through the host page cache, shared by every VM.
            "cache=writeback",
            # An error writing on the host (a full disk) is the guest's I/O error,
            # not a VM paused without a word; QMP's BLOCK_IO_ERROR says which.
            "werror=report,rerror=report",
        ]
        if not disk.read_only:
            # What the container deletes is given back to the host (the guest
            # mounts with `discard`): its writable disk never stays grown.
            drive += ["discard=unmap", "detect-zeroes=unmap"]
        command += ["-drive", ",".join(drive)]
        command += ["-device", f"virtio-blk-device,drive=disk{index},serial={_escape(disk.serial)}"]
    if spec.scsi:
        command += ["-device", f"virtio-scsi-device,id={SCSI_CONTROLLER}"]
    served = next((f for f in files if f.kind == "share"), None)
    if served is not None:
        # QEMU's proxy driver: the file work is done by a helper at the socket's
        # other end (hyper.storage.share), so QEMU needs no right on the files.
        command += [
            "-fsdev",
            f"proxy,id=share,sock_fd={served.fd}",
            "-device",
            f"virtio-9p-device,fsdev=share,mount_tag={SHARE_TAG}",
        ]
    return command + nic_arguments(spec, files)


def open_passed(passed: PassedFile) -> int:
    """Open (or bind and listen on) one passed file in this process; close-on-exec."""
    if passed.kind == "listener":
        with contextlib.suppress(FileNotFoundError):
            passed.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(passed.path))
            listener.listen(4)
        except BaseException:
            listener.close()
            raise
        return listener.detach()
    if passed.kind == "nic":
        raise ValueError("a NIC's descriptor is opened by the network, not by path")
    if passed.kind == "share":
        raise ValueError("the file share's socket comes from the share, not from a path")
    if passed.kind == "log":
        return os.open(passed.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    return os.open(passed.path, (os.O_RDWR if passed.writable else os.O_RDONLY) | os.O_CLOEXEC)
