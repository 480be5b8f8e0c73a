"""hyperd's pool of ready VMs (hyper.runtime.pool), with real QEMU VMs under TCG:
a run takes a ready VM and hot-adds its disks on the VM's SCSI controller;
the pool refills; nothing outlives hyperd's stop, and a killed hyperd's pool
VMs are reaped by the next one.

No test asserts a wall-clock time; timeouts only stop a test that hangs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from hyper.cli.client import DaemonClient
from tests.integration.conftest import BUSYBOX, HyperEnv

pytestmark = pytest.mark.vm

WAIT = 300.0  # an upper bound under TCG on a busy host, never an assertion of speed


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@contextmanager
def hyperd(env: HyperEnv, *flags: str) -> Iterator[subprocess.Popen[bytes]]:
    """hyperd on the test's directories, with `flags`; stopped (SIGTERM) at the end
    unless the test killed it."""
    process = subprocess.Popen(
        [
            sys.executable, "-m", "hyper.daemon", "--state-dir", str(env.state),
            "--cache-dir", str(env.cache), "--runtime-dir", str(env.runtime), *flags,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(env.state / "hyperd-test.log").open("ab"),
        env=env.environ(),
    )  # fmt: skip
    try:
        wait_for(lambda: answers(env) or process.poll() is not None, "hyperd to answer")
        assert process.poll() is None, (env.state / "hyperd-test.log").read_text()
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)


def answers(env: HyperEnv) -> bool:
    from hyper.cli.client import daemon_answers

    return daemon_answers(env.runtime / "hyperd.sock")


def pool(env: HyperEnv) -> dict[str, object]:
    with DaemonClient(env.runtime / "hyperd.sock") as client:
        return client.pool()


def test_runs_take_ready_vms_and_nothing_outlives_hyperd(hyper_env: HyperEnv) -> None:
    env = hyper_env
    # HYPER_RUN_DIRECT="": the runs go through the hyperd started here.
    with hyperd(env, "--pool", "1", "--pool-memory", "1g"):
        wait_for(lambda: pool(env)["ready"] == 1 and pool(env)["writable_disks"] == 1, "a ready VM")
        script = "echo data > /root/f; cat /root/f; cat /etc/hostname"
        first = env.run("run", "--rm", BUSYBOX, "sh", "-c", script, HYPER_RUN_DIRECT="")
        assert first.returncode == 0, first.stderr
        assert first.stdout.split()[0] == b"data"
        assert pool(env)["claimed"] == 1  # the run's VM was the ready one
        wait_for(lambda: pool(env)["ready"] == 1, "the pool to refill")
        second = env.run(
            "run", "--rm", BUSYBOX, "sh", "-c", "test ! -e /root/f && exit 3", HYPER_RUN_DIRECT=""
        )
        assert second.returncode == 3, second.stderr  # its own writable disk, not the first run's
        assert pool(env)["claimed"] == 2
        missing = env.run("run", "--rm", BUSYBOX, "no-such-command", HYPER_RUN_DIRECT="")
        assert missing.returncode == 127, missing.stderr
        info = env.run("info")
        assert b"1 ready VMs per VM shape" in info.stdout, info.stdout
        wait_for(lambda: pool(env)["ready"] == 1, "the pool to refill")
    assert env.qemu_processes() == []
    assert env.runtime_leftovers() == []
    assert not (env.state / "pool-disks").exists()
    assert list((env.state / "containers").iterdir()) == []


def test_a_killed_hyperds_ready_vms_are_reaped_by_the_next(hyper_env: HyperEnv) -> None:
    env = hyper_env
    with hyperd(env, "--pool", "1") as first:
        wait_for(lambda: pool(env)["ready"] == 1, "a ready VM")
        first.kill()
        first.wait(timeout=60)
    assert len(env.qemu_processes()) == 1  # the ready VM's QEMU is not hyperd's child
    with hyperd(env):
        assert env.qemu_processes() == []  # reaped before the next hyperd answered
        assert pool(env)["size"] == 0
    assert env.runtime_leftovers() == []


def test_the_pool_is_off_by_default(hyper_env: HyperEnv) -> None:
    env = hyper_env
    with hyperd(env):
        assert pool(env)["size"] == 0
        done = env.run("run", "--rm", BUSYBOX, "true", HYPER_RUN_DIRECT="")
        assert done.returncode == 0, done.stderr
        assert pool(env)["claimed"] == 0
    assert env.runtime_leftovers() == []
