"""CRI benchmark: a pod through hyperd's CRI, from RunPodSandbox to a running container and
to its first line of output, and 10 pods made at once.

Drives a hyperd started here with --cri-socket (on its own state, the shared
kernel/template cache, HYPER_BRIDGE=none) with the CRI client of the tests
(tests/support/cri.py), as a kubelet would: RunPodSandbox, CreateContainer,
StartContainer, then the container's first line in the CRI log file at its
log_path. N sequential pods (default 10) give medians; then 10 pods are made
at once, each in its own thread, and the time until all run is reported.
Each pod is removed after it is measured (not timed).

The reference the issue asks for, containerd 1.6 + runc, is not measured by
this script yet (see docs/cri.md).

Usage: python bench/cri.py [-n N] [--concurrent C]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from cri_api.v1 import api_pb2 as cri

from hyper.image import ImageConfig, ImageStore
from hyper.paths import default_paths
from hyper.vm.accel import choose_accel, probe_host

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.cri import CriClient, CriHyperd
from tests.support.images import make_busybox_image

IMAGE = "localhost/busybox:latest"
FIRST_LINE = b" stdout F first\n"


def run_pod(client: CriClient, name: str, logs: Path) -> tuple[float, float]:
    """Seconds to a running container and to its first line of output; the pod is removed after."""
    sandbox_config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace="bench", uid=f"uid-{name}"),
        hostname=name,
        log_directory=str(logs / name),
    )
    container = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name="main"),
        image=cri.ImageSpec(image=IMAGE),
        command=["sh", "-c", "echo first; exec sleep 600"],
        log_path="main/0.log",
    )
    log_file = logs / name / "main" / "0.log"
    start = time.monotonic()
    sandbox_id = client.call(
        "RunPodSandbox", cri.RunPodSandboxRequest(config=sandbox_config), cri.RunPodSandboxResponse
    ).pod_sandbox_id
    try:
        request = cri.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=container, sandbox_config=sandbox_config
        )
        container_id = client.call("CreateContainer", request, cri.CreateContainerResponse).container_id
        client.call(
            "StartContainer", cri.StartContainerRequest(container_id=container_id), cri.StartContainerResponse
        )
        running = time.monotonic() - start
        deadline = start + 300
        while not (log_file.exists() and FIRST_LINE in log_file.read_bytes()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no first line in {log_file}")
            time.sleep(0.005)
        first_line = time.monotonic() - start
    finally:
        client.call(
            "RemovePodSandbox",
            cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
            cri.RemovePodSandboxResponse,
        )
    return running, first_line


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=10, help="sequential pods (default 10)")
    parser.add_argument("--concurrent", type=int, default=10, help="pods made at once (default 10)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hyper-cri-bench-"))
    try:
        state, logs = work / "state", work / "logs"
        store = ImageStore(state / "images")
        make_busybox_image(store, IMAGE, ImageConfig(cmd=("sh",)))
        store.layer_disks(store.get(IMAGE))
        with CriHyperd(state, default_paths().cache) as hyperd, hyperd.client() as client:
            run_pod(client, "warm", logs)  # the VM template for this size, once
            timings = [run_pod(client, f"seq{i}", logs) for i in range(args.n)]
            results: list[tuple[float, float] | BaseException] = []
            running_at: list[float] = []

            def one(index: int) -> None:
                began_here = time.monotonic()
                try:
                    result = run_pod(client, f"par{index}", logs)
                except BaseException as exc:
                    results.append(exc)
                    return
                results.append(result)
                running_at.append(began_here + result[0])

            threads = [threading.Thread(target=one, args=(i,)) for i in range(args.concurrent)]
            began = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            together = max(running_at, default=began) - began
        failures = [r for r in results if isinstance(r, BaseException)]
        accel = choose_accel("auto", probe_host(), False)
        print(f"accelerator: {accel.accel.value} ({accel.reason})")
        print(f"RunPodSandbox + CreateContainer + StartContainer, {args.n} pods one after another (medians):")
        print(f"  to running:          {statistics.median(t[0] for t in timings):6.2f} s")
        first = statistics.median(t[1] for t in timings)
        print(f"  to the first line:   {first:6.2f} s (in the kubelet's log file)")
        done = [r for r in results if not isinstance(r, BaseException)]
        print(f"{args.concurrent} pods at once: all running after {together:.2f} s", end="")
        if done:
            print(f"; each to running, median {statistics.median(r[0] for r in done):.2f} s", end="")
        print(f"; {len(failures)} failed" if failures else "")
        for failure in failures[:3]:
            print(f"  failure: {failure}")
        print("reference (containerd 1.6 + runc): not measured by this script yet")
        return 1 if failures else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
