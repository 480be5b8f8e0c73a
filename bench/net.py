"""Network benchmark: Hyper's pods beside a plain network namespace, inside test namespaces.

Everything runs in namespaces this script makes (tests/support/netns.py):
hyperd in a "host" namespace; the reference is what runc or crun give a
container, a network namespace joined by a veth pair to a bridge in the same
host namespace (no runtime is needed to measure that path). The image is
busybox plus Debian's iperf3. Measured, N times each (median):
  (a) TCP throughput host -> container through the bridge (iperf3, T seconds);
  (b) container -> container on one network;
  (c) host -> container through a published port (127.0.0.1, DNAT);
  (d) TCP connect + HTTP request round trip to busybox httpd in the container;
  (e) host -> a published port served by passt (`hyper run --direct -p`, what
      a hyperd without root gives its pods too), and (f) (d) through it.
Prints Hyper, the reference, Hyper/reference, and the accelerator.

Usage: python bench/net.py [-n N] [-t SECONDS]   (as root)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.docker_env import DockerHyperd
from tests.support.netns import NetLab, run

from hyper.image import ImageConfig, ImageStore
from hyper.image.busybox import write_busybox_rootfs_tar
from hyper.paths import default_paths
from hyper.runtime.settings import Settings
from hyper.vm.accel import choose_accel, probe_host

IMAGE = "localhost/netbench:latest"
LIBRARIES = ("/usr/bin/iperf3",)
SERVE = "mkdir -p /www && echo ok > /www/index.html && httpd -p 80 -h /www && exec iperf3 -s"
RTT_SCRIPT = r"""
import socket, statistics, sys, time, json
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
for _ in range(n):
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        while s.recv(65536):
            pass
    times.append(time.perf_counter() - start)
print(json.dumps(statistics.median(times)))
"""


def make_image(state: Path) -> None:
    """busybox, iperf3 and the libraries ldd names, as one layer."""
    store = ImageStore(state / "images")
    with tempfile.TemporaryDirectory() as scratch:
        tar = Path(scratch) / "rootfs.tar"
        write_busybox_rootfs_tar(tar)
        needed = set(LIBRARIES)
        for line in subprocess.run(
            ["ldd", *LIBRARIES], capture_output=True, text=True, check=True
        ).stdout.splitlines():
            words = line.split()
            path = words[2] if "=>" in words and len(words) > 2 else words[0]
            if path.startswith("/"):
                needed.add(path)
        with tarfile.open(tar, "a") as archive:
            for path in sorted(needed):
                real = Path(path).resolve()
                info = archive.gettarinfo(str(real), arcname=path.lstrip("/"))
                with real.open("rb") as f:
                    archive.addfile(info, f)
        store.import_rootfs(tar, IMAGE, ImageConfig(cmd=("sh",)))


def iperf(ns: str | None, target: str, seconds: int, port: int = 5201, via: list[str] | None = None) -> float:
    command = [*(via or ["ip", "netns", "exec", ns or ""]), "iperf3", "-c", target, "-p", str(port)]
    done = run(*command, "-t", str(seconds), "-J", timeout=seconds * 4 + 60)
    return float(json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e6


def rtt(ns: str, target: str, port: int, count: int) -> float:
    done = run("ip", "netns", "exec", ns, sys.executable, "-c", RTT_SCRIPT, target, str(port), str(count))
    return float(done.stdout) * 1000


class Reference:
    """Two namespaces on a bridge in the host namespace, each with a veth: a runc container's network."""

    def __init__(self, lab: NetLab) -> None:
        self.lab = lab
        self.names = [f"{lab.host[:3]}r{i}-{lab.host[4:]}" for i in (1, 2)]
        self.servers: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Reference:
        host = self.lab.host
        run("ip", "-n", host, "link", "add", "refbr0", "type", "bridge")
        run("ip", "-n", host, "addr", "add", "10.77.0.1/24", "dev", "refbr0")
        run("ip", "-n", host, "link", "set", "refbr0", "up")
        for index, name in enumerate(self.names, start=2):
            run("ip", "netns", "add", name)
            run(
                "ip", "-n", host, "link", "add", f"vref{index}", "type", "veth", "peer", "eth0", "netns", name
            )
            run("ip", "-n", host, "link", "set", f"vref{index}", "master", "refbr0", "up")
            run("ip", "-n", name, "addr", "add", f"10.77.0.{index}/24", "dev", "eth0")
            run("ip", "-n", name, "link", "set", "eth0", "up")
            run("ip", "-n", name, "link", "set", "lo", "up")
        www = Path(tempfile.mkdtemp(prefix="hyper-refwww-"))
        (www / "index.html").write_text("ok\n")
        for command in (["iperf3", "-s"], ["busybox", "httpd", "-f", "-p", "80", "-h", str(www)]):
            self.servers.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", self.names[0], *command],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.kill()
            server.wait()
        for name in self.names:
            run("ip", "netns", "del", name, check=False)


class Direct:
    """`hyper run --direct -p 5202:5201 -p 8082:80` in the lab's host namespace: a passt of its own."""

    def __init__(self, lab: NetLab, hyperd: DockerHyperd) -> None:
        self.lab = lab
        self.env = {
            **os.environ,
            "HYPER_STATE_DIR": str(hyperd.state),
            "HYPER_CACHE_DIR": str(hyperd.cache),
            "HYPER_RUNTIME_DIR": str(hyperd.runtime),
            "HYPER_BRIDGE": "bridge",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Direct:
        command = ["run", "--direct", "--rm", "-p", "5202:5201", "-p", "8082:80", IMAGE, "sh", "-c", SERVE]
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.host, sys.executable, "-m", "hyper.cli.main", *command],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while self.lab.fetch(self.lab.host, "http://127.0.0.1:8082/", 5).returncode:
            assert self.process.poll() is None, "the direct run ended"
            assert time.monotonic() < deadline, "the direct run's server did not come up"
            time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=3)
    parser.add_argument("-t", type=int, default=5, help="seconds per iperf3 run")
    args = parser.parse_args()
    settings = Settings.from_env()
    accel = choose_accel(settings.accel, probe_host(), settings.kernel_is_pvm)
    state = Path(tempfile.mkdtemp(prefix="hyper-netbench-"))
    results: dict[str, list[float]] = {}

    def measure(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)

    try:
        make_image(state)
        with (
            NetLab() as lab,
            Reference(lab) as ref,
            DockerHyperd(state=state, cache=default_paths().cache, netns=lab.host) as hyperd,
        ):
            assert hyperd.docker("network", "create", "--subnet", "10.78.0.0/24", "bench").returncode == 0
            for name, extra in (("s1", ["-p", "5201:5201"]), ("c2", [])):
                done = hyperd.docker(
                    "run", "-d", "--name", name, "--network", "bench", *extra, IMAGE, "sh", "-c", SERVE
                )
                assert done.returncode == 0, done.stderr
            server = hyperd.docker(
                "inspect", "-f", "{{.NetworkSettings.Networks.bench.IPAddress}}", "s1"
            ).stdout.strip()
            docker = ["docker", "-H", hyperd.docker_host, "exec", "c2"]
            deadline = time.monotonic() + 120
            while run(
                "ip", "netns", "exec", lab.host, "busybox", "wget", "-qO-", f"http://{server}/", check=False
            ).returncode:
                assert time.monotonic() < deadline, "the benchmark's server did not come up"
                time.sleep(0.5)
            ref_server = "10.77.0.2"
            for _ in range(args.n):
                measure("a hyper", iperf(lab.host, server, args.t))
                measure("a ref", iperf(lab.host, ref_server, args.t))
                measure("b hyper", iperf(None, server, args.t, via=docker))
                measure("b ref", iperf(ref.names[1], ref_server, args.t))
                measure("c hyper", iperf(lab.host, "127.0.0.1", args.t))
                measure("c ref", iperf(lab.host, ref_server, args.t))  # a runc container's port, DNAT aside
                measure("d hyper", rtt(lab.host, server, 80, 50))
                measure("d ref", rtt(lab.host, ref_server, 80, 50))
            hyperd.docker("rm", "-f", "s1", "c2")
            hyperd.docker("network", "rm", "bench")
            with Direct(lab, hyperd):
                for _ in range(args.n):
                    measure("e hyper", iperf(lab.host, "127.0.0.1", args.t, port=5202))
                    measure("e ref", iperf(lab.host, ref_server, args.t))
                    measure("f hyper", rtt(lab.host, "127.0.0.1", 8082, 50))
                    measure("f ref", rtt(lab.host, ref_server, 80, 50))
    finally:
        shutil.rmtree(state, ignore_errors=True)
    rows = [
        ("(a) host -> container, bridge", "a", "Mbit/s"),
        ("(b) container -> container", "b", "Mbit/s"),
        ("(c) host -> published port", "c", "Mbit/s"),
        ("(d) connect + HTTP request", "d", "ms"),
        ("(e) host -> port, passt (user mode)", "e", "Mbit/s"),
        ("(f) (d) through passt", "f", "ms"),
    ]
    print(f"accelerator: {accel.accel.value} ({accel.reason}); {args.n} runs of {args.t} s each, medians")
    print(f"{'measure':34} {'hyper':>10} {'reference':>10} {'hyper/ref':>10}")
    for title, key, unit in rows:
        hyper, reference = (
            statistics.median(results[f"{key} hyper"]),
            statistics.median(results[f"{key} ref"]),
        )
        print(f"{title:34} {hyper:>8.1f} {unit:<3}{reference:>8.1f} {unit:<3}{hyper / reference:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
