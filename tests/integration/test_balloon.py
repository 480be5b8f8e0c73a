"""Free-page reporting: memory a booted guest frees goes back to the host.

Only VMs whose RAM is anonymous (booted, not resumed from a template) have
the balloon (hyper.vm.qemu_command says why templates cannot).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import BUSYBOX, HyperEnv

pytestmark = pytest.mark.vm

FILL_MIB = 200


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no Rss in /proc/{pid}/smaps_rollup")


def _qemu(env: HyperEnv) -> int:
    found = subprocess.run(
        ["pgrep", "-f", f"qemu-system.*{env.runtime}"], capture_output=True, text=True, check=False
    )
    (pid,) = found.stdout.split()
    return int(pid)


def test_memory_a_booted_guest_frees_returns_to_the_host(hyper_env: HyperEnv) -> None:
    started = hyper_env.run(
        "run", "-d", "--name", "freer", "--shm-size", "256m", BUSYBOX, "sleep", "1000", HYPER_TEMPLATES="0"
    )
    assert started.returncode == 0, started.stderr
    try:
        pid = _qemu(hyper_env)
        # tmpfs pages: guest memory held until the file is removed.
        fill = f"dd if=/dev/zero of=/dev/shm/fill bs=1M count={FILL_MIB}"
        filled = hyper_env.run("exec", "freer", "sh", "-c", fill)
        assert filled.returncode == 0, filled.stderr
        held = _rss_mib(pid)
        removed = hyper_env.run("exec", "freer", "rm", "/dev/shm/fill")
        assert removed.returncode == 0, removed.stderr
        # The guest reports free 2 MiB blocks a few seconds after they free up.
        deadline = time.monotonic() + 180
        while (now := _rss_mib(pid)) > held - FILL_MIB * 0.75 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert now <= held - FILL_MIB * 0.75, f"QEMU's RSS {held:.0f} MiB with the file, {now:.0f} MiB after"
    finally:
        hyper_env.run("rm", "-f", "freer")
