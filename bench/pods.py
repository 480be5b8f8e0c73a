"""Pod benchmark: three containers in one pod against three single-container `run -d`.

Starts a hyperd of its own (temporary state and sockets, the default kernel
cache) and measures, alternating, N times each (default 3):
  (a) a pod of three: POST /v1/pods, three containers created in it, then
      POST /v1/pods/P/start until hyperd answers that all three run (one VM
      resumed or booted for the pod, then each container's disks hot-added on
      its SCSI controller and its root mounted);
  (b) three `run -d` (POST /v1/containers), one after the other, until the
      last answers that its container runs (three VMs);
and, with every container idle (`sleep`), the host memory of each set: the
RSS and PSS of its QEMU processes. Prints medians and ratios b/a.

Usage: python bench/pods.py [-n N]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from hyper.image import ImageConfig, ImageStore
from hyper.image.busybox import write_busybox_rootfs_tar
from hyper.paths import default_paths
from hyper.runtime.run import prepare_vm_inputs
from hyper.runtime.settings import Settings

IMAGE = "localhost/busybox:latest"
COMMAND = ["sleep", "1000"]


def make_state(state: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        tar = Path(scratch) / "rootfs.tar"
        write_busybox_rootfs_tar(tar)
        ImageStore(state / "images").import_rootfs(tar, IMAGE, ImageConfig(cmd=("sh",)))


def start_hyperd(root: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "hyper.daemon", "--state-dir", str(root / "state"),
        "--cache-dir", str(default_paths().cache), "--runtime-dir", str(root / "run"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=(root / "hyperd.log").open("wb"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with client(root / "run" / "hyperd.sock") as http:
                if http.get("/v1/ping").status_code == 200:
                    return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"hyperd did not start: {(root / 'hyperd.log').read_text()[-2000:]}")


def client(socket: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://hyperd", timeout=600)


def _memory_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields["Rss"], fields["Pss"]


def qemu_memory(runtime: Path) -> tuple[int, int]:
    """RSS and PSS (KiB) of every QEMU of this hyperd, summed."""
    found = subprocess.run(
        ["pgrep", "-f", f"qemu-system.*{runtime}"], capture_output=True, text=True, check=False
    )
    figures = [_memory_kib(int(pid)) for pid in found.stdout.split()]
    return sum(f[0] for f in figures), sum(f[1] for f in figures)


def check(answer: httpx.Response) -> httpx.Response:
    if answer.is_error:
        raise SystemExit(
            f"{answer.request.method} {answer.request.url.path}: {answer.status_code} {answer.text}"
        )
    return answer


def time_pod(http: httpx.Client, round_: int) -> float:
    name = f"pod{round_}"
    begin = time.perf_counter()
    check(http.post("/v1/pods", json={"name": name}))
    for i in range(3):
        body = {"image": IMAGE, "command": COMMAND, "name": f"{name}c{i}", "pod": name, "start": False}
        check(http.post("/v1/containers", json=body))
    check(http.post(f"/v1/pods/{name}/start"))
    return time.perf_counter() - begin


def time_singles(http: httpx.Client, round_: int) -> float:
    begin = time.perf_counter()
    for i in range(3):
        check(
            http.post("/v1/containers", json={"image": IMAGE, "command": COMMAND, "name": f"s{round_}c{i}"})
        )
    return time.perf_counter() - begin


def clean(http: httpx.Client) -> None:
    for pod in check(http.get("/v1/pods")).json():
        check(http.delete(f"/v1/pods/{pod['Id']}", params={"force": "1"}))
    for container in check(http.get("/v1/containers", params={"all": "1"})).json():
        check(http.delete(f"/v1/containers/{container['id']}", params={"force": "1"}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=3, help="rounds of each (default 3)")
    args = parser.parse_args()
    inputs = asyncio.run(prepare_vm_inputs(default_paths(), Settings.from_env(), None))
    root = Path(tempfile.mkdtemp(prefix="hy-pods-", dir="/tmp"))
    try:
        make_state(root / "state")
        daemon = start_hyperd(root)
        try:
            with client(root / "run" / "hyperd.sock") as http:
                # One pod and one single run first: their VM templates are made then, not timed.
                time_pod(http, -1)
                time_singles(http, -1)
                clean(http)
                pods, singles, pod_memory, single_memory = [], [], [], []
                for round_ in range(args.n):
                    pods.append(time_pod(http, round_))
                    time.sleep(2)  # idle: the guests settle
                    pod_memory.append(qemu_memory(root / "run"))
                    clean(http)
                    singles.append(time_singles(http, round_))
                    time.sleep(2)
                    single_memory.append(qemu_memory(root / "run"))
                    clean(http)
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    pod_s, single_s = statistics.median(pods), statistics.median(singles)
    pod_rss = statistics.median(m[0] for m in pod_memory) / 1024
    pod_pss = statistics.median(m[1] for m in pod_memory) / 1024
    single_rss = statistics.median(m[0] for m in single_memory) / 1024
    single_pss = statistics.median(m[1] for m in single_memory) / 1024
    print(f"accelerator: {inputs.accel.accel} ({inputs.accel.reason})")
    runs = ", ".join(f"{t:.2f}" for t in pods)
    print(f"(a) pod of three, create to all running: {pod_s:.2f} s  (runs: {runs})")
    print(f"(b) three run -d, to the last running:   {single_s:.2f} s  (b/a {single_s / pod_s:.2f})")
    print(f"QEMU memory, three idle containers: pod RSS {pod_rss:.0f} MiB PSS {pod_pss:.0f} MiB;")
    print(
        f"  three VMs RSS {single_rss:.0f} MiB PSS {single_pss:.0f} MiB (PSS b/a {single_pss / pod_pss:.2f})"
    )


if __name__ == "__main__":
    main()
