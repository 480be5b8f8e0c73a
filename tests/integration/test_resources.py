"""A container's own limits, enforced in the guest with cgroups, seen from inside
real VMs: --memory, --memory-swap, --cpus, --cpuset-cpus, --pids-limit, and an
over-limit container OOM-killed with Docker's 137 and OOMKilled."""

from __future__ import annotations

import json

import pytest

from hyper.cli.client import DaemonClient
from tests.integration.conftest import BUSYBOX, HyperEnv

pytestmark = pytest.mark.vm


def test_limits_are_visible_inside_the_container(hyper_env: HyperEnv) -> None:
    script = (
        "cat /proc/self/cgroup; cd /sys/fs/cgroup;"
        " for f in memory.max memory.swap.max cpu.max cpuset.cpus pids.max; do echo $f=$(cat $f); done;"
        " nproc; touch x 2>/dev/null && echo writable || echo read-only"
    )
    result = hyper_env.run(
        "run", "--rm", "-m", "256m", "--memory-swap", "512m", "--cpus", "1.5", "--cpuset-cpus", "1",
        "--pids-limit", "20", BUSYBOX, "sh", "-c", script,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split()
    assert lines[0] == "0::/"  # its own cgroup namespace, rooted at its cgroup
    assert "memory.max=268435456" in lines
    assert "memory.swap.max=268435456" in lines  # --memory-swap is memory and swap together
    assert "cpu.max=150000" in lines  # 1.5 CPUs of each 100 ms period
    assert "cpuset.cpus=1" in lines
    assert "pids.max=20" in lines
    assert lines[-2] == "1"  # nproc: the one vCPU of its cpuset, in a VM given two for it
    assert lines[-1] == "read-only"


def test_a_container_without_limits_has_its_vms(hyper_env: HyperEnv) -> None:
    result = hyper_env.run(
        "run", "--rm", BUSYBOX, "sh", "-c", "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max; nproc"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["max", "max", "100000", "1"]


def test_the_pids_limit_stops_a_fork_bomb(hyper_env: HyperEnv) -> None:
    script = "for i in 1 2 3 4 5 6 7 8; do sleep 30 & done 2>&1; wait; echo forked"
    result = hyper_env.run("run", "--rm", "--pids-limit", "5", BUSYBOX, "sh", "-c", script)
    assert b"can't fork" in result.stdout + result.stderr


def test_an_over_limit_container_is_oom_killed_with_dockers_status(hyper_env: HyperEnv) -> None:
    # `tail` keeps a line of /dev/zero, which never ends, in memory.
    created = hyper_env.run("run", "-d", "--name", "hog", "-m", "200m", BUSYBOX, "tail", "/dev/zero")
    assert created.returncode == 0, created.stderr
    waited = hyper_env.run("wait", "hog")
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.decode().strip() == "137"
    state = json.loads(hyper_env.run("inspect", "-f", "{{json .State}}", "hog").stdout)
    assert state["OOMKilled"] is True and state["ExitCode"] == 137
    assert state["Error"] == ""  # Docker's: an OOM kill is the container's own end
    with DaemonClient(hyper_env.runtime / "hyperd.sock") as client:
        assert client.inspect("hog").reason == "OOMKilled"  # hyperd's own API names the reason
