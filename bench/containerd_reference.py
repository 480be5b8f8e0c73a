"""The benchmark's reference: containerd 1.6 + runc (Debian's packages) serving the CRI
on this machine, driven by the same CRI client as hyperd.

Everything is the run's own: containerd's root, state and socket under a
temporary directory, its sandbox ("pause") image and the busybox image built
here and imported with `ctr -n k8s.io images import` (no registry is
reachable), and its network: containerd runs inside a network namespace made
for the run (nsenter), where the CNI bridge plugin puts its bridge,
so pod traffic stays within namespaces of the run. On every path the
sandboxes are removed, containerd stopped, its shims, pod namespaces and
mounts cleaned away.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cri_api.v1 import api_pb2 as cri

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import contextlib

from tests.support.cri import CriClient
from tests.support.images import ArchiveImage, busybox_rootfs_tar, docker_archive_multi, image_config

PAUSE_IMAGE = "localhost/pause:bench"
NETNS_DIR = Path("/var/run/netns")


def available() -> str | None:
    """Why the reference cannot run here; None when it can."""
    for tool in ("containerd", "ctr", "runc", "ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install containerd runc)"
    if not Path("/usr/lib/cni/bridge").exists():
        return "the CNI plugins are not installed (apt-get install containernetworking-plugins)"
    if os.geteuid() != 0:
        return "containerd needs root"
    return None


def _config(work: Path) -> str:
    return f"""version = 2
root = "{work}/root"
state = "{work}/state"
[grpc]
  address = "{work}/containerd.sock"
[ttrpc]
  address = "{work}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # The sandbox's oom_score_adj (-998) cannot be set below containerd's own where
  # the machine is itself a container without CAP_SYS_RESOURCE (this one).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{work}/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"""


def _network(work: Path) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "bench",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cnibench0",
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "198.18.0.0/24"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(work / "ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        }
    )


class Containerd:
    """containerd serving the CRI on a socket of its own, inside a network namespace of its own."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.work = Path(tempfile.mkdtemp(prefix="hyper-bench-containerd-"))
        self.netns = f"hybench-{secrets.token_hex(3)}"
        self.process: subprocess.Popen[bytes] | None = None
        self.namespaces_before: set[str] = set()

    @property
    def socket(self) -> Path:
        return self.work / "containerd.sock"

    def _ctr(self, *args: str) -> None:
        subprocess.run(
            ["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip

    def _images(self) -> Path:
        """The busybox image and the sandbox image (busybox's sleep, as pause), as one archive."""
        rootfs = busybox_rootfs_tar(self.work / "rootfs.tar")
        env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        pause = image_config([rootfs], {"Entrypoint": ["sleep", "2147483647"], "Env": env})
        busybox = image_config([rootfs], {"Cmd": ["sh"], "Env": env})
        return docker_archive_multi(
            self.work / "images.tar",
            [ArchiveImage([rootfs], pause, [PAUSE_IMAGE]), ArchiveImage([rootfs], busybox, [self.image])],
        )

    def start(self) -> Containerd:
        self.namespaces_before = set(os.listdir(NETNS_DIR)) if NETNS_DIR.exists() else set()
        (self.work / "net.d").mkdir()
        (self.work / "net.d" / "10-bench.conflist").write_text(_network(self.work))
        config = self.work / "config.toml"
        config.write_text(_config(self.work))
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True, capture_output=True)
        log = (self.work / "containerd.log").open("ab")
        self.process = subprocess.Popen(
            # nsenter, not `ip netns exec`: that remounts /sys, and runc needs the cgroup mounts.
            ["nsenter", f"--net={NETNS_DIR / self.netns}", "containerd", "--config", str(config)],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {self.log_tail()}")
            time.sleep(0.05)
        self._ctr("images", "import", str(self._images()))
        with CriClient(self.socket) as client:  # the CRI plugin serves once its images are seen
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.call("Version", cri.VersionRequest(), cri.VersionResponse, timeout=5)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        return self

    def log_tail(self) -> str:
        try:
            return (self.work / "containerd.log").read_text()[-3000:]
        except OSError:
            return ""

    def client(self) -> CriClient:
        return CriClient(self.socket)

    def version(self) -> str:
        with self.client() as client:
            answer = client.call("Version", cri.VersionRequest(), cri.VersionResponse)
        return f"{answer.runtime_name} {answer.runtime_version}"

    def _remove_sandboxes(self) -> None:
        with self.client() as client:
            sandboxes = client.call("ListPodSandbox", cri.ListPodSandboxRequest(), cri.ListPodSandboxResponse)
            for sandbox in sandboxes.items:
                client.call(
                    "StopPodSandbox",
                    cri.StopPodSandboxRequest(pod_sandbox_id=sandbox.id),
                    cri.StopPodSandboxResponse,
                )
                client.call(
                    "RemovePodSandbox",
                    cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id),
                    cri.RemovePodSandboxResponse,
                )

    def close(self) -> None:
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                try:
                    self._remove_sandboxes()
                except Exception as exc:  # cleaned below all the same
                    print(f"containerd reference: removing sandboxes failed: {exc}", file=sys.stderr)
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        finally:
            self._clean_leftovers()

    def _clean_leftovers(self) -> None:
        # Shims of this containerd (their command line names its socket), by their PIDs.
        found = subprocess.run(["pgrep", "-f", str(self.work)], capture_output=True, text=True, check=False)
        for pid in (int(p) for p in found.stdout.split()):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        now = set(os.listdir(NETNS_DIR)) if NETNS_DIR.exists() else set()
        for name in sorted(now - self.namespaces_before):
            if name.startswith("cni-") or name == self.netns:
                subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if str(self.work) in line.split()[1]]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Containerd:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
