"""What confines a VM's QEMU, as pure data: limits, the jail's files, the jailer's plan, info lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyper.errors import InvalidArgument
from hyper.vm.accel import Accel
from hyper.vm.confine import JailConfig
from hyper.vm.driver import DiskSpec, VmSpec
from hyper.vm.jail import (
    JAIL_ID_BASE,
    JAIL_ID_SLOTS,
    QEMU_OVERHEAD_MIB,
    TCG_TB_MIB,
    CgroupLimits,
    ConfinementFacts,
    HostLayout,
    JailMode,
    JailSpec,
    cgroup_limits,
    confinement_lines,
    jail_mode_for,
    jail_mounts,
    jail_symlinks,
    jailer_document,
)

MERGED_USR = HostLayout(
    links={"/lib": "usr/lib", "/lib64": "usr/lib64"},
    present=frozenset(
        {
            "/usr",
            "/lib",
            "/lib64",
            "/etc/ld.so.cache",
            "/dev/null",
            "/dev/zero",
            "/dev/urandom",
            "/dev/net/tun",
        }
    ),
)


def make_spec(**overrides: object) -> VmSpec:
    fields: dict[str, object] = {
        "name": "abc123",
        "kernel": Path("/var/cache/hyper/kernels/k/vmlinux"),
        "initrd": Path("/var/cache/hyper/appliances/a.cpio"),
        "cmdline": "console=ttyS0",
        "accel": Accel.TCG,
        "memory_mib": 512,
        "cpus": 2,
        "run_dir": Path("/run/hyper/abc123"),
        "disks": (
            DiskSpec(Path("/var/lib/hyper/images/layers/l0/disk.erofs"), "hl0", True),
            DiskSpec(Path("/var/lib/hyper/containers/c/writable.ext4"), "hw0", False),
        ),
    }
    fields.update(overrides)
    return VmSpec(**fields)  # type: ignore[arg-type]


def test_limits_are_guest_ram_plus_measured_overhead_vcpus_and_threads() -> None:
    limits = cgroup_limits(512, 2)
    assert limits.memory_bytes == (512 + QEMU_OVERHEAD_MIB) << 20
    assert QEMU_OVERHEAD_MIB > TCG_TB_MIB  # the bounded translation buffer and the rest
    assert (limits.cpu_quota_us, limits.cpu_period_us) == (200_000, 100_000)  # two vCPUs: two CPUs' time
    assert limits.pids > 64 + 2  # QEMU's block thread pool (64) and its vCPU threads fit
    assert cgroup_limits(512, 4).pids > limits.pids
    assert cgroup_limits(2048, 1).memory_bytes - cgroup_limits(1024, 1).memory_bytes == 1024 << 20


def test_jail_root_holds_only_what_qemu_opens_by_path() -> None:
    spec = make_spec()
    mounts = jail_mounts(spec, "/usr/bin/qemu-system-x86_64", MERGED_USR)
    by_target = {m.target: m for m in mounts}
    assert set(by_target) == {
        "/usr",
        "/etc/ld.so.cache",
        str(spec.kernel),
        str(spec.initrd),
        "/dev/null",
        "/dev/zero",
        "/dev/urandom",
        "/dev/net/tun",
    }
    assert all(m.source == m.target for m in mounts)  # the same paths as on the host
    assert not [m for m in mounts if m.writable and m.kind != "device"]
    # Disks, sockets and the console log are descriptors: no state or runtime directory is in the root.
    for hidden in ("/var/lib/hyper", "/run/hyper", str(spec.run_dir)):
        assert not [m for m in mounts if m.target.startswith(hidden)]
    assert jail_symlinks(MERGED_USR) == (("/lib", "usr/lib"), ("/lib64", "usr/lib64"))
    depths = [m.target.count("/") for m in mounts]
    assert depths == sorted(depths)  # parents first


def test_template_memory_is_the_only_writable_file_and_kvm_only_with_kvm() -> None:
    memory = Path("/var/cache/hyper/templates/t/memory")
    host = HostLayout(MERGED_USR.links, MERGED_USR.present | {"/dev/kvm"})
    tcg = jail_mounts(make_spec(memory_file=memory), "/usr/bin/qemu-system-x86_64", host)
    assert [m.target for m in tcg if m.writable and m.kind == "file"] == [str(memory)]
    assert "/dev/kvm" not in {m.target for m in tcg}
    kvm = jail_mounts(make_spec(accel=Accel.KVM), "/usr/bin/qemu-system-x86_64", host)
    assert "/dev/kvm" in {m.target for m in kvm}


def test_a_qemu_outside_the_library_dirs_is_bound_itself() -> None:
    non_merged = HostLayout({}, MERGED_USR.present)
    mounts = jail_mounts(make_spec(), "/opt/qemu/bin/qemu-system-x86_64", non_merged)
    targets = {m.target for m in mounts}
    assert {"/opt/qemu/bin/qemu-system-x86_64", "/usr", "/lib", "/lib64"} <= targets
    assert jail_symlinks(non_merged) == ()


def test_jail_spec_round_trips_through_its_document() -> None:
    jail = JailSpec(
        JailMode.PRIVILEGED,
        uid=JAIL_ID_BASE + 7,
        gid=JAIL_ID_BASE + 7,
        groups=(JAIL_ID_BASE,),
        cgroups=("/sys/fs/cgroup/memory/hyper/x-1", "/sys/fs/cgroup/pids/hyper/x-1"),
        limits=CgroupLimits(1 << 30, 100_000, 100_000, 98),
        lease="/run/hyper-jail/ids/1879048199",
    )
    assert JailSpec.from_document(jail.document()) == jail
    assert JailSpec.from_document(JailSpec(JailMode.MINIMAL).document()) == JailSpec(JailMode.MINIMAL)
    assert JailSpec.from_document(None) is None


def test_jailer_document_carries_the_plan() -> None:
    jail = JailSpec(JailMode.PRIVILEGED, uid=JAIL_ID_BASE + 1, gid=JAIL_ID_BASE + 1, cgroups=("/cg",))
    mounts = jail_mounts(make_spec(), "/usr/bin/qemu", MERGED_USR)
    doc = jailer_document(
        jail=jail,
        argv=["qemu", "-M", "microvm"],
        binary="/usr/bin/qemu",
        fds=[(17, 3), (18, 4)],
        root="/run/hyper/abc123/root",
        mounts=mounts,
        symlinks=jail_symlinks(MERGED_USR),
        report_fd=20,
        lease_fd=21,
        detach=False,
        die_with_parent=True,
        host_uid=0,
        host_gid=0,
    )
    assert doc["mode"] == "privileged"
    assert (doc["uid"], doc["gid"], doc["cgroups"]) == (JAIL_ID_BASE + 1, JAIL_ID_BASE + 1, ["/cg"])
    assert doc["fds"] == [[17, 3], [18, 4]]
    assert doc["die_with_parent"] and not doc["detach"]
    assert {m["target"] for m in doc["mounts"]} == {m.target for m in mounts}


def test_modes_follow_who_runs_hyper() -> None:
    root = ConfinementFacts(True, True, "", "v1", ("memory", "cpu", "pids"), True)
    user = ConfinementFacts(False, True, "", "v1", ("memory", "cpu", "pids"), True)
    locked = ConfinementFacts(False, False, "/proc/sys/user/max_user_namespaces is 0", None, (), True)
    assert [jail_mode_for(f) for f in (root, user, locked)] == [
        JailMode.PRIVILEGED,
        JailMode.USER_NAMESPACE,
        JailMode.MINIMAL,
    ]


def test_info_lines_say_what_is_and_is_not_in_effect_and_why() -> None:
    root = dict(
        (layer, (on, why))
        for layer, on, why in confinement_lines(
            ConfinementFacts(True, True, "", "v1", ("memory", "cpu", "pids"), True)
        )
    )
    assert all(on for on, _ in root.values())
    assert str(JAIL_ID_BASE + 1) in root["own uid and gid"][1]
    user = {
        layer: (on, why)
        for layer, on, why in confinement_lines(
            ConfinementFacts(
                False, False, "/proc/sys/user/max_user_namespaces is 0", "v2", ("memory",), False
            )
        )
    }
    assert user["own uid and gid"] == (False, "needs root")
    assert user["own cgroup"] == (False, "needs root")
    assert user["own root and namespaces"][0] is False
    assert "max_user_namespaces" in user["own root and namespaces"][1]
    assert user["seccomp sandbox"] == (False, "this QEMU was built without seccomp")
    assert user["no_new_privs"][0] and user["capabilities"][0]
    partial = {
        layer: why
        for layer, _, why in confinement_lines(
            ConfinementFacts(True, True, "", "v2", ("memory", "pids"), True)
        )
    }
    assert "no cpu controller" in partial["own cgroup"]


def test_jail_config_from_the_environment() -> None:
    assert JailConfig.from_env({}) == JailConfig()
    config = JailConfig.from_env(
        {"HYPER_JAIL_ID_BASE": "0x60000000", "HYPER_CGROUP_PARENT": "/machine/hyper/"}
    )
    assert (config.id_base, config.cgroup_parent) == (0x60000000, "machine/hyper")
    for bad in (
        {"HYPER_JAIL_ID_BASE": "lots"},
        {"HYPER_JAIL_ID_BASE": str((1 << 31) - JAIL_ID_SLOTS)},
        {"HYPER_JAIL_ID_BASE": "0"},
        {"HYPER_CGROUP_PARENT": "../escape"},
    ):
        with pytest.raises(InvalidArgument):
            JailConfig.from_env(bad)
