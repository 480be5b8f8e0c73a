"""Hyper's directories: the state and runtime ones private, refused when not the user's."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hyper.errors import PermissionDenied
from hyper.paths import HyperPaths, default_paths, prepare, private_dir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_prepare_makes_state_and_runtime_private_and_the_cache_readable(tmp_path: Path) -> None:
    paths = HyperPaths(state=tmp_path / "state", cache=tmp_path / "cache", runtime=tmp_path / "run")
    old = os.umask(0o077)
    try:
        prepare(paths)
    finally:
        os.umask(old)
    assert (_mode(paths.state), _mode(paths.runtime)) == (0o700, 0o700)
    for public in (paths.cache, paths.kernels, paths.appliances, paths.templates):
        assert _mode(public) == 0o755


def test_a_loose_directory_of_ours_is_tightened(tmp_path: Path) -> None:
    loose = tmp_path / "state"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    private_dir(loose)
    assert _mode(loose) == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory another user owns needs root")
def test_a_directory_someone_else_made_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "hyper-1000"
    planted.mkdir()
    os.chown(planted, 65534, 65534)
    with pytest.raises(PermissionDenied) as caught:
        private_dir(planted)
    assert "uid 65534" in caught.value.message
    assert _mode(planted) == 0o755  # not touched


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_the_cli_of_a_user_without_xdg_runtime_dir_refuses_a_planted_tmp_dir(tmp_path: Path) -> None:
    """Another user made /tmp/hyper-UID first (to serve a fake hyperd there): the
    victim's CLI refuses it instead of sending its requests (and -e secrets) there."""
    victim = 65534
    planted = Path(f"/tmp/hyper-{victim}")
    if planted.exists():
        pytest.skip(f"{planted} exists already")
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)
    try:
        home = tmp_path / "home"
        home.mkdir()
        os.chown(home, victim, victim)
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path)}
        assert default_paths(env, uid=victim).runtime == planted / "hyper"
        done = subprocess.run(
            [sys.executable, "-m", "hyper.cli.main", "ps"],
            env=env,
            capture_output=True,
            text=True,
            user=victim,
            group=victim,
            timeout=60,
            check=False,
        )
        assert done.returncode == 125
        assert f"{planted} belongs to uid 0, not to you" in done.stderr
        assert not (planted / "hyper").exists()
    finally:
        subprocess.run(["rm", "-rf", str(planted)], check=False)
