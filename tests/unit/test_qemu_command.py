"""The QEMU command line for a VM spec, the descriptors it names, and the console tail after a failure."""

from __future__ import annotations

from pathlib import Path

from hyper.agent.protocol import PORT_NAME
from hyper.vm.accel import Accel
from hyper.vm.driver import DiskSpec, HotDisk, VmSpec
from hyper.vm.qemu import build_command, console_tail
from hyper.vm.qemu_command import AGENT_FD, CONSOLE_FD, FIRST_DISK_FD, QMP_FD, SANDBOX, passed_files


def make_spec(accel: Accel = Accel.TCG, **overrides: object) -> VmSpec:
    fields: dict[str, object] = {
        "name": "abc123",
        "kernel": Path("/cache/vmlinux"),
        "initrd": Path("/cache/appliance.cpio"),
        "cmdline": "console=ttyS0 rdinit=/usr/bin/python3 -- -I init.pyc",
        "accel": accel,
        "memory_mib": 768,
        "cpus": 3,
        "run_dir": Path("/run/hyper/vms/abc123"),
        "disks": (
            DiskSpec(Path("/var/lib/hyper/layers/l0.erofs"), "hl0", True),
            DiskSpec(Path("/var/lib/hyper/c/w.ext4"), "hw0", False),
        ),
    }
    fields.update(overrides)
    return VmSpec(**fields)  # type: ignore[arg-type]


def option_values(command: list[str], option: str) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == option]


def option_value(command: list[str], option: str) -> str:
    [value] = option_values(command, option)
    return value


def test_machine_memory_cpus_and_boot() -> None:
    command = build_command(make_spec(), binary="/opt/qemu")
    assert command[0] == "/opt/qemu"
    assert option_value(command, "-M") == "microvm"
    assert option_value(command, "-accel") == "tcg,tb-size=64"  # bounded: it counts in the VM's cgroup
    assert option_value(command, "-m") == "768M"
    assert option_value(command, "-smp") == "3"
    assert "-no-reboot" in command
    assert "-nodefaults" in command
    assert option_value(command, "-kernel") == "/cache/vmlinux"
    assert option_value(command, "-initrd") == "/cache/appliance.cpio"
    assert option_value(command, "-append") == "console=ttyS0 rdinit=/usr/bin/python3 -- -I init.pyc"
    assert option_value(command, "-name") == "hyper-abc123"
    assert "-pidfile" not in command and "-daemonize" not in command  # the jailer forks, not QEMU


def test_always_sandboxed_with_everything_denied() -> None:
    for accel in Accel:
        assert option_value(build_command(make_spec(accel)), "-sandbox") == SANDBOX
    assert SANDBOX.split(",") == [
        "on",
        "obsolete=deny",
        "elevateprivileges=deny",
        "spawn=deny",
        "resourcecontrol=deny",
    ]


def test_cpu_host_only_with_kvm() -> None:
    [tcg_cpu] = option_values(build_command(make_spec(Accel.TCG)), "-cpu")
    assert tcg_cpu != "host"
    assert "+rdrand" in tcg_cpu.split(",")  # seeds the guest's CRNG at once under TCG
    kvm = build_command(make_spec(Accel.KVM))
    assert option_value(kvm, "-accel") == "kvm"
    assert option_value(kvm, "-cpu") == "host"


def test_console_qmp_and_agent_chardevs_are_passed_descriptors() -> None:
    command = build_command(make_spec())
    chardevs = {value.split(",")[1]: value for value in option_values(command, "-chardev")}
    assert chardevs["id=console"] == "file,id=console,path=/dev/fdset/1"
    assert f"fd={CONSOLE_FD},set=1,opaque=/run/hyper/vms/abc123/console.log" in option_values(
        command, "-add-fd"
    )
    assert option_value(command, "-serial") == "chardev:console"
    for name, fd in (("qmp", QMP_FD), ("agent", AGENT_FD)):
        parts = chardevs[f"id={name}"].split(",")
        assert parts[0] == "socket"
        assert f"fd={fd}" in parts
        assert not [p for p in parts if p.startswith("path=")]
        assert "server=on" in parts
        assert "wait=off" in parts
    assert option_value(command, "-mon") == "chardev=qmp,mode=control"
    devices = option_values(command, "-device")
    assert f"virtserialport,chardev=agent,name={PORT_NAME}" in devices
    assert any(d.startswith("virtio-serial-device") for d in devices)


def test_one_drive_and_device_per_disk() -> None:
    command = build_command(make_spec())
    drives = [dict(p.split("=", 1) for p in d.split(",")) for d in option_values(command, "-drive")]
    assert [(d["id"], d["file"], d["readonly"], d["format"], d["if"]) for d in drives] == [
        ("disk0", "/dev/fdset/2", "on", "raw", "none"),
        ("disk1", "/dev/fdset/3", "off", "raw", "none"),
    ]
    # A writable drive must not first open read-only: its fd set holds only a read-write descriptor.
    assert drives[1]["auto-read-only"] == "off"
    assert option_values(command, "-add-fd")[1:] == [
        f"fd={FIRST_DISK_FD},set=2,opaque=/var/lib/hyper/layers/l0.erofs",
        f"fd={FIRST_DISK_FD + 1},set=3,opaque=/var/lib/hyper/c/w.ext4",
    ]
    blk = [d for d in option_values(command, "-device") if d.startswith("virtio-blk-device")]
    assert blk == ["virtio-blk-device,drive=disk0,serial=hl0", "virtio-blk-device,drive=disk1,serial=hw0"]


def test_passed_files_share_one_descriptor_per_file_and_mode() -> None:
    placeholder = Path("/cache/empty-slot.img")
    spec = make_spec(
        disks=(
            DiskSpec(Path("/l0"), "hl0", True),
            DiskSpec(placeholder, "hl1", True),
            DiskSpec(placeholder, "hl2", True),
            DiskSpec(Path("/w"), "hw0", False),
        )
    )
    files = passed_files(spec)
    assert [(f.fd, f.kind, f.writable) for f in files] == [
        (QMP_FD, "listener", True),
        (AGENT_FD, "listener", True),
        (CONSOLE_FD, "log", True),
        (FIRST_DISK_FD, "disk", False),
        (FIRST_DISK_FD + 1, "disk", False),
        (FIRST_DISK_FD + 2, "disk", True),
    ]
    assert [f.path for f in files[:3]] == [spec.qmp_socket, spec.agent_socket, spec.console_log]
    drives = option_values(build_command(spec), "-drive")
    assert [d.split(",")[1] for d in drives] == [
        "file=/dev/fdset/2",
        "file=/dev/fdset/3",
        "file=/dev/fdset/3",
        "file=/dev/fdset/4",
    ]


def test_no_disks_no_drives() -> None:
    command = build_command(make_spec(disks=()))
    assert "-drive" not in command
    assert not [d for d in option_values(command, "-device") if d.startswith("virtio-blk")]


def test_commas_in_paths_are_doubled() -> None:
    spec = make_spec(
        run_dir=Path("/tmp/a,b"),
        disks=(DiskSpec(Path("/tmp/x,format=qcow2"), "s,1", True),),
    )
    command = build_command(spec)
    fdsets = option_values(command, "-add-fd")
    assert f"fd={CONSOLE_FD},set=1,opaque=/tmp/a,,b/console.log" in fdsets
    assert f"fd={FIRST_DISK_FD},set=2,opaque=/tmp/x,,format=qcow2" in fdsets
    [drive] = option_values(command, "-drive")
    assert ",format=raw," in drive
    assert "virtio-blk-device,drive=disk0,serial=s,,1" in option_values(command, "-device")
    # Paths given as whole arguments are not QEMU option strings: no escaping.
    assert option_value(command, "-kernel") == "/cache/vmlinux"


def test_console_tail_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"A" * 10_000 + b"B" * 2_999 + b"\n")
    tail = console_tail(log)
    assert tail == "B" * 2_999 + "\n"
    assert console_tail(log, 5) == "BBBB\n"


def test_console_tail_of_a_short_file_is_all_of_it(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"boot\n\xffpanic\n")
    assert console_tail(log) == "boot\n\ufffdpanic\n"


def test_console_tail_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert console_tail(tmp_path / "nope.log") == ""


def test_file_share_is_a_passed_socket_after_the_disks() -> None:
    spec = make_spec(file_share=True)
    files = passed_files(spec)
    share = files[-1] if files[-1].kind == "share" else next(f for f in files if f.kind == "share")
    assert share.fd == FIRST_DISK_FD + 2 and share.fdset is None  # after the two disks' descriptors
    command = build_command(spec)
    assert option_values(command, "-fsdev") == [f"proxy,id=share,sock_fd={share.fd}"]
    assert "virtio-9p-device,fsdev=share,mount_tag=hyper" in option_values(command, "-device")
    assert "-fsdev" not in build_command(make_spec())


def test_a_scsi_controller_takes_disks_hot_added_later() -> None:
    assert "virtio-scsi-device,id=scsi0" not in build_command(make_spec())
    command = build_command(make_spec(scsi=True))
    assert command[command.index("virtio-scsi-device,id=scsi0") - 1] == "-device"
    disk = HotDisk(Path("/disks/w"), "hs3", False, 3)
    assert (disk.node, disk.device, disk.fdset) == (
        "hot3",
        "hotdev3",
        1003,
    )  # clear of the fixed sets


def test_template_memory_is_private_and_never_discarded_by_a_balloon() -> None:
    """A clone maps the template's memory file private; QEMU 7.2 discards a
    balloon's or free-page report's range by punching a hole in that file,
    which would zero the template under every other clone (docs/pool.md)."""
    for shared in (False, True):
        spec = make_spec(memory_file=Path("/cache/templates/k/memory"), memory_shared=shared)
        command = build_command(spec)
        [backend] = [v for v in option_values(command, "-object") if v.startswith("memory-backend-file")]
        assert f"share={'on' if shared else 'off'}" in backend.split(",")
        assert option_value(command, "-M") == "microvm,memory-backend=ram"
        assert not any("balloon" in device for device in option_values(command, "-device"))


def test_a_booted_vm_reports_free_pages_to_the_host() -> None:
    """Anonymous guest RAM: what the guest frees, QEMU drops (MADV_DONTNEED)."""
    devices = option_values(build_command(make_spec()), "-device")
    assert "virtio-balloon-device,free-page-reporting=on" in devices
