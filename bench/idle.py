"""Idle benchmark: where an idle pod's host memory goes, and what TCG's translation buffer size costs.

For each translation-buffer size given (`-accel tcg,tb-size=`, default 64,
32 and 16 MiB), a hyperd of its own (temporary state and sockets, the default
kernel and template cache, no network), in one run:
  (a) N idle pods (`run -d localhost/busybox sleep`, default 10) at once, then
      each QEMU's memory from /proc/PID/smaps: RSS and PSS by mapping kind
      (guest RAM, TCG's translation buffer, other anonymous memory, files),
      medians per QEMU and sums, and whether guest RAM is advised to KSM
      (`mg` in VmFlags: QEMU's mem-merge, on by default);
  (b) alternating between sizes, R times each (default 5): `hyper run --rm
      localhost/busybox true`, and the same running a CPU-bound busybox shell
      loop (translation work the buffer must hold);
  (c) in one idle pod, `hyper exec` of `dd bs=200M`, which allocates, touches
      and frees 200 MiB in the guest: its QEMU's RSS and PSS before and after
      (what a guest frees stays with the host without a balloon).
With --pool N, hyperd keeps N ready VMs (docs/pool.md) and each pod is started
once one is ready, so that every pod takes one; the ready VM left over is not
counted. With --ksm, while the first size's pods are idle: KSM turned on host-wide
(`/sys/kernel/mm/ksm/run`, pages_to_scan raised, both restored on every path)
until ksmd finishes two full scans; PSS before and after, each QEMU's
ksm_merging_pages, the host's pages_sharing, and ksmd's CPU time meanwhile.

The size is set by patching hyper.vm.jail/qemu_command's TCG_TB_MIB in the
hyperd this starts (a benchmark-only override, not a setting).

Usage: python bench/idle.py [-n N] [-r R] [--sizes 64,32,16] [--pool N] [--ksm]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hyper.image import ImageConfig, ImageStore
from hyper.image.busybox import write_busybox_rootfs_tar
from hyper.paths import default_paths

IMAGE = "localhost/busybox:latest"
IDLE = ["sleep", "100000"]
CPU_LOOP = ["sh", "-c", "i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done"]
CHURN = ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]
KINDS = ("guest RAM", "TCG buffer", "other anon", "files")
KSM = Path("/sys/kernel/mm/ksm")
_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ (\S{4}) \S+ \S+ \S+\s*(.*)$")
_PATCH = (
    "import runpy, sys; import hyper.vm.jail as jail, hyper.vm.qemu_command as command; "
    "jail.TCG_TB_MIB = command.TCG_TB_MIB = int(sys.argv[1]); del sys.argv[1]; "
    "runpy.run_module('hyper.daemon', run_name='__main__', alter_sys=True)"
)


@dataclass
class Footprint:
    """One QEMU's memory in KiB, by mapping kind."""

    rss: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    pss: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    mergeable_ram: bool = False

    @property
    def total_rss(self) -> int:
        return sum(self.rss.values())

    @property
    def total_pss(self) -> int:
        return sum(self.pss.values())


def _kind(perms: str, path: str, size_kib: int, ram_kib: int) -> str:
    if path.endswith("/memory") or (not path and size_kib == ram_kib):
        return "guest RAM"  # the template's memory file, or a booted VM's anonymous RAM
    if not path and perms == "rwxp":
        return "TCG buffer"  # the one rwx mapping: translated code
    if path.startswith("/"):
        return "files"
    return "other anon"  # heap, stacks, [anon] and QEMU's other allocations


def footprint(pid: int, ram_mib: int) -> Footprint:
    """RSS and PSS of QEMU `pid` by mapping kind, from /proc/PID/smaps."""
    result = Footprint()
    kind = "other anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        header = _HEADER.match(line)
        if header is not None:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            kind = _kind(header.group(1), header.group(2), (end - start) >> 10, ram_mib << 10)
        elif line.startswith("Rss:"):
            result.rss[kind] += int(line.split()[1])
        elif line.startswith("Pss:"):
            result.pss[kind] += int(line.split()[1])
        elif line.startswith("VmFlags:") and kind == "guest RAM":
            result.mergeable_ram = result.mergeable_ram or " mg" in line
    return result


def qemu_pids(runtime: Path) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", f"qemu-system.*{runtime}"], check=False, capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


def mib(kib: float) -> str:
    return f"{kib / 1024:6.1f}"


class Hyperd:
    """A hyperd of its own whose QEMUs use `tb_mib` MiB of translation buffer."""

    def __init__(self, tb_mib: int, images: Path, pool: int = 0) -> None:
        self.tb_mib = tb_mib
        self.pool = pool
        self.root = Path(tempfile.mkdtemp(prefix=f"hy-idle{tb_mib}-", dir="/tmp"))
        shutil.copytree(images, self.root / "state" / "images", symlinks=True)
        self.env = dict(
            os.environ,
            HYPER_STATE_DIR=str(self.root / "state"),
            HYPER_RUNTIME_DIR=str(self.root / "run"),
            HYPER_BRIDGE="none",
        )
        for name in ("HYPER_RUN_DIRECT", "HYPER_POOL", "HYPER_POOL_MEMORY"):
            self.env.pop(name, None)
        command = [
            sys.executable, "-c", _PATCH, str(tb_mib), "--state-dir", str(self.root / "state"),
            "--cache-dir", str(default_paths().cache), "--runtime-dir", str(self.root / "run"),
            "--pool", str(pool),
        ]  # fmt: skip
        log = (self.root / "hyperd.log").open("wb")
        self.process = subprocess.Popen(command, env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError), self.client() as http:
                if http.get("/v1/ping").status_code == 200:
                    return
            time.sleep(0.1)
        self.close()
        raise SystemExit(f"hyperd did not start: {(self.root / 'hyperd.log').read_text()[-2000:]}")

    def client(self) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.root / "run" / "hyperd.sock"))
        return httpx.Client(transport=transport, base_url="http://hyperd", timeout=600)

    def hyper(self, *arguments: str) -> float:
        """Run the CLI against this hyperd; its wall time."""
        begin = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "hyper.cli.main", *arguments],
            env=self.env, check=False, timeout=600, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"hyper {' '.join(arguments)}: exit {done.returncode}: {done.stderr[-2000:]}")
        return time.perf_counter() - begin

    def pool_status(self) -> dict[str, int]:
        with self.client() as http:
            status: dict[str, int] = http.get("/v1/pool").json()
            return status

    def wait_pool(self, timeout: float = 300) -> None:
        """Until the pool (if any) has a ready VM: each pod then takes one."""
        deadline = time.monotonic() + timeout
        while self.pool and self.pool_status()["ready"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)

    def start_idle(self, count: int) -> None:
        with self.client() as http:
            for index in range(count):
                self.wait_pool()
                body = {"image": IMAGE, "command": IDLE, "name": f"idle{index}"}
                answer = http.post("/v1/containers", json=body)
                if answer.is_error:
                    raise SystemExit(f"run -d: {answer.status_code} {answer.text}")

    def pod_pids(self, count: int) -> list[int]:
        """The QEMUs of `count` idle pods, settled; a pool's ready VM left out
        (the pool refills after the last claim: it is the newest QEMU)."""
        pids = settle(self.root, count + (1 if self.pool else 0))
        if self.pool:
            self.wait_pool()
            newest = subprocess.run(
                ["pgrep", "-n", "-f", f"qemu-system.*{self.root}"],
                check=False,
                capture_output=True,
                text=True,
            ).stdout.split()
            pids = [pid for pid in pids if str(pid) not in newest]
        return pids

    def remove_all(self) -> None:
        with self.client() as http:
            for container in http.get("/v1/containers", params={"all": "1"}).json():
                http.delete(f"/v1/containers/{container['id']}", params={"force": "1"})

    def close(self) -> None:
        with contextlib.suppress(httpx.TransportError, OSError):
            self.remove_all()
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        for pid in qemu_pids(self.root):  # none, unless a removal failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        shutil.rmtree(self.root, ignore_errors=True)


def settle(runtime: Path, count: int, timeout: float = 300) -> list[int]:
    """The QEMUs of `count` idle pods, once all run and their CPU time stops growing."""
    deadline = time.monotonic() + timeout
    while len(pids := qemu_pids(runtime)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    previous = -1
    while time.monotonic() < deadline:
        used = sum(_cpu_ticks(pid) for pid in pids)
        # An idle guest under TCG still emulates its timer: under 5% of a core each.
        if previous >= 0 and used - previous <= 5 * len(pids) * 2:
            break
        previous = used
        time.sleep(2)
    return pids


def _cpu_ticks(pid: int) -> int:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    return 0


def report_idle(label: str, prints: list[Footprint]) -> None:
    print(f"\n{label}: {len(prints)} idle QEMUs, per QEMU (median) and summed, MiB")
    print(f"  {'kind':<11} {'RSS':>6} {'PSS':>6}   {'ΣRSS':>7} {'ΣPSS':>7}")
    for kind in KINDS:
        rss = statistics.median(p.rss[kind] for p in prints)
        pss = statistics.median(p.pss[kind] for p in prints)
        total_rss = sum(p.rss[kind] for p in prints)
        total_pss = sum(p.pss[kind] for p in prints)
        print(f"  {kind:<11} {mib(rss)} {mib(pss)}   {mib(total_rss)} {mib(total_pss)}")
    rss = statistics.median(p.total_rss for p in prints)
    pss = statistics.median(p.total_pss for p in prints)
    total_rss = sum(p.total_rss for p in prints)
    total_pss = sum(p.total_pss for p in prints)
    print(f"  {'total':<11} {mib(rss)} {mib(pss)}   {mib(total_rss)} {mib(total_pss)}")
    print(f"  guest RAM advised to KSM (VmFlags mg): {all(p.mergeable_ram for p in prints)}")


@contextlib.contextmanager
def ksm_on(pages_to_scan: int) -> Iterator[None]:
    """KSM running, then its previous settings back, on every path (it is host-wide)."""
    saved = {name: (KSM / name).read_text().strip() for name in ("run", "pages_to_scan")}
    try:
        (KSM / "pages_to_scan").write_text(str(pages_to_scan))
        (KSM / "run").write_text("1")
        yield
    finally:
        (KSM / "run").write_text(saved["run"])
        (KSM / "pages_to_scan").write_text(saved["pages_to_scan"])


def ksmd_ticks() -> int:
    found = subprocess.run(
        ["pgrep", "-x", "ksmd"], check=False, capture_output=True, text=True
    ).stdout.split()
    return _cpu_ticks(int(found[0])) if found else 0


def measure_ksm(pids: list[int], ram_mib: int) -> None:
    before = [footprint(pid, ram_mib) for pid in pids]
    counters = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans")
    ticks = ksmd_ticks()
    begin = time.monotonic()
    with ksm_on(pages_to_scan=2000):
        # Until a full scan merges little more than the one before (a page
        # merges only once it stayed unchanged for a scan), at least three.
        scans = last = int((KSM / "full_scans").read_text())
        sharing = [0]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = int((KSM / "full_scans").read_text())
            if now == last:
                continue
            last = now
            sharing.append(int((KSM / "pages_sharing").read_text()))
            if now - scans >= 3 and sharing[-1] - sharing[-2] <= sharing[-1] // 100:
                break
        values = {name: int((KSM / name).read_text()) for name in counters}
        merging = [int(Path(f"/proc/{pid}/ksm_merging_pages").read_text()) for pid in pids]
        after = [footprint(pid, ram_mib) for pid in pids]
    elapsed = time.monotonic() - begin
    cpu = (ksmd_ticks() - ticks) / os.sysconf("SC_CLK_TCK")
    print(
        f"\nKSM (host-wide, pages_to_scan 2000, {values['full_scans'] - scans} full scans, {elapsed:.0f} s,"
        f" pages_sharing after each: {sharing[1:]}):"
    )
    print("  host: " + ", ".join(f"{name} {values[name]}" for name in counters[:-1]))
    print(f"  these QEMUs' ksm_merging_pages: {sum(merging)} pages ({mib(sum(merging) * 4)} MiB)")
    print(f"  ksmd CPU time: {cpu:.1f} s in {elapsed:.0f} s ({100 * cpu / elapsed:.0f}% of one core)")
    for label, prints in (("before", before), ("with KSM", after)):
        pss = statistics.median(p.total_pss for p in prints)
        ram = statistics.median(p.pss["guest RAM"] for p in prints)
        print(
            f"  {label:<8}: PSS per QEMU {mib(pss)} MiB (guest RAM {mib(ram)}),"
            f" ΣPSS {mib(sum(p.total_pss for p in prints))}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=10, help="idle pods at once (default 10)")
    parser.add_argument("-r", type=int, default=5, help="timed runs of each kind per size (default 5)")
    parser.add_argument("--sizes", default="64,32,16", help="tb-size values in MiB (default 64,32,16)")
    parser.add_argument("--ram", type=int, default=512, help="the guests' RAM in MiB (hyperd's default: 512)")
    parser.add_argument(
        "--pool", type=int, default=0, help="hyperd's --pool N: pods from ready VMs (default 0)"
    )
    parser.add_argument("--ksm", action="store_true", help="also measure KSM (host-wide, restored after)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="hyper-bench-idle-"))
    daemons: dict[int, Hyperd] = {}
    try:
        store = ImageStore(scratch / "images")
        store.import_rootfs(
            write_busybox_rootfs_tar(scratch / "busybox.tar"), IMAGE, ImageConfig(cmd=("sh",))
        )
        store.layer_disks(store.get(IMAGE))
        for size in sizes:
            daemons[size] = Hyperd(size, scratch / "images", args.pool)
            daemons[size].hyper("run", "--rm", IMAGE, "true")  # warm: the template, untimed
        times: dict[int, dict[str, list[float]]] = {size: {"true": [], "loop": []} for size in sizes}
        for round_ in range(args.r):
            for size, daemon in daemons.items():
                times[size]["true"].append(daemon.hyper("run", "--rm", IMAGE, "true"))
                times[size]["loop"].append(daemon.hyper("run", "--rm", IMAGE, *CPU_LOOP))
            print(
                f"round {round_ + 1}/{args.r}: "
                + ", ".join(f"tb {s}: {t['true'][-1]:.2f}s/{t['loop'][-1]:.2f}s" for s, t in times.items()),
                flush=True,
            )
        for index, (size, daemon) in enumerate(daemons.items()):
            daemon.start_idle(args.n)
            pids = daemon.pod_pids(args.n)
            label = f"tb-size {size} MiB" + (
                f", pool {args.pool} ({daemon.pool_status()})" if args.pool else ""
            )
            report_idle(label, [footprint(pid, args.ram) for pid in pids])
            if args.ksm and index == 0:
                measure_ksm(pids, args.ram)
            # The pod's QEMU is the one that grew (a pool VM keeps its own name).
            ahead = {pid: footprint(pid, args.ram) for pid in pids}
            daemon.hyper("exec", "idle0", *CHURN)
            settle(daemon.root, len(pids))
            behind = {pid: footprint(pid, args.ram) for pid in pids}
            churned = max(pids, key=lambda pid: behind[pid].total_rss - ahead[pid].total_rss)
            before, after = ahead[churned], behind[churned]
            print(
                "  one pod allocating and freeing 200 MiB:"
                f" RSS {mib(before.total_rss)} -> {mib(after.total_rss)},"
                f" PSS {mib(before.total_pss)} -> {mib(after.total_pss)} MiB"
                f" (guest RAM RSS {mib(before.rss['guest RAM'])} -> {mib(after.rss['guest RAM'])})"
            )
            daemon.remove_all()
        print("\ntimed runs, median s   `run --rm … true`   `run --rm … sh -c <loop>`")
        for size, kinds in times.items() if args.r > 0 else ():
            print(f"  tb-size {size:3} MiB        {statistics.median(kinds['true']):6.2f}"
                  f"              {statistics.median(kinds['loop']):6.2f}")  # fmt: skip
        print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    finally:
        for daemon in daemons.values():
            daemon.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
