"""Podman as an independent reader of Hyper's image archives, confined to one directory.

`Podman(directory)` runs the `podman` CLI with its storage (vfs, which needs
no kernel overlay support), libpod temporary files and network configuration
under `directory`, its run root in a short-named temporary directory (podman
limits its length) removed on close, events off, and with a containers.conf
and storage.conf written there instead of the host's (policy.json and
registries.conf are still read from `/etc/containers`), so that a test stores
nothing in `/var/lib/containers` or `/run`. The CNI network backend is
chosen because netavark's run directory is fixed at `/run/containers/networks`
for root; no network is ever set up. One thing stays shared: as root, podman
(like skopeo) records blob locations in containers/image's cache
`/var/lib/containers/cache/blob-info-cache-v1.boltdb`, and neither a flag nor
containers.conf moves it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

PODMAN = "podman"


def podman_available() -> bool:
    return shutil.which(PODMAN) is not None


class Podman:
    """The `podman` CLI on private storage; a context manager whose close is idempotent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.root = directory / "root"
        # Podman refuses a run root longer than 50 characters (pytest's tmp_path is longer).
        self.runroot = Path(tempfile.mkdtemp(prefix="hyper-podman-"))
        for name in ("root", "tmp", "libpod", "networks"):
            (directory / name).mkdir(parents=True, exist_ok=True)
        self.storage_conf = directory / "storage.conf"
        self.storage_conf.write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{self.root}"\nrunroot = "{self.runroot}"\n'
        )
        self.containers_conf = directory / "containers.conf"
        self.containers_conf.write_text(
            "[engine]\n"
            'events_logger = "none"\n'
            'cgroup_manager = "cgroupfs"\n'
            f'tmp_dir = "{directory / "libpod"}"\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{directory / "networks"}"\n'
        )

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update(
            CONTAINERS_CONF=str(self.containers_conf),
            CONTAINERS_STORAGE_CONF=str(self.storage_conf),
            TMPDIR=str(self.directory / "tmp"),  # where images are staged while loading
        )
        return subprocess.run(
            [PODMAN, "--root", str(self.root), "--runroot", str(self.runroot), "--storage-driver", "vfs",
             *args],
            env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def close(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)

    def __enter__(self) -> Podman:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def json(self, *args: str) -> Any:
        done = self(*args)
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
        return json.loads(done.stdout)
