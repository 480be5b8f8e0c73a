"""CRI benchmark: a pod through hyperd's CRI, from RunPodSandbox to a running container and
to its first line of output, and 10 pods made at once.

Drives a hyperd started here with --cri-socket (on its own state, the shared
kernel/template cache, HYPER_BRIDGE=none) with the CRI client of the tests
(tests/support/cri.py), as a kubelet would: RunPodSandbox, CreateContainer,
StartContainer, then the container's first line in the CRI log file at its
log_path. N sequential pods (default 10) give medians; then 10 pods are made
at once, each in its own thread, and the time until all run is reported.
Each pod is removed after it is measured (not timed).

The reference is the same through containerd 1.6 + runc (Debian's
packages), started here in a network namespace of its own with images built
here (bench/containerd_reference.py), and the ratio is printed with the
accelerator; where containerd is not installed, it says so and measures
hyperd alone.

Usage: python bench/cri.py [-n N] [--concurrent C] [--no-reference]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cri_api.v1 import api_pb2 as cri

from hyper.image import ImageConfig, ImageStore
from hyper.paths import default_paths
from hyper.vm.accel import choose_accel, probe_host

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.cri import CriClient, CriHyperd
from tests.support.images import make_busybox_image

import containerd_reference

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


@dataclass
class Results:
    timings: list[tuple[float, float]]  # sequential pods: to running, to the first line
    together: float  # the concurrent pods: until all run
    each: list[float]  # the concurrent pods: each to running
    failures: list[BaseException]

    @property
    def running(self) -> float:
        return statistics.median(t[0] for t in self.timings)

    @property
    def first_line(self) -> float:
        return statistics.median(t[1] for t in self.timings)


def measure(client: CriClient, logs: Path, n: int, concurrent: int, prefix: str) -> Results:
    run_pod(client, f"{prefix}warm", logs)  # hyperd: the VM template for this size, once
    timings = [run_pod(client, f"{prefix}seq{i}", logs) for i in range(n)]
    results: list[tuple[float, float] | BaseException] = []
    running_at: list[float] = []

    def one(index: int) -> None:
        began_here = time.monotonic()
        try:
            result = run_pod(client, f"{prefix}par{index}", logs)
        except BaseException as exc:
            results.append(exc)
            return
        results.append(result)
        running_at.append(began_here + result[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrent)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    together = max(running_at, default=began) - began
    failures = [r for r in results if isinstance(r, BaseException)]
    each = [r[0] for r in results if not isinstance(r, BaseException)]
    return Results(timings, together, each, failures)


def report(name: str, results: Results, n: int, concurrent: int) -> None:
    print(f"{name}: RunPodSandbox + CreateContainer + StartContainer, {n} pods one after another (medians):")
    print(f"  to running:          {results.running:6.2f} s")
    print(f"  to the first line:   {results.first_line:6.2f} s (in the kubelet's log file)")
    print(f"  {concurrent} pods at once: all running after {results.together:.2f} s", end="")
    if results.each:
        print(f"; each to running, median {statistics.median(results.each):.2f} s", end="")
    print(f"; {len(results.failures)} failed" if results.failures else "")
    for failure in results.failures[:3]:
        print(f"  failure: {failure}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=10, help="sequential pods (default 10)")
    parser.add_argument("--concurrent", type=int, default=10, help="pods made at once (default 10)")
    parser.add_argument("--no-reference", action="store_true", help="leave containerd + runc out")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hyper-cri-bench-"))
    try:
        state, logs = work / "state", work / "logs"
        store = ImageStore(state / "images")
        make_busybox_image(store, IMAGE, ImageConfig(cmd=("sh",)))
        store.layer_disks(store.get(IMAGE))
        with CriHyperd(state, default_paths().cache) as hyperd, hyperd.client() as client:
            hyper_results = measure(client, logs, args.n, args.concurrent, "")
        accel = choose_accel("auto", probe_host(), False)
        print(f"accelerator: {accel.accel.value} ({accel.reason})")
        report("hyper", hyper_results, args.n, args.concurrent)
        failed = bool(hyper_results.failures)
        why_not = "left out (--no-reference)" if args.no_reference else containerd_reference.available()
        if why_not is not None:
            print(f"reference (containerd 1.6 + runc): not measured: {why_not}")
            return 1 if failed else 0
        with containerd_reference.Containerd(IMAGE) as reference, reference.client() as client:
            version = reference.version()
            ref_results = measure(client, logs, args.n, args.concurrent, "ref")
        report(f"reference ({version} + runc)", ref_results, args.n, args.concurrent)
        print(
            f"ratio hyper/containerd ({accel.accel.value}): to running "
            f"{hyper_results.running / ref_results.running:.1f}x, to the first line "
            f"{hyper_results.first_line / ref_results.first_line:.1f}x, "
            f"{args.concurrent} at once {hyper_results.together / max(ref_results.together, 1e-9):.1f}x"
        )
        return 1 if failed or ref_results.failures else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
