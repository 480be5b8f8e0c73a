"""Boot benchmark: the floor, the appliance, and `hyper run` end to end, side by side.

In one run, alternating, N times each (default 5):
  (a) floor: QEMU boots the same kernel, same machine and flags, with a trivial
      busybox init that powers off at once (started by the jailer, whose fds
      the command line names, but with no jail);
  (b) appliance: QEMU boots Hyper's appliance until the agent answers hello;
  (c) `hyper run --rm localhost/busybox true`, the whole CLI, end to end, as
      users get it: each VM resumed from a VM template;
  (d) the same with HYPER_TEMPLATES=0: each VM booted.
Prints medians, the ratios b/a, c/a and d/a, the accelerator, and the host
memory (RSS and PSS of QEMU) of two idle VMs while their containers wait.

Usage: python bench/boot.py [-n N]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hyper.agent.host import AgentClient
from hyper.image import ImageConfig, ImageStore
from hyper.image.busybox import write_busybox_rootfs_tar
from hyper.paths import default_paths
from hyper.runtime.run import VmInputs, prepare_vm_inputs
from hyper.runtime.settings import Settings
from hyper.runtime.spec import host_tsc_khz, kernel_cmdline
from hyper.vm import confine, cpio
from hyper.vm.driver import VmSpec
from hyper.vm.jail import JailMode, JailSpec, jailer_document
from hyper.vm.qemu import QemuDriver, build_command
from hyper.vm.qemu_command import open_passed, passed_files

IMAGE = "localhost/busybox:latest"
FLOOR_INIT = b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n"


def floor_initrd(path: Path) -> Path:
    buffer = io.BytesIO()
    cpio.write_archive(
        buffer,
        [
            cpio.regular("/bin/busybox", perms=0o755, source=Path("/bin/busybox")),
            cpio.regular("/init", FLOOR_INIT, perms=0o755),
            cpio.char_device("/dev/console", 5, 1),
        ],
    )
    path.write_bytes(buffer.getvalue())
    return path


def spec_for(name: str, run_dir: Path, initrd: Path, cmdline: str, inputs: VmInputs) -> VmSpec:
    return VmSpec(
        name=name,
        kernel=inputs.kernel.image,
        initrd=initrd,
        cmdline=cmdline,
        accel=inputs.accel.accel,
        memory_mib=512,
        cpus=1,
        run_dir=run_dir,
    )


async def time_floor(spec: VmSpec) -> float:
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    files = passed_files(spec)
    opened = [open_passed(f) for f in files]
    report = os.open(os.devnull, os.O_WRONLY)  # what the jailer reports is not needed here
    document = jailer_document(
        jail=JailSpec(JailMode.MINIMAL),
        argv=build_command(spec),
        binary=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
        fds=list(zip(opened, [f.fd for f in files], strict=True)),
        root="/",
        mounts=(),
        symlinks=(),
        report_fd=report,
        lease_fd=None,
        detach=False,
        die_with_parent=True,
        host_uid=os.getuid(),
        host_gid=os.getgid(),
    )
    try:
        process = await asyncio.create_subprocess_exec(
            *confine.jailer_command(document),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=[*opened, report],
        )
    finally:
        for fd in (*opened, report):
            os.close(fd)
    await asyncio.wait_for(process.wait(), 120)
    elapsed = time.perf_counter() - start
    if b"Power down" not in spec.console_log.read_bytes():
        raise RuntimeError(f"the floor VM did not power off cleanly; see {spec.console_log}")
    return elapsed


async def time_appliance(spec: VmSpec) -> float:
    driver = QemuDriver(spec)
    start = time.perf_counter()
    try:
        await driver.start()
        agent = await AgentClient.connect(spec.agent_socket, 10)
        try:
            await agent.hello(120)
            elapsed = time.perf_counter() - start
            await agent.request("shutdown")
        finally:
            await agent.close()
        await driver.stop(10)
    finally:
        await driver.close()
    return elapsed


def time_hyper_run(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "hyper.cli.main", "run", "--rm", IMAGE, "true"],
        env=env,
        check=True,
        timeout=300,
    )
    return time.perf_counter() - start


def _memory_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields["Rss"], fields["Pss"]


def idle_vm_memory(env: dict[str, str], runtime: Path, count: int = 2) -> list[tuple[int, int]]:
    """RSS and PSS (KiB) of each QEMU while `count` containers wait at once."""
    command = [
        sys.executable,
        "-m",
        "hyper.cli.main",
        "run",
        "--rm",
        "-i",
        IMAGE,
        "sh",
        "-c",
        "echo ready; read x",
    ]
    processes = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        for _ in range(count)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline() != b"ready\n":
                raise RuntimeError("an idle container did not start")
        time.sleep(2)
        found = subprocess.run(
            ["pgrep", "-f", f"qemu-system.*{runtime}"], capture_output=True, text=True, check=False
        )
        figures = [_memory_kib(int(pid)) for pid in found.stdout.split()]
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"done\n")
            process.stdin.close()
            process.wait(timeout=120)
        return figures
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=5, help="runs of each kind (default 5)")
    args = parser.parse_args()

    paths = default_paths()
    state = Path(tempfile.mkdtemp(prefix="hyper-bench-state-"))
    runtime = Path(tempfile.mkdtemp(prefix="hb-", dir="/tmp"))
    scratch = Path(tempfile.mkdtemp(prefix="hyper-bench-"))
    # The VM in the CLI's own process, as the floor's (bench/start.py compares the paths).
    env = dict(os.environ, HYPER_STATE_DIR=str(state), HYPER_RUNTIME_DIR=str(runtime), HYPER_RUN_DIRECT="1")
    try:
        store = ImageStore(state / "images")
        store.import_rootfs(
            write_busybox_rootfs_tar(scratch / "busybox.tar"), IMAGE, ImageConfig(cmd=("sh",))
        )
        store.layer_disks(store.get(IMAGE))
        settings = Settings.from_env()
        inputs = await prepare_vm_inputs(paths, settings, None)
        tsc = host_tsc_khz(Path("/proc/cpuinfo").read_text())
        appliance_cmdline = kernel_cmdline(inputs.appliance, inputs.accel.accel, tsc, settings.kernel_params)
        floor_cmdline = appliance_cmdline.split(" rdinit=")[0]
        floor = floor_initrd(scratch / "floor.cpio")
        time_hyper_run(env)  # warm the page cache; build the layer disk and the VM template

        cold_env = dict(env, HYPER_TEMPLATES="0")
        results: dict[str, list[float]] = {"floor": [], "appliance": [], "hyper run": [], "cold run": []}
        for i in range(args.n):
            floor_spec = spec_for("floor", scratch / f"floor{i}", floor, floor_cmdline, inputs)
            results["floor"].append(await time_floor(floor_spec))
            appliance_spec = spec_for(
                "appl", runtime / f"a{i}", inputs.appliance.initrd, appliance_cmdline, inputs
            )
            results["appliance"].append(await time_appliance(appliance_spec))
            results["hyper run"].append(time_hyper_run(env))
            results["cold run"].append(time_hyper_run(cold_env))
            print(
                f"run {i + 1}/{args.n}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in results.items()),
                flush=True,
            )
        memory = idle_vm_memory(env, runtime)
        cold_memory = idle_vm_memory(cold_env, runtime)
        medians = {k: statistics.median(v) for k, v in results.items()}
        print()
        print(f"accelerator: {inputs.accel.accel.value} ({inputs.accel.reason})")
        print(f"kernel: {inputs.kernel.release}; cpus: {os.cpu_count()}; runs of each: {args.n}")
        print(f"(a) floor, kernel to trivial init and power-off: median {medians['floor']:.2f}s")
        print(f"(b) appliance, boot to agent ready:               median {medians['appliance']:.2f}s")
        print(f"(c) hyper run --rm {IMAGE} true, template: median {medians['hyper run']:.2f}s")
        print(f"(d) the same with HYPER_TEMPLATES=0, booted: median {medians['cold run']:.2f}s")
        print(f"b/a = {medians['appliance'] / medians['floor']:.2f}")
        print(f"c/a = {medians['hyper run'] / medians['floor']:.2f}")
        print(f"d/a = {medians['cold run'] / medians['floor']:.2f}")
        for label, figures in (("template", memory), ("booted", cold_memory)):
            text = "; ".join(f"RSS {rss / 1024:.0f} MiB, PSS {pss / 1024:.0f} MiB" for rss, pss in figures)
            print(f"two idle VMs at once ({label}, 512 MiB guests), each QEMU: {text}")
    finally:
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
