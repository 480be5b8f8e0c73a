"""Lifecycle benchmark: hyperd's `run -d` to running, and exec round trips into a running pod.

Starts a hyperd of its own (temporary state and sockets, the default kernel
cache) and measures, N times each (default 10):
  (a) `run -d`: POST /v1/containers until hyperd answers that the container
      runs (VM resumed from its template, container mounted, process started);
  (b) exec round trip over the Docker Engine API, as `docker exec c true` does
      it: create the exec, start it on a hijacked connection, read its end,
      inspect its exit code;
  (c) `docker exec c true` with the real docker CLI, when one is installed;
  (d) `docker run --rm busybox true` through hyperd (create, attach, start,
      wait, remove: one VM from start to removal), likewise.
Prints medians, b/a, c/b, d/a, and the accelerator.

Usage: python bench/lifecycle.py [-n N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
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


def make_state(state: Path) -> None:
    store = ImageStore(state / "images")
    with tempfile.TemporaryDirectory() as scratch:
        tar = Path(scratch) / "rootfs.tar"
        write_busybox_rootfs_tar(tar)
        store.import_rootfs(tar, IMAGE, ImageConfig(cmd=("sh",)))


def start_hyperd(root: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "hyper.daemon",
        "--state-dir",
        str(root / "state"),
        "--cache-dir",
        str(default_paths().cache),
        "--runtime-dir",
        str(root / "run"),
        "--docker-socket",
        str(root / "docker.sock"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=(root / "hyperd.log").open("wb"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with client(root / "docker.sock") as http:
                if http.get("/_ping").status_code == 200:
                    return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"hyperd did not start: {(root / 'hyperd.log').read_text()[-2000:]}")


def client(socket: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://hyperd", timeout=300)


def time_run_detached(socket: Path, index: int) -> tuple[float, str]:
    with client(socket) as http:
        begin = time.perf_counter()
        answer = http.post(
            "/v1/containers", json={"image": IMAGE, "command": ["sleep", "1000"], "name": f"b{index}"}
        )
        elapsed = time.perf_counter() - begin
    answer.raise_for_status()
    return elapsed, str(answer.json()["id"])


async def exec_round_trip(http: httpx.Client, socket: Path, container: str) -> float:
    begin = time.perf_counter()
    created = http.post(f"/containers/{container}/exec", json={"Cmd": ["true"], "AttachStdout": True})
    created.raise_for_status()
    exec_id = created.json()["Id"]
    reader, writer = await asyncio.open_unix_connection(str(socket))
    body = json.dumps({"Detach": False, "Tty": False}).encode()
    writer.write(
        f"POST /exec/{exec_id}/start HTTP/1.1\r\nHost: hyperd\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    while await reader.read(65536):
        pass
    writer.close()
    code = http.get(f"/exec/{exec_id}/json").json()["ExitCode"]
    elapsed = time.perf_counter() - begin
    if code != 0:
        raise SystemExit(f"the exec exited {code}")
    return elapsed


def docker_exec(socket: Path, container: str) -> float:
    begin = time.perf_counter()
    subprocess.run(
        ["docker", "-H", f"unix://{socket}", "exec", container, "true"], check=True, capture_output=True
    )
    return time.perf_counter() - begin


def docker_run(socket: Path) -> float:
    begin = time.perf_counter()
    subprocess.run(
        ["docker", "-H", f"unix://{socket}", "run", "--rm", IMAGE, "true"], check=True, capture_output=True
    )
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=10)
    args = parser.parse_args()
    paths = default_paths()
    inputs = asyncio.run(prepare_vm_inputs(paths, Settings.from_env(), None))
    root = Path(tempfile.mkdtemp(prefix="hb-", dir="/tmp"))
    make_state(root / "state")
    hyperd = start_hyperd(root)
    socket = root / "docker.sock"
    api = root / "run" / "hyperd.sock"
    runs: list[float] = []
    execs: list[float] = []
    clis: list[float] = []
    docker_runs: list[float] = []
    containers: list[str] = []
    have_docker = shutil.which("docker") is not None
    try:
        time_run_detached(api, 999)  # warms the template and the layer disk
        for index in range(args.n):
            elapsed, container = time_run_detached(api, index)
            runs.append(elapsed)
            containers.append(container)
        target = containers[0]
        with client(socket) as http:
            asyncio.run(exec_round_trip(http, socket, target))  # warm
            for _ in range(args.n):
                execs.append(asyncio.run(exec_round_trip(http, socket, target)))
                if have_docker:
                    clis.append(docker_exec(socket, target))
        if have_docker:
            docker_runs = [docker_run(socket) for _ in range(args.n)]
    finally:
        hyperd.send_signal(signal.SIGTERM)
        hyperd.wait(60)
        # The pods outlive hyperd by design: remove them with a fresh one.
        cleaner = start_hyperd(root)
        with client(api) as http:
            for record in http.get("/v1/containers", params={"all": "1"}).json():
                http.delete(f"/v1/containers/{record['id']}", params={"force": "1"})
        cleaner.send_signal(signal.SIGTERM)
        cleaner.wait(60)
        shutil.rmtree(root, ignore_errors=True)
    accel = inputs.accel
    print(f"accelerator: {accel.accel.value} ({accel.reason})")
    print(f"n = {args.n} each, medians:")
    a, b = statistics.median(runs), statistics.median(execs)
    print(f"  (a) run -d to running (hyperd API):      {a:.3f} s")
    print(f"  (b) exec round trip (Docker API):        {b:.3f} s   b/a = {b / a:.2f}")
    if clis:
        c = statistics.median(clis)
        print(f"  (c) `docker exec c true` (real CLI):     {c:.3f} s   c/b = {c / b:.2f}")
    if docker_runs:
        d = statistics.median(docker_runs)
        print(f"  (d) `docker run --rm busybox true`:      {d:.3f} s   d/a = {d / a:.2f}")


if __name__ == "__main__":
    main()
