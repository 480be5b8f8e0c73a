"""Module parameters from the kernel command line, and the module loader's error policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyper.agent.guest_sys import load_modules, module_params

CMDLINE = (
    "console=ttyS0 quiet virtio_mmio.device=4K@0xfeb00000:12 virtio-mmio.device=4K@0xfeb00200:13 "
    "virtio.force=1 virtio_mmiox.bogus=1 virtio_mmio. virtio_mmio.force_legacy "
    "ext4.some-option=a-b rdinit=/usr/bin/python3 -- virtio_mmio.device=after-dashes -I init.pyc"
)


@pytest.mark.parametrize("module", ["virtio_mmio", "virtio-mmio"])
def test_module_params_picks_this_modules_words_in_order(module: str) -> None:
    assert module_params(CMDLINE, module) == ("device=4K@0xfeb00000:12 device=4K@0xfeb00200:13 force_legacy")


def test_module_params_leaves_other_modules_alone() -> None:
    assert module_params(CMDLINE, "virtio") == "force=1"
    assert module_params(CMDLINE, "ext4") == "some-option=a-b"
    assert module_params(CMDLINE, "overlay") == ""


def test_module_params_ignores_everything_after_double_dash() -> None:
    assert module_params("-- virtio_mmio.device=x", "virtio_mmio") == ""
    assert module_params("", "virtio_mmio") == ""


def test_load_modules_raises_for_a_missing_required_module(tmp_path: Path) -> None:
    log: list[str] = []
    listing = f"{tmp_path}/absent.ko 1 boot\n"
    with pytest.raises(FileNotFoundError):
        load_modules(listing, "", "boot", log)


def test_load_modules_logs_a_missing_optional_module_and_goes_on(tmp_path: Path) -> None:
    log: list[str] = []
    listing = f"\n{tmp_path}/crc32c-intel.ko 0 boot\n  \n{tmp_path}/other.ko.xz 0 boot\n"
    assert load_modules(listing, "", "boot", log) == 2
    assert len(log) == 2
    assert "crc32c-intel" in log[0]
    assert "other " in log[1]


def test_load_modules_touches_only_its_group(tmp_path: Path) -> None:
    log: list[str] = []
    listing = (
        f"{tmp_path}/virtio_net.ko 1 net\n"  # would raise if it were loaded
        f"{tmp_path}/9p.ko 0 9p\n"
        f"{tmp_path}/malformed.ko 1\n"
        f"{tmp_path}/too many.ko 1 9p\n"
    )
    assert load_modules(listing, "", "9p", log) == 1
    assert len(log) == 1
    assert "9p" in log[0]
    assert load_modules(listing, "", "boot", log) == 0


def test_load_modules_of_every_group(tmp_path: Path) -> None:
    listing = f"{tmp_path}/a.ko 0 boot\n{tmp_path}/b.ko 0 9p\n{tmp_path}/c.ko 0 net\n"
    log: list[str] = []
    assert load_modules(listing, "", None, log) == 3
    assert len(log) == 3  # each missing one logged, none raised: all optional
