"""Template layout and keys, and the QEMU options that save and resume a VM."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyper.runtime import templates
from hyper.runtime.settings import Settings
from hyper.vm.accel import Accel
from hyper.vm.driver import VmSpec
from hyper.vm.qemu import build_command


def _config(tmp_path: Path, **changes: object) -> templates.TemplateConfig:
    kernel, initrd = tmp_path / "vmlinux", tmp_path / "initrd"
    for path in (kernel, initrd):
        if not path.exists():
            path.write_bytes(b"x")
    values: dict[str, object] = {
        "kernel": kernel,
        "initrd": initrd,
        "cmdline": "console=ttyS0",
        "accel": Accel.TCG,
        "memory_mib": 512,
        "cpus": 1,
        "qemu_binary": "/bin/true",
    }
    values.update(changes)
    return templates.TemplateConfig(**values)  # type: ignore[arg-type]


def test_key_is_stable_and_follows_every_input(tmp_path: Path) -> None:
    base = _config(tmp_path).key()
    assert base == _config(tmp_path).key()
    assert base != _config(tmp_path, memory_mib=1024).key()
    assert base != _config(tmp_path, cpus=2).key()
    assert base != _config(tmp_path, cmdline="console=ttyS0 quiet").key()
    assert base != _config(tmp_path, accel=Accel.KVM).key()
    (tmp_path / "initrd").write_bytes(b"a new appliance")
    assert base != _config(tmp_path).key()


def test_slot_layout_fills_unused_slots_with_the_placeholder(tmp_path: Path) -> None:
    layers = [tmp_path / "l0", tmp_path / "l1"]
    disks = templates.slot_disks(layers, tmp_path / "rw", tmp_path / "empty")
    assert len(disks) == templates.LAYER_SLOTS + 1
    assert [d.path for d in disks[:2]] == layers
    assert {d.path for d in disks[2:-1]} == {tmp_path / "empty"}
    assert all(d.read_only for d in disks[:-1])
    assert disks[-1].path == tmp_path / "rw" and not disks[-1].read_only
    assert [d.serial for d in disks] == [f"hl{i}" for i in range(templates.LAYER_SLOTS)] + ["hw0"]


def test_slot_layout_refuses_too_many_layers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slots"):
        templates.slot_disks([tmp_path] * (templates.LAYER_SLOTS + 1), tmp_path, tmp_path)


def test_pad_to_slot_grows_sparsely_and_keeps_the_data(tmp_path: Path) -> None:
    disk = tmp_path / "layer.erofs"
    disk.write_bytes(b"superblock" * 100)
    templates.pad_to_slot(disk)
    assert disk.stat().st_size == templates.SLOT_BYTES
    assert disk.stat().st_blocks * 512 < 1 << 20  # sparse: no 10 GiB written
    with disk.open("rb") as f:
        assert f.read(10) == b"superblock"
    assert templates.fits_slot(disk)
    templates.pad_to_slot(disk)  # idempotent
    assert disk.stat().st_size == templates.SLOT_BYTES


def test_placeholder_is_a_sparse_slot(tmp_path: Path) -> None:
    cache = templates.TemplateCache(tmp_path / "templates")
    placeholder = cache.placeholder()
    assert placeholder.stat().st_size == templates.SLOT_BYTES
    assert placeholder.stat().st_blocks == 0
    assert cache.placeholder() == placeholder
    assert cache.find(_config(tmp_path)) is None


def _spec(tmp_path: Path, **changes: object) -> VmSpec:
    values: dict[str, object] = {
        "name": "t",
        "kernel": tmp_path / "k",
        "initrd": tmp_path / "i",
        "cmdline": "c",
        "accel": Accel.TCG,
        "memory_mib": 256,
        "cpus": 1,
        "run_dir": tmp_path,
    }
    values.update(changes)
    return VmSpec(**values)  # type: ignore[arg-type]


def test_template_memory_is_a_shared_file_backend(tmp_path: Path) -> None:
    command = build_command(_spec(tmp_path, memory_file=tmp_path / "mem,ory", memory_shared=True))
    assert "microvm,memory-backend=ram" in command
    backend = command[command.index("-object") + 1]
    assert backend == f"memory-backend-file,id=ram,size=256M,mem-path={tmp_path}/mem,,ory,share=on"
    assert "-incoming" not in command


def test_resumed_vm_maps_memory_privately_and_waits_for_state(tmp_path: Path) -> None:
    command = build_command(_spec(tmp_path, memory_file=tmp_path / "mem", incoming_state=tmp_path / "state"))
    assert command[command.index("-object") + 1].endswith("share=off")
    assert command[command.index("-incoming") + 1] == "defer"


def test_plain_vm_has_no_memory_backend(tmp_path: Path) -> None:
    command = build_command(_spec(tmp_path))
    assert "-object" not in command and "-incoming" not in command
    assert "microvm" in command


def test_templates_setting(tmp_path: Path) -> None:
    assert Settings.from_env({}).templates
    assert not Settings.from_env({"HYPER_TEMPLATES": "0"}).templates


def test_prune_keeps_the_most_recently_used_templates(tmp_path: Path) -> None:
    import os

    from hyper.runtime.templates import Template, TemplateCache

    cache = TemplateCache(tmp_path)
    for index in range(5):
        directory = tmp_path / f"t{index}"
        directory.mkdir()
        (directory / "state").write_bytes(b"x")
        os.utime(directory, (1000 + index, 1000 + index))
    (tmp_path / ".build-x").mkdir()  # a build in progress is never pruned
    cache.prune(keep=Template(tmp_path / "t0"), limit=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".build-x", "t0", "t3", "t4"]
