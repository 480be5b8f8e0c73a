"""The guest's side of volumes: destinations resolved inside the container's root, copy-up, tmpfs options."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hyper.agent import guest_volumes
from hyper.agent.guest_sys import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY


def test_resolve_in_root_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "var").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "var" / "run").symlink_to("/run")
    (root / "escape").symlink_to("../../../..")
    (root / "loop").symlink_to("loop")
    assert guest_volumes.resolve_in_root(str(root), "/var/run/app.sock") == str(root / "run" / "app.sock")
    assert guest_volumes.resolve_in_root(str(root), "/escape/etc") == str(root / "etc")
    assert guest_volumes.resolve_in_root(str(root), "/../../x") == str(root / "x")
    with pytest.raises(guest_volumes.MountError, match="too many symlinks"):
        guest_volumes.resolve_in_root(str(root), "/loop/x")


def test_copy_up_fills_only_an_empty_volume(tmp_path: Path) -> None:
    image = tmp_path / "image-dir"
    (image / "sub").mkdir(parents=True)
    (image / "sub" / "f").write_text("from the image")
    (image / "link").symlink_to("sub/f")
    os.chmod(image, 0o750)
    volume = tmp_path / "volume"
    volume.mkdir()
    guest_volumes.copy_up(str(image), str(volume))
    assert (volume / "sub" / "f").read_text() == "from the image"
    assert os.readlink(volume / "link") == "sub/f"
    assert volume.stat().st_mode & 0o7777 == 0o750
    (image / "new").write_text("later")
    guest_volumes.copy_up(str(image), str(volume))  # not empty now: nothing more is copied
    assert not (volume / "new").exists()


def test_tmpfs_options() -> None:
    flags, data = guest_volumes.tmpfs_options(["size=1048576", "mode=1777"])
    assert flags == MS_NOEXEC | MS_NOSUID | MS_NODEV and data == "size=1048576,mode=1777"
    flags, _ = guest_volumes.tmpfs_options(["exec", "ro"])
    assert flags == MS_NOSUID | MS_NODEV | MS_RDONLY
    with pytest.raises(guest_volumes.MountError):
        guest_volumes.tmpfs_options(["uid=0,evil"])


@pytest.mark.parametrize(
    "mounts",
    [
        "not a list",
        [{"type": "overlay", "target": "/x"}],
        [{"type": "bind", "target": "x", "source": "c/m0"}],
        [{"type": "bind", "target": "/x", "source": "../etc"}],
        [{"type": "bind", "target": "/x", "source": "c/m0", "options": "ro"}],
    ],
)
def test_bad_mount_lists_are_refused(mounts: object) -> None:
    with pytest.raises(ValueError):
        guest_volumes.read_mounts(mounts)


def test_mount_point_kinds(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("")
    assert guest_volumes._make_mount_point(str(root), "/etc/app.conf", False) == str(
        root / "etc" / "app.conf"
    )
    with pytest.raises(guest_volumes.MountError, match="not a directory"):
        guest_volumes._make_mount_point(str(root), "/etc/app.conf", True)
    assert Path(guest_volumes._make_mount_point(str(root), "/new/dir", True)).is_dir()
