"""What a container leaves on the host is its user's alone: hyperd's database
(with its WAL, where environment secrets land first), logs, records and disks."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.integration.conftest import BUSYBOX, HyperEnv

pytestmark = pytest.mark.vm


def _loose(root: Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink() or path.is_socket():
            continue
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            found.append(f"{oct(stat.S_IMODE(path.stat().st_mode))} {path}")
    return found


def test_state_and_runtime_are_private_to_hyperds_user(hyper_env: HyperEnv) -> None:
    started = hyper_env.run("run", "-d", "-e", "API_TOKEN=secret", BUSYBOX, "sh", "-c", "echo out; sleep 600")
    assert started.returncode == 0, started.stderr
    try:
        assert stat.S_IMODE(hyper_env.state.stat().st_mode) == 0o700
        assert stat.S_IMODE(hyper_env.runtime.stat().st_mode) == 0o700
        created = [hyper_env.state / "containers", *hyper_env.state.glob("hyperd.db*"), hyper_env.runtime]
        assert any(p.name == "hyperd.db-wal" for p in created) or (hyper_env.state / "hyperd.db").exists()
        loose = [line for root in created if root.exists() for line in _loose(root)]
        assert loose == []
    finally:
        hyper_env.run("rm", "-f", started.stdout.decode().strip())
