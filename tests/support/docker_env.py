"""hyperd serving the Docker Engine API, for tests that drive it with the real
`docker` CLI and docker-py.

`DockerHyperd` starts `python -m hyper.daemon` with both sockets (its own API
and `--docker-socket`) on temporary directories, waits until the Docker socket
answers `/_ping`, and stops it on close (SIGTERM, then SIGKILL), keeping its
log for the failure message. The registry settings, certs.d and Docker config
of hyperd and of the CLI are temporary too, so no test reads the user's.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from hyper.storage.volume_disk import unmount_all

if TYPE_CHECKING:
    from docker import DockerClient

DOCKER_CLI = shutil.which("docker") or "/usr/local/bin/docker"


def docker_cli_available() -> bool:
    return Path(DOCKER_CLI).is_file() and os.access(DOCKER_CLI, os.X_OK)


def docker_py_available() -> bool:
    try:
        import docker  # noqa: F401
    except ImportError:
        return False
    return True


class DockerHyperd:
    """One hyperd on temporary state; a context manager whose close is idempotent.

    `state` seeds the state directory (e.g. a store with an image), `cache`
    shares the kernel and appliance cache (a fresh one by default: image
    endpoints need none), and `environ` adds to hyperd's environment.
    """

    def __init__(
        self,
        *,
        state: Path | None = None,
        cache: Path | None = None,
        environ: dict[str, str] | None = None,
        netns: str | None = None,
        user: int | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        # Unix socket paths are short (108 bytes): the root lives directly under /tmp.
        self.root = Path(tempfile.mkdtemp(prefix="hdk-", dir="/tmp"))
        self.state = self.root / "state"
        if state is not None:
            shutil.copytree(state, self.state, symlinks=True)
        self.state.mkdir(exist_ok=True)
        self.cache = cache or self.root / "cache"
        self.runtime = self.root / "run"
        self.socket = self.runtime / "hyperd.sock"
        self.docker_socket = self.root / "docker.sock"
        self.cli_config = self.root / "docker-cli"
        self.cli_config.mkdir()
        self.log = self.root / "hyperd.log"
        self.environ = {
            "HYPER_REGISTRY_CONFIG": str(self.root / "no-registries.json"),
            "HYPER_CERTS_DIR": str(self.root / "certs.d"),
            "DOCKER_CONFIG": str(self.root / "hyperd-docker-config"),
            # No bridge, NAT or resolver in the machine's own network namespace:
            # only tests that make a namespace for hyperd (netns) get networks.
            "HYPER_BRIDGE": "bridge" if netns else "none",
            **(environ or {}),
        }
        self.netns = netns
        self.user = user  # hyperd runs as this uid (and gid), its directories made its own
        self.args = args  # more of hyperd's options (e.g. --tenant-listen)
        self._process: subprocess.Popen[bytes] | None = None
        self.keep_root = False  # restart(): the next hyperd takes over this state
        self.final_log = ""

    @property
    def pid(self) -> int:
        assert self._process is not None, "hyperd is not running"
        return self._process.pid

    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_socket}"

    def start(self) -> DockerHyperd:
        env = {**os.environ, **self.environ}
        as_user: list[str] = []
        if self.user is not None:
            as_user = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--clear-groups"]
            env["HOME"] = str(self.root)
            for path in (self.root, *self.root.rglob("*")):
                os.lchown(path, self.user, self.user)
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    *(["ip", "netns", "exec", self.netns] if self.netns else []),
                    *as_user,
                    sys.executable,
                    "-m",
                    "hyper.daemon",
                    "--state-dir",
                    str(self.state),
                    "--cache-dir",
                    str(self.cache),
                    "--runtime-dir",
                    str(self.runtime),
                    "--socket",
                    str(self.socket),
                    "--docker-socket",
                    str(self.docker_socket),
                    *self.args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self.close()
                raise RuntimeError(f"hyperd exited at start: {self.log_tail()}")
            try:
                if self.http().get("/_ping").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError(f"hyperd did not answer on {self.docker_socket}: {self.log_tail()}")

    def http(self, timeout: float = 60) -> httpx.Client:
        """A plain HTTP client of the Docker socket, for what neither client shows."""
        transport = httpx.HTTPTransport(uds=str(self.docker_socket))
        return httpx.Client(transport=transport, base_url="http://docker", timeout=timeout)

    def cli_environ(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
        env.update(DOCKER_HOST=self.docker_host, DOCKER_CONFIG=str(self.cli_config), DOCKER_CLI_HINTS="false")
        return env

    def docker(
        self, *args: str, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the real docker CLI against this hyperd."""
        return subprocess.run(
            [DOCKER_CLI, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.cli_environ(),
            check=False,
        )

    def docker_py(self, **kwargs: Any) -> DockerClient:
        """A docker-py client of this hyperd."""
        from docker import DockerClient

        return DockerClient(base_url=self.docker_host, timeout=120, **kwargs)

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except FileNotFoundError:
            return "(no log)"

    def kill9(self) -> None:
        """SIGKILL hyperd (its VMs run on), as a crash would."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(timeout=10)

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self.log.exists():
            self.final_log = self.log.read_text(errors="replace")  # what it said up to its exit
        if not self.keep_root:
            # VMs outlive hyperd by design; a test that ended (or failed) with
            # pods running must not leave their QEMUs behind its directory.
            _kill_qemus_of(self.root)
            unmount_all(self.state / "volumes")  # sized volumes' file systems, or rmtree stops at them
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> DockerHyperd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_qemus_of(root: Path) -> None:
    """SIGKILL every QEMU whose command line names a path under `root`, and wait for each."""
    pattern = f"qemu-system.*{root}/"
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    for pid in (int(word) for word in found.stdout.split()):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            select.select([pidfd], [], [], 30)  # readable once it is gone
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)
