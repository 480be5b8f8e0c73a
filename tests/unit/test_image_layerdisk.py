"""Layer disks: what erofs/ext4 images keep, and building each one once across processes."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyper.errors import DataLoss
from hyper.image import ImageStore, LayerDisk
from hyper.image.layerdisk import FS_EROFS, FS_EXT4, build_layer_disk
from hyper.image.unpack import OPAQUE_XATTR, unpack_layer
from tests.support.images import (
    Entry,
    directory,
    docker_archive,
    file,
    image_config,
    layer_tar,
    make_busybox_image,
    symlink,
)

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="whiteouts and ownership need root")
needs_erofs = pytest.mark.skipif(not shutil.which("mkfs.erofs"), reason="erofs-utils missing")

LAYER = layer_tar(
    [
        directory("etc"),
        file("etc/.wh.motd"),
        directory("opt/app"),
        file("opt/app/.wh..wh..opq"),
        file("opt/app/run", b"#!/bin/sh\n", mode=0o4755),
        file("home/app/data", b"d", uid=1000, gid=1000),
        symlink("bin", "usr/bin"),
        Entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        file("mtime", b"", mtime=1_000_000_000),
    ]
)


def _kernel_has(fs_type: str) -> bool:
    with open("/proc/filesystems") as filesystems:
        return any(line.split()[-1] == fs_type for line in filesystems if line.strip())


@contextlib.contextmanager
def mounted(disk: LayerDisk, where: Path) -> Iterator[Path]:
    where.mkdir()
    result = subprocess.run(
        ["mount", "-t", disk.fs_type, "-o", "loop,ro", str(disk.path), str(where)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot loop-mount {disk.fs_type} here: {result.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def _check_tree(root: Path) -> None:
    motd = os.lstat(root / "etc/motd")
    assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == 0, "whiteout device kept"
    assert os.getxattr(root / "opt/app", OPAQUE_XATTR) == b"y", "opaque xattr kept"
    assert stat.S_IMODE((root / "opt/app/run").stat().st_mode) == 0o4755
    data = (root / "home/app/data").stat()
    assert (data.st_uid, data.st_gid) == (1000, 1000)
    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert os.readlink(root / "bin") == "usr/bin"
    assert (root / "mtime").stat().st_mtime == 1_000_000_000


@needs_root
@needs_erofs
def test_erofs_disk_keeps_whiteouts_xattrs_devices_owners(tmp_path: Path) -> None:
    if not _kernel_has("erofs"):
        pytest.skip("the host kernel cannot mount erofs")
    store = ImageStore(tmp_path / "images")
    [image] = store.load(docker_archive(tmp_path / "a.tar", [LAYER], image_config([LAYER]), "t:1"))
    [disk] = store.layer_disks(image)
    assert disk.fs_type == FS_EROFS and disk.path.name == "disk.erofs"
    assert disk.diff_id == image.diff_ids[0]
    with mounted(disk, tmp_path / "mnt") as root:
        _check_tree(root)


@needs_root
@pytest.mark.skipif(not shutil.which("mkfs.ext4"), reason="e2fsprogs missing")
def test_ext4_fallback_keeps_the_same(tmp_path: Path) -> None:
    if not _kernel_has("ext4"):
        pytest.skip("the host kernel cannot mount ext4")
    source = tmp_path / "tree"
    source.mkdir()
    unpack_layer(io.BytesIO(LAYER), source)
    output = tmp_path / "disk.ext4"
    build_layer_disk(source, output, FS_EXT4, privileged=True)
    with mounted(LayerDisk("sha256:x", output, FS_EXT4), tmp_path / "mnt") as root:
        _check_tree(root)


def _disks_in_child(root: str, reference: str, queue: multiprocessing.Queue[str]) -> None:
    store = ImageStore(Path(root))
    disks = store.layer_disks(store.get(reference))
    queue.put(str(disks[0].path))


@needs_erofs
def test_layer_disks_built_once_across_processes(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    image = make_busybox_image(store)
    queue: multiprocessing.Queue[str] = multiprocessing.Queue()
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_disks_in_child, args=(str(store.root), "localhost/busybox", queue))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    paths = {queue.get(timeout=5) for _ in workers}
    [disk] = store.layer_disks(image)
    assert paths == {str(disk.path)}
    layer_dir = store.root / "layers"
    assert sorted(p.name for p in layer_dir.iterdir() if not p.name.startswith(".")) == [
        image.diff_ids[0].split(":")[1]
    ]
    assert not [p for p in layer_dir.iterdir() if p.name.startswith(".build")]
    result = subprocess.run(["fsck.erofs", str(disk.path)], capture_output=True, check=False)
    if shutil.which("fsck.erofs"):
        assert result.returncode == 0, result.stderr


@needs_erofs
def test_corrupted_layer_blob_is_data_loss(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    image = make_busybox_image(store)
    blob = store.root / "blobs/sha256" / image.layers[0].split(":")[1]
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[600] ^= 0xFF  # inside the first file's content: still a tar, other digest
    blob.write_bytes(bytes(data))
    with pytest.raises(DataLoss):
        store.layer_disks(image)
    assert not (store.root / "layers" / image.diff_ids[0].split(":")[1]).exists()
