"""The agent's move off the initramfs: the copy and the emptying, on a host directory."""

from __future__ import annotations

import os
from pathlib import Path

from hyper.agent.guest_boot import copy_tree, empty_tree


def _tree(root: Path) -> None:
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/libpython.so").write_bytes(b"x" * 70_000)
    (root / "usr/bin").mkdir()
    (root / "usr/bin/python3").write_bytes(b"#!")
    (root / "usr/bin/python3").chmod(0o755)
    (root / "lib").symlink_to("usr/lib")
    (root / "lib/modules/6.1/kernel").mkdir(parents=True)
    (root / "lib/modules/6.1/kernel/virtio_blk.ko").write_bytes(b"module")
    (root / "lib/modules/6.1/kernel/crc32.ko.xz").write_bytes(b"module")


def test_copy_keeps_files_modes_and_links_but_not_modules_or_the_target(tmp_path: Path) -> None:
    source = tmp_path / "rootfs"
    source.mkdir()
    _tree(source)
    target = source / ".new-root"
    target.mkdir()
    copied = copy_tree(str(source), str(target), skip=str(target))
    assert copied == 70_002
    assert (target / "usr/lib/libpython.so").read_bytes() == b"x" * 70_000
    assert os.stat(target / "usr/bin/python3").st_mode & 0o777 == 0o755
    assert os.readlink(target / "lib") == "usr/lib"
    assert not list((target / "usr/lib/modules/6.1/kernel").iterdir())  # modules are loaded already
    assert not (target / ".new-root").exists()


def test_empty_tree_removes_all_but_what_it_keeps(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    _tree(root)
    keep = root / ".new-root"
    (keep / "inside").mkdir(parents=True)
    empty_tree(str(root), keep=str(keep))
    assert sorted(p.name for p in root.iterdir()) == [".new-root"]
    assert (keep / "inside").is_dir()
