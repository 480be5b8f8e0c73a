"""A container's limits and a pod's VM size (hyper.runtime.resources), and the
guest's reading of them (hyper.agent.guest_cgroups): pure functions."""

from __future__ import annotations

import dataclasses

import pytest

from hyper.agent import guest_cgroups
from hyper.errors import InvalidArgument, ResourceExhausted
from hyper.runtime import resources
from hyper.runtime import spec as specs
from hyper.runtime.resources import Resources


def test_cpuset_lists_parse_as_docker_writes_them() -> None:
    assert resources.parse_cpuset("0") == {0}
    assert resources.parse_cpuset("0-2,5") == {0, 1, 2, 5}
    for bad in ("", "a", "2-1", "1-", "-1", "0,,1"):
        with pytest.raises(InvalidArgument):
            resources.parse_cpuset(bad)


def test_cpus_become_nano_cpus_within_the_host() -> None:
    assert resources.parse_nano_cpus("1.5", 2) == 1_500_000_000
    for bad in ("0", "-1", "3", "x", "nan"):
        with pytest.raises(InvalidArgument):
            resources.parse_nano_cpus(bad, 2)


def test_the_agent_gets_each_limit_in_the_kernels_units() -> None:
    limits = Resources(
        memory_mib=256, memory_swap=512 << 20, nano_cpus=1_500_000_000, cpuset_cpus="1", pids_limit=20
    )
    assert limits.message() == {
        "memory_max": 256 << 20,
        "swap_max": 256 << 20,
        "cpu_quota_us": 150_000,
        "cpuset_cpus": "1",
        "pids_max": 20,
    }
    plain = Resources(memory_mib=512).message()
    assert plain == {
        "memory_max": 512 << 20,
        "swap_max": None,
        "cpu_quota_us": None,
        "cpuset_cpus": None,
        "pids_max": None,
    }
    assert Resources(memory_mib=512, memory_swap=-1).message()["swap_max"] is None


def test_the_guest_reads_back_what_the_host_sends() -> None:
    message = Resources(memory_mib=64, memory_swap=128 << 20, nano_cpus=500_000_000, pids_limit=5).message()
    limits = guest_cgroups.read_limits(message)
    assert (limits.memory_max, limits.swap_max, limits.cpu_quota_us, limits.pids_max) == (
        64 << 20,
        64 << 20,
        50_000,
        5,
    )
    assert guest_cgroups.read_limits(None).memory_max is None
    bad: object
    for bad in (
        [],
        {"memory_max": -1},
        {"memory_max": True},
        {"pids_max": "5"},
        {"cpuset_cpus": "0; rm -rf /"},
        {"swap_max": -2},
    ):
        with pytest.raises(ValueError):
            guest_cgroups.read_limits(bad)


def test_swap_below_memory_is_refused_as_docker_refuses_it() -> None:
    with pytest.raises(InvalidArgument, match="memoryswap limit should be larger"):
        Resources(memory_mib=256, memory_swap=128 << 20).check()
    with pytest.raises(InvalidArgument):
        Resources(memory_mib=256, memory_swap=-5).check()
    Resources(memory_mib=256, memory_swap=-1).check()


def test_a_pod_of_one_gets_the_vcpus_its_cpuset_names() -> None:
    assert resources.single_vm_cpus(Resources(memory_mib=512, cpuset_cpus="1"), 1) == 2
    assert resources.single_vm_cpus(Resources(memory_mib=512, nano_cpus=1_500_000_000), 2) == 2
    resources.check_single_vm(Resources(memory_mib=512, cpuset_cpus="1"), 1, 2)
    with pytest.raises(InvalidArgument, match="names CPU 2"):
        resources.check_single_vm(Resources(memory_mib=512, cpuset_cpus="0-3"), 1, 2)


def test_a_pods_vm_is_its_containers_memory_plus_the_overhead_in_steps() -> None:
    three = [Resources(memory_mib=64), Resources(memory_mib=64), Resources(memory_mib=128)]
    memory, cpus = resources.pod_vm_size(three, host_cpus=2)
    assert memory == 512  # 128 + 256 rounded up to 256
    assert memory >= resources.POD_OVERHEAD_MIB + 256
    assert cpus == 1
    wide = [Resources(memory_mib=64, nano_cpus=1_500_000_000), Resources(memory_mib=64, cpuset_cpus="1")]
    assert resources.pod_vm_size(wide, host_cpus=2)[1] == 2
    many = [Resources(memory_mib=64, nano_cpus=2_000_000_000)] * 3
    assert resources.pod_vm_size(many, host_cpus=2)[1] == 2  # never more than the host
    assert resources.pod_vm_size(three, host_cpus=2, memory_mib=2048, cpus=2) == (2048, 2)


def test_a_container_must_fit_the_pods_vm() -> None:
    resources.check_fits_vm(Resources(memory_mib=256, cpuset_cpus="1"), 2, 512, "c")
    with pytest.raises(InvalidArgument, match="names CPU 1"):
        resources.check_fits_vm(Resources(memory_mib=256, cpuset_cpus="1"), 1, 512, "c")
    with pytest.raises(InvalidArgument, match="more than its VM"):
        resources.check_fits_vm(Resources(memory_mib=256, nano_cpus=2_000_000_000), 1, 512, "c")
    with pytest.raises(ResourceExhausted, match="more than its pod's VM"):
        resources.check_fits_vm(Resources(memory_mib=1024), 2, 512, "c")


def test_run_options_carry_the_limits() -> None:
    options = specs.RunOptions(image="x", memory_mib=256, nano_cpus=500_000_000, pids_limit=9)
    found = specs.container_resources(options, host_cpus=2)
    assert (found.memory_mib, found.nano_cpus, found.pids_limit) == (256, 500_000_000, 9)
    with pytest.raises(InvalidArgument, match="names CPU"):
        specs.container_resources(dataclasses.replace(options, cpuset_cpus="5"), host_cpus=2)
