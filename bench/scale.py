"""Scale benchmark: N `docker run -d` at once through hyperd's Docker Engine API.

For each N given (default 1, 10, 25, 50), one hyperd of its own (temporary
state and sockets, the shared kernel and template cache, no network, as
bench/idle.py starts it), in one run:
  (a) N clients at once each create and start a container (`POST
      /containers/create`, then `/start`, on the Docker API hyperd serves on its
      own socket under /docker) running `sleep`; the wall time until every
      request has answered, the median and slowest single run, and how many
      failed and with what message (a refusal must name the resource);
  (b) once all are idle, the QEMUs' summed RSS and PSS and the median per VM,
      and how much the host's MemAvailable fell;
  (c) after removing them all (`DELETE ?force=1`), what is left: QEMU
      processes, container directories, runtime entries and disks (0 each).

Usage: python bench/scale.py [--counts 1,10,25,50]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from hyper.image import ImageConfig, ImageStore
from hyper.image.busybox import write_busybox_rootfs_tar

sys.path.insert(0, str(Path(__file__).parent))
from idle import IDLE, IMAGE, Hyperd, footprint, mib, qemu_pids, settle


@contextlib.contextmanager
def prepare_images() -> Iterator[Path]:
    """An image store holding busybox with its layer disks made, removed after."""
    scratch = Path(tempfile.mkdtemp(prefix="hyper-bench-scale-"))
    try:
        store = ImageStore(scratch / "images")
        store.import_rootfs(
            write_busybox_rootfs_tar(scratch / "busybox.tar"), IMAGE, ImageConfig(cmd=("sh",))
        )
        store.layer_disks(store.get(IMAGE))
        yield scratch / "images"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise SystemExit("no MemAvailable in /proc/meminfo")


def docker_run(hyperd: Hyperd, index: int) -> tuple[float, str]:
    """One `docker run -d` as the CLI does it: its wall time, and '' or why it failed."""
    begin = time.perf_counter()
    with hyperd.client() as http:
        body = {"Image": IMAGE, "Cmd": IDLE, "HostConfig": {"NetworkMode": "none"}}
        created = http.post("/docker/containers/create", params={"name": f"s{index}"}, json=body)
        if created.is_error:
            return time.perf_counter() - begin, f"create {created.status_code}: {created.text.strip()}"
        started = http.post(f"/docker/containers/{created.json()['Id']}/start")
        if started.is_error:
            return time.perf_counter() - begin, f"start {started.status_code}: {started.text.strip()}"
    return time.perf_counter() - begin, ""


def leftovers(hyperd: Hyperd) -> dict[str, int]:
    state, runtime = hyperd.root / "state", hyperd.root / "run"
    containers = state / "containers"
    return {
        "QEMU": len(qemu_pids(hyperd.root)),
        "container dirs": len(list(containers.iterdir())) if containers.is_dir() else 0,
        "runtime entries": sum(1 for p in runtime.iterdir() if not p.name.startswith("hyperd")),
        "disks": sum(1 for _ in state.rglob("*.ext4")) + sum(1 for _ in state.rglob("*.qcow2")),
    }


def measure(count: int, images: Path) -> None:
    hyperd = Hyperd(64, images)
    try:
        hyperd.hyper("run", "--rm", IMAGE, "true")  # warm: the template exists before timing, untimed
        before = leftovers(hyperd)
        available = mem_available_kib()
        begin = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
            results = list(pool.map(lambda i: docker_run(hyperd, i), range(count)))
        wall = time.perf_counter() - begin
        failures = [why for _, why in results if why]
        started = count - len(failures)
        times = [t for t, why in results if not why]
        pids = settle(hyperd.root, started) if started else []
        prints = [footprint(pid, 512) for pid in pids]
        fell = (available - mem_available_kib()) / 1024
        print(f"\nN={count}: {started} started, {len(failures)} refused; all answered after {wall:.1f} s")
        if times:
            print(f"  one run: median {statistics.median(times):.2f} s, slowest {max(times):.2f} s")
        for why in sorted(set(failures)):
            print(f"  refused ({failures.count(why)}x): {why[:300]}")
        if prints:
            print(
                f"  QEMUs: ΣRSS {mib(sum(p.total_rss for p in prints)).strip()} MiB, "
                f"ΣPSS {mib(sum(p.total_pss for p in prints)).strip()} MiB, "
                f"per VM RSS {mib(statistics.median(p.total_rss for p in prints)).strip()} / "
                f"PSS {mib(statistics.median(p.total_pss for p in prints)).strip()} MiB; "
                f"host MemAvailable fell {fell:.0f} MiB"
            )
        hyperd.remove_all()
        after = leftovers(hyperd)
        left = {what: after[what] - before[what] for what in after}
        print("  left after removal: " + ", ".join(f"{what} {n}" for what, n in left.items()))
    finally:
        hyperd.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", default="1,10,25,50")
    args = parser.parse_args()
    counts = [int(n) for n in args.counts.split(",")]
    with prepare_images() as images:
        try:
            load = Path("/proc/loadavg").read_text().split()[:3]
            print(f"load average before: {' '.join(load)}; accelerator as `hyper info` says")
            for count in counts:
                measure(count, images)
        except httpx.TransportError as exc:
            raise SystemExit(f"hyperd stopped answering: {exc}") from exc
    return 0


if __name__ == "__main__":
    sys.exit(main())
