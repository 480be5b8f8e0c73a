"""VM cgroups: finding the hierarchies, the limit files, making and removing directories.

The effects are exercised on a plain directory standing in for a cgroup mount
(the real one needs root and is covered by tests/integration/test_confinement.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hyper.errors import FailedPrecondition
from hyper.vm import cgroups
from hyper.vm.jail import CgroupLimits

# This host's: cgroup v1 controllers, plus an empty v2 hierarchy (a "hybrid" host).
HYBRID = """\
25 24 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
30 25 0:27 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
31 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
COMOUNTED = "26 25 0:23 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
UNIFIED = "25 24 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
LIMITS = CgroupLimits(memory_bytes=640 << 20, cpu_quota_us=200_000, cpu_period_us=100_000, pids=100)


def test_a_hybrid_host_uses_its_v1_controllers() -> None:
    host = cgroups.parse_mountinfo(HYBRID)
    assert host is not None and host.version == "v1"
    assert {str(h.mount): set(h.controllers) for h in host.hierarchies} == {
        "/sys/fs/cgroup/cpu": {"cpu"},
        "/sys/fs/cgroup/memory": {"memory"},
        "/sys/fs/cgroup/pids": {"pids"},
    }
    assert host.controllers == ("memory", "cpu", "pids")
    assert [str(d) for d in host.directories("hyper", "vm-1")] == [
        "/sys/fs/cgroup/cpu/hyper/vm-1",
        "/sys/fs/cgroup/memory/hyper/vm-1",
        "/sys/fs/cgroup/pids/hyper/vm-1",
    ]


def test_comounted_v1_controllers_share_a_directory() -> None:
    host = cgroups.parse_mountinfo(COMOUNTED)
    assert host is not None
    [hierarchy] = host.hierarchies
    assert hierarchy.controllers == frozenset({"cpu"})
    assert host.controllers == ("cpu",)


def test_a_unified_host_uses_v2_with_the_controllers_it_offers() -> None:
    host = cgroups.parse_mountinfo(UNIFIED, "cpuset cpu io memory hugetlb pids rdma misc")
    assert host is not None and host.version == "v2"
    assert host.controllers == ("memory", "cpu", "pids")
    assert cgroups.parse_mountinfo(UNIFIED, "io") is not None
    assert cgroups.parse_mountinfo("", None) is None


def test_limit_files_for_v1_and_v2() -> None:
    every = frozenset({"memory", "cpu", "pids"})
    assert cgroups.limit_values("v1", every, LIMITS) == [
        ("memory.limit_in_bytes", str(640 << 20)),
        ("memory.memsw.limit_in_bytes", str(640 << 20)),  # no swap beyond the limit
        ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "200000"),
        ("pids.max", "100"),
    ]
    assert cgroups.limit_values("v2", every, LIMITS) == [
        ("memory.max", str(640 << 20)),
        ("memory.swap.max", "0"),
        ("cpu.max", "200000 100000"),
        ("pids.max", "100"),
    ]
    assert cgroups.limit_values("v1", frozenset({"pids"}), LIMITS) == [("pids.max", "100")]


def _fake_v1(root: Path) -> cgroups.CgroupHost:
    hierarchies = []
    for controller in ("memory", "pids"):
        (root / controller).mkdir(parents=True)
        hierarchies.append(cgroups.Hierarchy(root / controller, frozenset({controller})))
    return cgroups.CgroupHost("v1", tuple(hierarchies))


def test_create_writes_limits_and_skips_unaccounted_swap(tmp_path: Path) -> None:
    host = _fake_v1(tmp_path)
    made = cgroups.create(host, "hyper", "vm-1", LIMITS)
    assert made == (str(tmp_path / "memory/hyper/vm-1"), str(tmp_path / "pids/hyper/vm-1"))
    assert (tmp_path / "memory/hyper/vm-1/memory.limit_in_bytes").read_text() == str(640 << 20)
    assert not (tmp_path / "memory/hyper/vm-1/memory.memsw.limit_in_bytes").exists()
    assert (tmp_path / "pids/hyper/vm-1/pids.max").read_text() == "100"
    assert sorted(p.name for p in cgroups.children(host, "hyper")) == ["vm-1", "vm-1"]


def test_a_taken_name_fails_clearly_and_makes_nothing_more(tmp_path: Path) -> None:
    host = _fake_v1(tmp_path)
    (tmp_path / "memory/hyper/vm-1").mkdir(parents=True)
    with pytest.raises(FailedPrecondition, match="cannot make the VM's cgroup hyper/vm-1"):
        cgroups.create(host, "hyper", "vm-1", LIMITS)
    assert not (tmp_path / "pids/hyper/vm-1").exists()


def test_pids_of_missing_or_empty_cgroups(tmp_path: Path) -> None:
    directory = tmp_path / "vm"
    directory.mkdir()
    (directory / "cgroup.procs").write_text("12\n34\n")
    assert cgroups.pids([str(directory), str(tmp_path / "gone")]) == {12, 34}
    assert cgroups.remove([str(tmp_path / "gone")])
