"""Sized volumes on the host: a real ext4 image loop-mounted on the volume's
`_data` (hyper.storage.volume_disk), with no VM. What it owns (the mount and
its loop device) goes when the volume is removed and on each failure of its
making; it is mounted again when missing, never twice. Needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyper.errors import Unavailable
from hyper.storage.volume_disk import IMAGE, mounted_paths, unmount_all
from hyper.storage.volumes import VolumeStore, mount_sized_volumes
from tests.integration.conftest import HyperEnv

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")
MIB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VolumeStore]:
    (tmp_path / "containers").mkdir()
    with VolumeStore(tmp_path / "volumes", tmp_path / "containers") as made:
        try:
            yield made
        finally:
            unmount_all(made.root)


def loops_of(image: Path) -> list[str]:
    """The loop devices backing `image` (a deleted one too: losetup says so)."""
    listed = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    return [line for line in listed.splitlines() if str(image) in line]


def test_a_sized_volume_is_a_file_system_of_its_size_and_goes_whole(store: VolumeStore) -> None:
    volume = store.create("data", options={"size": "16m"})
    image = volume.directory / IMAGE
    assert volume.size == 16 * MIB and volume.document()["Options"] == {"size": str(16 * MIB)}
    assert os.path.ismount(volume.mountpoint) and len(loops_of(image)) == 1
    assert os.listdir(volume.mountpoint) == []  # no lost+found: a new volume is empty
    assert shutil.disk_usage(volume.mountpoint).total <= 16 * MIB
    assert image.stat().st_size == 16 * MIB and image.stat().st_blocks * 512 < 16 * MIB  # sparse
    with pytest.raises(OSError) as full:
        (volume.mountpoint / "big").write_bytes(b"\0" * (17 * MIB))
    assert full.value.errno == 28  # ENOSPC
    store.remove("data")
    assert not os.path.ismount(volume.mountpoint) and not volume.directory.exists()
    assert loops_of(image) == []


def test_a_failure_after_the_mount_leaves_nothing_mounted_or_attached(
    store: VolumeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: object, mode: int) -> None:
        raise PermissionError(13, "injected", str(path))

    monkeypatch.setattr(os, "chmod", refuse)  # after the disk is made and mounted: a late failure
    with pytest.raises(PermissionError):
        store.create("broken", options={"size": "8m"})
    monkeypatch.undo()
    assert not store.exists("broken") and not (store.root / "broken").exists()
    assert mounted_paths(store.root) == set() and loops_of(store.root / "broken" / IMAGE) == []


def test_no_mkfs_is_a_clear_error_and_leaves_nothing(
    store: VolumeStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("mount", "umount"):
        os.symlink(shutil.which(tool) or f"/usr/bin/{tool}", bare / tool)
    monkeypatch.setenv("PATH", str(bare))
    with pytest.raises(Unavailable, match=r"mkfs\.ext4 is missing"):
        store.create("nomkfs", options={"size": "8m"})
    assert not store.exists("nomkfs") and not (store.root / "nomkfs").exists()


def test_a_missing_mount_is_made_again_and_never_twice(store: VolumeStore) -> None:
    volume = store.create("kept", options={"size": "8m"})
    (volume.mountpoint / "note").write_text("kept")
    subprocess.run(["umount", str(volume.mountpoint)], check=True)  # as a reboot leaves it
    assert mount_sized_volumes(store.root, store.containers) == []
    assert (volume.mountpoint / "note").read_text() == "kept"
    store.ensure_mounted(store.get("kept"))
    assert list(mounted_paths(store.root)) == [str(volume.mountpoint)]
    assert len(loops_of(volume.directory / IMAGE)) == 1


def test_the_admins_hyper_volume_takes_a_size(hyper_env: HyperEnv) -> None:
    made = hyper_env.run("volume", "create", "--opt", "size=8m", "sized")
    assert made.returncode == 0, made.stderr
    [inspected] = json.loads(hyper_env.run("volume", "inspect", "sized").stdout)
    assert inspected["Options"] == {"size": str(8 * MIB)} and os.path.ismount(inspected["Mountpoint"])
    bad = hyper_env.run("volume", "create", "--opt", "size=2k", "tiny")
    assert bad.returncode != 0 and b"out of range" in bad.stderr, bad.stderr
    assert hyper_env.run("volume", "rm", "sized").returncode == 0
    assert not Path(inspected["Mountpoint"]).parent.exists()
