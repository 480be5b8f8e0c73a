"""Fixtures for tests that boot real QEMU VMs through the real `hyper` CLI.

Each test gets its own state and runtime directories; the kernel and
appliance cache is shared (HYPER_CACHE_DIR, else Hyper's default) so the
kernel is fetched once. Every VM's console log is copied next to the test's
result under test-results/; it is deleted when the test passes and kept when
it fails.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyper.image import ImageConfig, ImageStore
from hyper.paths import default_paths
from hyper.storage.volume_disk import unmount_all
from tests.support.images import make_busybox_image

RESULTS = Path(__file__).resolve().parents[2] / "test-results"
BUSYBOX = "localhost/busybox:latest"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@dataclass(frozen=True)
class HyperEnv:
    state: Path
    runtime: Path
    cache: Path
    console_logs: Path
    # Foreground `hyper run` in the CLI's own process (HYPER_RUN_DIRECT=1), as the
    # modules that test the VM's own files expect; test_run.py tests both paths.
    direct: bool = True

    def environ(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HYPER_STATE_DIR=str(self.state),
            HYPER_RUNTIME_DIR=str(self.runtime),
            HYPER_CACHE_DIR=str(self.cache),
            HYPER_CONSOLE_LOG_DIR=str(self.console_logs),
            # No bridge or NAT in the machine's own network namespace (tests/integration/test_network*.py
            # run hyperd in namespaces of their own).
            HYPER_BRIDGE="none",
        )
        if self.direct:
            env["HYPER_RUN_DIRECT"] = "1"
        else:
            env.pop("HYPER_RUN_DIRECT", None)
        env.update(extra)
        return env

    def run(
        self, *args: str, input: bytes | None = None, timeout: float = 240, **env: str
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "hyper.cli.main", *args],
            input=input,
            capture_output=True,
            timeout=timeout,
            env=self.environ(**env),
            check=False,
        )

    def runtime_leftovers(self) -> list[Path]:
        """What runs left in the runtime directory; the directory foreground runs share
        may stay, empty, and so may the socket and start lock of a hyperd that runs."""
        kept = {self.runtime / name for name in ("foreground", "hyperd.sock", "hyperd.start.lock")}
        return sorted(p for p in self.runtime.rglob("*") if p not in kept)

    def through(self, path: str) -> HyperEnv:
        """This environment with foreground runs on `path`: "direct", or "daemon" (a
        hyperd started now, so that its one-time note is not a run's output)."""
        env = dataclasses.replace(self, direct=path == "direct")
        if not env.direct:
            started = env.run("ps")
            assert started.returncode == 0, started.stderr
        return env

    def containers(self) -> list[str]:
        """The IDs of the containers hyperd knows, stopped ones too."""
        return [line.decode() for line in self.run("ps", "-aq", "--no-trunc").stdout.split()]

    def qemu_processes(self) -> list[str]:
        """QEMU processes whose command line names this test's runtime directory."""
        found = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True, check=False)
        return [line for line in found.stdout.splitlines() if str(self.runtime) in line]


def stop_hyperd(env: HyperEnv) -> None:
    """Remove every container (their VMs power off), then stop the hyperd the CLI started."""
    from hyper.cli.client import DaemonClient
    from hyper.errors import HyperError

    socket = env.runtime / "hyperd.sock"
    if not socket.exists():
        return
    ids = env.run("ps", "-aq", "--no-trunc").stdout.split()
    if ids:
        env.run("rm", "-f", *(i.decode() for i in ids))
    try:
        with DaemonClient(socket) as client:
            pid = client.ping().pid
    except HyperError:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    cache = Path(os.environ.get("HYPER_CACHE_DIR") or default_paths().cache)
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def image_state(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """One store with the busybox image, built once and copied into each test's state.

    One run here warms the shared cache (kernel, appliance, VM template), so no
    test's output holds the one-time "fetching"/"building" notes.
    """
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (make test installs it)")
    state = tmp_path_factory.mktemp("image-state")
    store = ImageStore(state / "images")
    make_busybox_image(store, BUSYBOX, ImageConfig(cmd=("sh",)))
    store.layer_disks(store.get(BUSYBOX))
    warm_state = tmp_path_factory.mktemp("warm-state")
    shutil.copytree(state, warm_state, dirs_exist_ok=True)
    runtime = Path(tempfile.mkdtemp(prefix="hy-", dir="/tmp"))
    try:
        env = dict(
            os.environ,
            HYPER_STATE_DIR=str(warm_state),
            HYPER_RUNTIME_DIR=str(runtime),
            HYPER_CACHE_DIR=str(shared_cache),
            HYPER_RUN_DIRECT="1",  # in this process: no hyperd to outlive the warming
        )
        warm = subprocess.run(
            [sys.executable, "-m", "hyper.cli.main", "run", "--rm", BUSYBOX, "true"],
            capture_output=True,
            env=env,
            timeout=600,
            check=False,
        )
        assert warm.returncode == 0, warm.stderr.decode(errors="replace")
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    return state


@pytest.fixture
def hyper_env(request: pytest.FixtureRequest, image_state: Path, shared_cache: Path) -> Iterator[HyperEnv]:
    # Unix socket paths are short (108 bytes), so the runtime dir lives directly under /tmp.
    runtime = Path(tempfile.mkdtemp(prefix="hy-", dir="/tmp"))
    state = Path(tempfile.mkdtemp(prefix="hyper-state-"))
    shutil.copytree(image_state, state, dirs_exist_ok=True, symlinks=True)
    name = re.sub(r"[^\w.-]+", "_", request.node.nodeid)
    logs = RESULTS / name
    shutil.rmtree(logs, ignore_errors=True)
    env = HyperEnv(state=state, runtime=runtime, cache=shared_cache, console_logs=logs)
    try:
        yield env
    finally:
        stop_hyperd(env)  # one the CLI started in the background, if any
        leftovers = env.qemu_processes()
        for line in leftovers:
            subprocess.run(["kill", "-9", line.split()[0]], check=False)
        shutil.rmtree(runtime, ignore_errors=True)
        unmount_all(state / "volumes")  # sized volumes' file systems, or rmtree stops at them
        shutil.rmtree(state, ignore_errors=True)
        if not request.node.stash.get(_FAILED, True):
            shutil.rmtree(logs, ignore_errors=True)
        assert not leftovers, f"QEMU processes left behind: {leftovers}"
