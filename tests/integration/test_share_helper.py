"""The file share's server on its own (no VM): the requests QEMU would send, sent here.

`ProxyShare` starts the real `virtfs-proxy-helper` through the share
launcher; this test speaks QEMU's proxy protocol to it as a hostile (escaped)
QEMU could, and checks what it can reach: the volumes it was given and
nothing else of the host, even through symlinks made on the host, `..`, or
the directory descriptors the helper hands back.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyper.storage.share import ProxyShare, ShareEntry, helper_binary

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(helper_binary(), os.X_OK),
    reason="needs root and QEMU's virtfs-proxy-helper",
)

# QEMU's hw/9pfs/9p-proxy.h
T_SUCCESS, T_ERROR, T_OPEN, T_CREATE, T_MKNOD, T_MKDIR = 0, 1, 2, 3, 4, 5
T_LSTAT, T_LINK = 8, 7
FD_VALID = 0x7FFFFFFF


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<H", len(data)) + data


class Proxy:
    """QEMU's side of the helper's socket."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)

    def _send(self, kind: int, payload: bytes) -> None:
        self.sock.sendall(struct.pack("<ii", kind, len(payload)) + payload)

    def lstat(self, path: str) -> int:
        """0, or the negative errno the helper answered."""
        self._send(T_LSTAT, _string(path))
        kind, size = struct.unpack("<ii", self.sock.recv(8, socket.MSG_WAITALL))
        body = self.sock.recv(size, socket.MSG_WAITALL)
        return struct.unpack("<i", body)[0] if kind == T_ERROR else 0

    def open(self, path: str, flags: int) -> int:
        """A descriptor, or the negative errno."""
        self._send(T_OPEN, _string(path) + struct.pack("<i", flags))
        fds = array.array("i")
        data, ancillary, _, _ = self.sock.recvmsg(4, socket.CMSG_LEN(fds.itemsize))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: fds.itemsize])
        status = struct.unpack("<i", data)[0]
        return fds[0] if status == FD_VALID else status

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def host_tree(tmp_path: Path) -> Path:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "inside.txt").write_text("in the volume")
    (volume / "to-host-passwd").symlink_to("/etc/passwd")  # made on the host: resolved in the share
    (volume / "up").symlink_to("../../../../..")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    (read_only / "f").write_text("read only")
    (tmp_path / "secret").write_text("outside every volume")
    return tmp_path


@pytest.fixture
def share(host_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyShare, Proxy]]:
    run_dir = tmp_path_factory.mktemp("run")
    share = ProxyShare(
        run_dir,
        (
            ShareEntry(str(host_tree / "volume"), "c1/m0"),
            ShareEntry(str(host_tree / "ro"), "c1/m1", read_only=True),
        ),
    )
    proxy = Proxy(share.start())
    try:
        yield share, proxy
    finally:
        proxy.close()
        share.close()


def test_the_volumes_are_served(share: tuple[ProxyShare, Proxy]) -> None:
    _, proxy = share
    assert proxy.lstat("/c1/m0/inside.txt") == 0
    fd = proxy.open("/c1/m0/inside.txt", os.O_RDONLY)
    assert fd >= 0
    with os.fdopen(fd, "rb") as f:
        assert f.read() == b"in the volume"


def test_nothing_outside_the_share_is_reachable(share: tuple[ProxyShare, Proxy], host_tree: Path) -> None:
    _, proxy = share
    for path in ("/etc/passwd", "/c1/m0/../../../etc/passwd", str(host_tree / "secret"), "/../secret"):
        assert proxy.lstat(path) == -errno.ENOENT, path
    # Symlinks the helper follows resolve inside its root, which is the share.
    assert proxy.open("/c1/m0/to-host-passwd", os.O_RDONLY) == -errno.ENOENT
    assert proxy.open("/c1/m0/up/etc/passwd", os.O_RDONLY) == -errno.ENOENT


def test_read_only_volumes_refuse_writes(share: tuple[ProxyShare, Proxy]) -> None:
    _, proxy = share
    assert proxy.open("/c1/m1/f", os.O_WRONLY) == -errno.EROFS
    assert proxy.open("/c1/m0/inside.txt", os.O_WRONLY) >= 0


def test_a_directory_descriptor_leads_nowhere_on_the_host(share: tuple[ProxyShare, Proxy]) -> None:
    """What an escaped QEMU could do with the descriptors it is given: climb with `..`.
    It finds the helper's own root (libraries, read-only) and the share, not the host."""
    _, proxy = share
    fd = proxy.open("/c1/m0", os.O_RDONLY | os.O_DIRECTORY)
    assert fd >= 0
    try:
        top = os.open("../../../../..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        try:
            names = set(os.listdir(top))
            etc = os.listdir(os.open("etc", os.O_RDONLY | os.O_DIRECTORY, dir_fd=top))
        finally:
            os.close(top)
    finally:
        os.close(fd)
    assert "share" in names and "usr" in names
    assert names <= {"share", "usr", "etc", "lib", "lib64", "lib32", "libx32", "bin", "sbin"}
    assert etc == ["ld.so.cache"]


def test_the_helper_ends_with_its_socket(share: tuple[ProxyShare, Proxy]) -> None:
    running, proxy = share
    assert running.running()
    pid = running.pid
    proxy.close()
    while running.running():
        os.sched_yield()
    assert pid is not None
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z"


def test_volumes_can_join_a_running_share(share: tuple[ProxyShare, Proxy], tmp_path: Path) -> None:
    """A container added to a pod's VM later gets its volumes in the same share."""
    running, proxy = share
    later = tmp_path / "later"
    later.mkdir()
    (later / "g").write_text("joined")
    running.attach((ShareEntry(str(later), "c2/m0"),))
    assert proxy.lstat("/c2/m0/g") == 0
    assert running.entries[-1].target == "c2/m0"
