"""Start benchmark: a VM-isolated `run` beside gVisor's, side by side in one run.

In one run, alternating, N times each (default 7):
  (a) `runsc --network=none do true`: gVisor (Debian's runsc), when installed;
  (b) `hyper run --rm --direct localhost/busybox true`: the VM in the CLI's own
      process, resumed from a VM template;
  (c) `hyper run --rm localhost/busybox true` through hyperd (started once,
      before the runs), the VM resumed from hyperd's template;
  (d) the same through a hyperd with a pool of ready VMs (HYPER_POOL=1): the
      run takes a ready VM and hot-adds its disks (the pool refills between
      runs, untimed: this is a pool that keeps up);
  (e) the CLI's own cost: the interpreter, the imports and the parsing of a
      foreground `run` through hyperd (`python -c` of exactly that), without
      any request.
Prints medians, b/a, c/a, d/a, c/b, d/c and e/d (the CLI's share of a run),
and the load average before and after, since the machine may be shared.

Then (d)'s budget by phase: the pool's hyperd and its CLI runs mark their
steps in one trace file (HYPER_TRACE, hyper.trace); each row is a step
between two consecutive marks of a run (`spawned` and `reaped` are the
bench's own, around the CLI process), its median over the runs that had it,
and its share of (d)'s median. Steps that race (the CLI's start answer and
the container's exit) may come in either order: a row says in how many runs
it was.

Every VM here has no network (HYPER_BRIDGE=none), as runsc's.

Usage: python bench/start.py [-n N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hyper.cli.client import DaemonClient
from hyper.image import ImageConfig, ImageStore
from hyper.image.busybox import write_busybox_rootfs_tar
from hyper.trace import Mark, parse, phase_rows, run_marks

IMAGE = "localhost/busybox:latest"
CLI_ONLY = (
    "from hyper.cli.main import build_parser; "
    f"build_parser('run').parse_args(['run', '--rm', '{IMAGE}', 'true']); "
    "import hyper.cli.foreground"
)


def timed(command: list[str], env: dict[str, str], windows: list[tuple[float, float]] | None = None) -> float:
    """The seconds `command` took; with `windows`, its wall-clock span is added
    there (for the trace's marks)."""
    spawned = time.time()
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, timeout=300, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if windows is not None:
        windows.append((spawned, time.time()))
    return seconds


def print_phases(trace: Path, windows: list[tuple[float, float]], total: float) -> None:
    """(d)'s budget by phase, from the trace of its runs (the module's docstring)."""
    marks = parse(trace.read_text()) if trace.exists() else []
    runs = []
    for spawned, reaped in windows:
        inside = run_marks(marks, spawned, reaped)
        runs.append(
            [Mark(spawned, 0, "bench", "", "spawned"), *inside, Mark(reaped, 0, "bench", "", "reaped")]
        )
    print(f"(d) by phase, median of {len(runs)} runs (share of (d)'s median {total:.3f}s):")
    width = max((len(f"{row.start} -> {row.end}") for row in phase_rows(runs)), default=0)
    for row in phase_rows(runs):
        label = f"{row.start} -> {row.end}"
        seen = "" if row.runs == len(runs) else f"  (in {row.runs} of {len(runs)} runs)"
        print(f"  {label:<{width}}  {row.seconds * 1000:7.1f} ms  {row.seconds / total:6.1%}{seen}")


def stop_daemon(socket: Path) -> None:
    if not socket.exists():
        return
    with DaemonClient(socket) as client:
        pid = client.ping().pid
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def wait_ready(socket: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with DaemonClient(socket) as client:
        while client.pool().get("ready", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=7, help="runs of each kind (default 7)")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="hyper-bench-state-"))
    runtime = Path(tempfile.mkdtemp(prefix="hs-", dir="/tmp"))
    pool_state = Path(tempfile.mkdtemp(prefix="hyper-bench-pool-"))
    pool_runtime = Path(tempfile.mkdtemp(prefix="hp-", dir="/tmp"))
    scratch = Path(tempfile.mkdtemp(prefix="hyper-bench-"))
    # No network anywhere, as runsc's --network=none (and a pool VM serves only
    # pods without a NIC of their own: docs/pool.md).
    env = dict(os.environ, HYPER_STATE_DIR=str(state), HYPER_RUNTIME_DIR=str(runtime), HYPER_BRIDGE="none")
    for name in ("HYPER_RUN_DIRECT", "HYPER_POOL", "HYPER_POOL_MEMORY", "HYPER_TRACE"):
        env.pop(name, None)
    direct_env = dict(env, HYPER_RUN_DIRECT="1")
    # The pool's hyperd is started by the first run below, with this environment:
    # it marks its steps in the same trace file as the CLI.
    trace = scratch / "trace"
    pool_env = dict(
        env,
        HYPER_STATE_DIR=str(pool_state),
        HYPER_RUNTIME_DIR=str(pool_runtime),
        HYPER_POOL="1",
        HYPER_TRACE=str(trace),
    )
    windows: list[tuple[float, float]] = []  # the measured pool runs' spans
    hyper = [sys.executable, "-m", "hyper.cli.main"]
    runsc = shutil.which("runsc")
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    try:
        store = ImageStore(state / "images")
        store.import_rootfs(
            write_busybox_rootfs_tar(scratch / "busybox.tar"), IMAGE, ImageConfig(cmd=("sh",))
        )
        store.layer_disks(store.get(IMAGE))
        shutil.copytree(state / "images", pool_state / "images", symlinks=True)
        run = [*hyper, "run", "--rm", IMAGE, "true"]

        def from_pool() -> float:
            wait_ready(pool_runtime / "hyperd.sock")  # untimed: the pool keeps up
            return timed(run, pool_env, windows)

        kinds: dict[str, Callable[[], float]] = {
            "direct": lambda: timed(run, direct_env),
            "hyperd": lambda: timed(run, env),
            "pool": from_pool,
            "cli": lambda: timed([sys.executable, "-c", CLI_ONLY], env),
        }
        if runsc is not None:
            root = scratch / "runsc-root"
            kinds = {
                "runsc": lambda: timed([runsc, f"--root={root}", "--network=none", "do", "true"], env),
                **kinds,
            }
        else:
            print("runsc is not installed (apt-get install runsc): (a) is left out", flush=True)
        # Warm: the layer disk, the VM templates (the CLI's and hyperd's), hyperds started.
        timed(run, pool_env)
        for kind in kinds.values():
            kind()
        windows.clear()
        results: dict[str, list[float]] = {name: [] for name in kinds}
        for i in range(args.n):
            for name, kind in kinds.items():
                results[name].append(kind())
            print(
                f"run {i + 1}/{args.n}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in results.items()),
                flush=True,
            )
        medians = {k: statistics.median(v) for k, v in results.items()}
        print()
        if "runsc" in medians:
            print(f"(a) runsc --network=none do true:            median {medians['runsc']:.3f}s")
        print(f"(b) hyper run --rm --direct {IMAGE} true: median {medians['direct']:.3f}s")
        print(f"(c) hyper run --rm {IMAGE} true, hyperd:  median {medians['hyperd']:.3f}s")
        print(f"(d) the same from hyperd's pool of ready VMs:       median {medians['pool']:.3f}s")
        print(f"(e) the CLI alone (interpreter, imports, parse): median {medians['cli']:.3f}s")
        if "runsc" in medians:
            print(f"b/a = {medians['direct'] / medians['runsc']:.2f}")
            print(f"c/a = {medians['hyperd'] / medians['runsc']:.2f}")
            print(f"d/a = {medians['pool'] / medians['runsc']:.2f}")
        print(f"c/b = {medians['hyperd'] / medians['direct']:.2f}")
        print(f"d/c = {medians['pool'] / medians['hyperd']:.2f}")
        print(f"e/d = {medians['cli'] / medians['pool']:.3f} (the CLI's own share of a run from the pool)")
        print(f"e/c = {medians['cli'] / medians['hyperd']:.3f} (of a run through hyperd)")
        with DaemonClient(pool_runtime / "hyperd.sock") as client:
            print(f"pool: {client.pool()}")
        print()
        print_phases(trace, windows, medians["pool"])
        print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    finally:
        stop_daemon(runtime / "hyperd.sock")
        stop_daemon(pool_runtime / "hyperd.sock")
        for directory in (state, runtime, pool_state, pool_runtime):
            shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
