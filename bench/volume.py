"""Volume benchmark: file I/O in a Hyper container's writable layer, bind mount and named volume,
against the host directly and podman + crun, in one run.

One static program (bench/volbench.c, built here with gcc) measures, in a
directory: sequential write of 256 MiB (1 MiB writes, then fsync) and read
back, and 5,000 small files (4 KiB) created then read. It runs N times
(default 3) in each place, alternating:
  (a) Hyper, the container's writable layer (ext4 on a virtio-blk disk);
  (b) Hyper, a bind mount of a host directory (virtio-9p);
  (c) Hyper, a named volume (virtio-9p);
  (d) the host directly;
  (e) podman + crun, the container's writable layer (vfs storage);
  (f) podman + crun, a bind mount;
  (g) podman + crun, a named volume.
Caches are dropped between writing and reading where the program may (the
host, privileged containers); the figures say whether they were. Prints
medians and the ratio of each place to the host, and the accelerator.

Usage: python bench/volume.py [-n N] [--mib M] [--files F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from hyper.image import ImageConfig, ImageStore
from hyper.image.busybox import write_busybox_rootfs_tar
from hyper.paths import default_paths
from hyper.vm.accel import choose_accel, probe_host

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.podman import Podman, podman_available

IMAGE = "localhost/volbench:latest"
SOURCE = Path(__file__).with_name("volbench.c")
PODMAN_RUN = ("--runtime", "crun", "run", "--rm", "--network", "none")
MEASURES = ("write_mbs", "read_mbs", "create_per_s", "read_per_s")
LABELS = {
    "write_mbs": "seq write MB/s",
    "read_mbs": "seq read MB/s",
    "create_per_s": "small files created/s",
    "read_per_s": "small files read/s",
}


def build(work: Path) -> tuple[Path, Path]:
    binary = work / "volbench"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(SOURCE)], check=True)
    rootfs = write_busybox_rootfs_tar(work / "rootfs.tar")
    with tarfile.open(rootfs, "a") as archive:
        info = archive.gettarinfo(str(binary), "bin/volbench")
        info.uid = info.gid = 0
        with binary.open("rb") as f:
            archive.addfile(info, f)
    return binary, rootfs


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def parse(output: str) -> dict[str, float]:
    line = [line for line in output.splitlines() if line.startswith("{")][-1]
    return {k: float(v) for k, v in json.loads(line).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=5000)
    args = parser.parse_args()
    if shutil.which("gcc") is None:
        print("gcc is needed to build bench/volbench.c", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="volbench-", dir="/var/tmp"))
    runtime = Path(tempfile.mkdtemp(prefix="hvb-", dir="/tmp"))
    env = dict(
        os.environ,
        HYPER_STATE_DIR=str(work / "state"),
        HYPER_RUNTIME_DIR=str(runtime),
        HYPER_CACHE_DIR=str(default_paths().cache),
        HYPER_RUN_DIRECT="1",  # the VM in the CLI's own process: no hyperd left behind
    )
    try:
        binary, rootfs = build(work)
        store = ImageStore(work / "state" / "images")
        store.import_rootfs(rootfs, IMAGE, ImageConfig(cmd=("sh",)))
        sizes = [str(args.mib), str(args.files)]
        host_dir = work / "host"
        bind_dir = work / "bind"
        podman_bind = work / "podman-bind"
        for d in (host_dir, bind_dir, podman_bind):
            d.mkdir()

        def hyper(*mount: str) -> Callable[[], dict[str, float]]:
            target = "/bench" if mount else "/scratch"
            command = [sys.executable, "-m", "hyper.cli.main", "run", "--rm", *mount, IMAGE]
            command += ["sh", "-c", f"mkdir -p {target} && volbench {target} {' '.join(sizes)}"]

            def measure() -> dict[str, float]:
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"hyper run failed: {done.stderr.strip()[-500:]}")
                return parse(done.stdout)

            return measure

        def host() -> dict[str, float]:
            command = [str(binary), str(host_dir), *sizes]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            return parse(done.stdout)

        places: dict[str, Callable[[], dict[str, float]]] = {
            "(a) hyper writable layer": hyper(),
            "(b) hyper bind mount": hyper("-v", f"{bind_dir}:/bench"),
            "(c) hyper named volume": hyper("-v", "benchvol:/bench"),
            "(d) host": host,
        }
        podman = None
        podman_note = "podman or crun is not installed"
        if podman_available() and shutil.which("crun"):
            podman = Podman(work / "podman")
            loaded = podman("import", str(rootfs), IMAGE)
            if loaded.returncode != 0:
                raise RuntimeError(f"podman import failed: {loaded.stderr}")
            probe = podman(*PODMAN_RUN, IMAGE, "true")
            if probe.returncode != 0:  # e.g. crun on hybrid cgroups, or rlimits it may not raise
                podman_note = f"podman + crun cannot run here: {probe.stderr.strip().splitlines()[-1]}"
                podman.close()
                podman = None
        if podman is not None:

            def in_podman(*mount: str) -> Callable[[], dict[str, float]]:
                target = "/bench" if mount else "/scratch"
                script = f"mkdir -p {target} && volbench {target} {' '.join(sizes)}"

                def measure() -> dict[str, float]:
                    assert podman is not None
                    done = podman(*PODMAN_RUN, *mount, IMAGE, "sh", "-c", script, timeout=1200)
                    if done.returncode != 0:
                        raise RuntimeError(f"podman run failed: {done.stderr.strip()[-500:]}")
                    return parse(done.stdout)

                return measure

            places["(e) podman+crun writable layer"] = in_podman()
            places["(f) podman+crun bind mount"] = in_podman("-v", f"{podman_bind}:/bench")
            places["(g) podman+crun named volume"] = in_podman("-v", "benchvol:/bench")
        results: dict[str, list[dict[str, float]]] = {name: [] for name in places}
        for round_number in range(args.n):
            for name, measure in places.items():
                results[name].append(measure())
                print(f"round {round_number + 1} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
        accel = choose_accel("auto", probe_host(), False)
        print(f"accelerator: {accel.accel.value} ({accel.reason}); {args.n} runs each; medians")
        print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; {args.mib} MiB, {args.files} files of 4 KiB")
        if podman is None:
            print(f"reference not measured: {podman_note}")
        print(f"{'':34}" + "".join(f"{LABELS[m]:>24}" for m in MEASURES))
        medians = {}
        for name, runs in results.items():
            medians[name] = {m: statistics.median(r[m] for r in runs) for m in MEASURES}
        for name, values in medians.items():
            row = "".join(f"{values[m]:>24.1f}" for m in MEASURES)
            print(f"{name:34}{row}")
        for base in ("(d) host", "(a) hyper writable layer"):
            print(f"ratio to {base} (higher is better):")
            for name, values in medians.items():
                row = "".join(f"{values[m] / medians[base][m]:>24.3f}" for m in MEASURES)
                print(f"{name:34}{row}")
        if podman is not None:
            podman.close()
        return 0
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
