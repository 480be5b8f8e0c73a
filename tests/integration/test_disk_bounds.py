"""The host's disk under a container: what it deletes is given back, and a
full host disk is an error the container sees and the user is told about,
not a VM frozen without a word."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import BUSYBOX, HyperEnv

pytestmark = pytest.mark.vm

MIB = 1 << 20


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _writable_disk(env: HyperEnv) -> Path:
    (disk,) = (env.state / "containers").glob("*/writable.ext4")
    return disk


def test_deleted_files_shrink_the_writable_disk_on_the_host(hyper_env: HyperEnv) -> None:
    started = hyper_env.run("run", "-d", "--name", "disk", BUSYBOX, "sleep", "600")
    assert started.returncode == 0, started.stderr
    try:
        wrote = hyper_env.run("exec", "disk", "sh", "-c", "head -c 48m /dev/urandom > /big && sync")
        assert wrote.returncode == 0, wrote.stderr
        disk = _writable_disk(hyper_env)
        grown = _allocated(disk)
        assert grown >= 48 * MIB
        removed = hyper_env.run("exec", "disk", "sh", "-c", "rm /big && sync")
        assert removed.returncode == 0, removed.stderr
        # discard is online: the blocks were handed back when rm's sync returned
        assert _allocated(disk) <= grown - 40 * MIB
    finally:
        hyper_env.run("rm", "-f", "disk")


@pytest.fixture
def small_state(hyper_env: HyperEnv) -> Iterator[HyperEnv]:
    """The test's state directory on a 96 MiB tmpfs: the host disk that fills."""
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = Path(tempfile.mkdtemp(prefix="hyper-small-"))
    options = "size=96m,mode=0700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], check=True)
    try:
        subprocess.run(["cp", "-a", f"{hyper_env.state}/.", str(mount_point)], check=True)
        yield HyperEnv(mount_point, hyper_env.runtime, hyper_env.cache, hyper_env.console_logs)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


def test_a_full_host_disk_fails_the_write_and_says_why(small_state: HyperEnv) -> None:
    # Non-zero data (zeros are not stored), each MiB fsync'ed: the error reaches dd.
    script = (
        "head -c 1m /dev/urandom > /seed; i=0; while [ $i -lt 200 ]; do"
        " dd if=/seed of=/big bs=1M count=1 oflag=append conv=notrunc,fsync 2>/dev/null || break;"
        " i=$((i+1)); done; echo written=$i; exit 3"
    )
    done = small_state.run("run", "--rm", BUSYBOX, "sh", "-c", script, timeout=600)
    assert done.returncode == 3, done.stderr  # the container went on and ended on its own
    assert 0 < int(done.stdout.decode().split("=")[1]) < 96  # the guest saw the write fail
    assert b"the host's disk is full" in done.stderr
    assert small_state.qemu_processes() == []


def test_a_chatty_containers_log_is_rotated_within_its_bound(hyper_env: HyperEnv) -> None:
    started = hyper_env.run(
        "run", "-d", "--name", "chatty", "--log-opt", "max-size=100k", "--log-opt", "max-file=2",
        BUSYBOX, "sh", "-c", "seq 1 40000; sleep 600",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 240
        while hyper_env.run("logs", "--tail", "1", "chatty").stdout != b"40000\n":
            assert time.monotonic() < deadline, "the last line never reached the log"
            time.sleep(0.2)
        (directory,) = (hyper_env.state / "containers").glob("*/")
        logs = sorted(p.name for p in directory.glob("log.jsonl*"))
        assert logs == ["log.jsonl", "log.jsonl.1"]
        assert sum(p.stat().st_size for p in directory.glob("log.jsonl*")) <= 2 * 100_000
        shown = hyper_env.run("logs", "chatty").stdout.split()
        assert shown[-1] == b"40000"
        first = int(shown[0])
        assert first > 1 and shown == [str(n).encode() for n in range(first, 40001)]  # the oldest went
    finally:
        hyper_env.run("rm", "-f", "chatty")
