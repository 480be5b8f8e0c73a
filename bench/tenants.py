"""Tenants benchmark: what authentication and the tenant listener cost per request.

Starts a hyperd of its own (temporary state and sockets, the default kernel
cache) serving the Docker Engine API on a local socket and to tenants on a
loopback TLS port (a self-signed pair), makes one tenant with a key, and
measures:
  (a) GET /containers/json on the local Docker socket (no authentication);
  (b) the same through the tenant listener with a bearer token (TLS on a
      kept-alive connection, the token's hash checked, the tenant's scope);
  (c) the same with a signed request (HMAC over the request, replay cache);
  (d) `docker run --rm busybox true` with the real docker CLI on the local socket;
  (e) the same through the tenant listener (DOCKER_HOST=tcp://, TLS, the
      bearer token from config.json).
(a)-(c) are medians over R requests (default 200) after 20 warm-up ones;
(d) and (e) medians over N runs each (default 10), alternated, one VM each,
after one warm-up run of each (the tenant boots from a VM template of its own). hyperd runs with
HYPER_BRIDGE=none: the bench touches no network of the machine's.

Usage: python bench/tenants.py [-n N] [-r R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from hyper.cli.tenant_commands import make_self_signed
from hyper.image import ImageConfig, ImageStore
from hyper.image.busybox import write_busybox_rootfs_tar
from hyper.paths import default_paths
from hyper.runtime.run import prepare_vm_inputs
from hyper.runtime.settings import Settings
from hyper.tenants import signing
from hyper.tenants.model import derive_signing_key

IMAGE = "busybox:latest"
DOCKER = shutil.which("docker") or "/usr/local/bin/docker"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.docker_socket = root / "docker.sock"
        self.cert, self.key, self.ca = make_self_signed(["127.0.0.1"], root / "tls", 1)
        self.certs = root / "client-certs"  # the CA alone, as a tenant has it
        self.certs.mkdir()
        shutil.copyfile(self.ca, self.certs / "ca.pem")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        store = ImageStore(self.root / "state" / "images")
        with tempfile.TemporaryDirectory() as scratch:
            tar = Path(scratch) / "rootfs.tar"
            write_busybox_rootfs_tar(tar)
            store.import_rootfs(tar, IMAGE, ImageConfig(cmd=("sh",)))
        command = [
            sys.executable, "-m", "hyper.daemon",
            "--state-dir", str(self.root / "state"),
            "--cache-dir", str(default_paths().cache),
            "--runtime-dir", str(self.root / "run"),
            "--docker-socket", str(self.docker_socket),
            "--tenant-listen", f"127.0.0.1:{self.port}",
            "--tls-cert", str(self.cert), "--tls-key", str(self.key),
        ]  # fmt: skip
        log = (self.root / "hyperd.log").open("wb")
        # No bridge, NAT or resolver on the machine's own network: containers get none.
        env = dict(os.environ, HYPER_BRIDGE="none")
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with self.local() as http:
                    if http.get("/_ping").status_code == 200:
                        return
            except httpx.TransportError:
                time.sleep(0.1)
        raise SystemExit(f"hyperd did not start: {(self.root / 'hyperd.log').read_text()[-2000:]}")

    def admin(self, *args: str) -> str:
        env = dict(
            os.environ, HYPER_STATE_DIR=str(self.root / "state"), HYPER_RUNTIME_DIR=str(self.root / "run")
        )
        done = subprocess.run(
            [sys.executable, "-m", "hyper.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"hyper {' '.join(args)}: {done.stderr}")
        return done.stdout

    def local(self) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.docker_socket))
        return httpx.Client(transport=transport, base_url="http://hyperd", timeout=300)

    def tenant(self, headers: dict[str, str] | None = None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.ca))
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.port}", verify=context, headers=headers or {}, timeout=300
        )

    def docker_env(self, tenant_config: Path | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_CLI_HINTS"] = "false"
        if tenant_config is None:
            env["DOCKER_HOST"] = f"unix://{self.docker_socket}"
            env["DOCKER_CONFIG"] = str(self.root / "docker-admin")
        else:
            env.update(
                DOCKER_HOST=f"tcp://127.0.0.1:{self.port}",
                DOCKER_TLS_VERIFY="1",
                DOCKER_CERT_PATH=str(self.certs),
                DOCKER_CONFIG=str(tenant_config),
            )
        return env

    def close(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


def median_of(count: int, once: Callable[[], None]) -> float:
    for _ in range(20):
        once()
    times = []
    for _ in range(count):
        begin = time.perf_counter()
        once()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def checked(answer: httpx.Response) -> None:
    if answer.status_code != 200:
        raise SystemExit(f"{answer.request.url}: {answer.status_code} {answer.text}")


def docker_run(env: dict[str, str]) -> float:
    begin = time.perf_counter()
    subprocess.run([DOCKER, "run", "--rm", IMAGE, "true"], check=True, capture_output=True, env=env)
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=10, help="docker runs per front end")
    parser.add_argument("-r", type=int, default=200, help="API requests per kind")
    args = parser.parse_args()
    inputs = asyncio.run(prepare_vm_inputs(default_paths(), Settings.from_env(), None))
    root = Path(tempfile.mkdtemp(prefix="hbt-", dir="/tmp"))
    bench = Bench(root)
    try:
        bench.start()
        bench.admin("tenant", "public", "add", IMAGE)
        bench.admin("tenant", "create", "bench", "--quota", "api-requests=1000")
        key = json.loads(bench.admin("tenant", "key", "create", "bench", "--format", "json"))
        config = root / "docker-tenant"
        config.mkdir()
        (config / "config.json").write_text(
            json.dumps({"HttpHeaders": {"Authorization": f"Bearer {key['token']}"}})
        )
        signing_key = derive_signing_key(key["secret"])
        with bench.local() as local:
            a = median_of(args.r, lambda: checked(local.get("/containers/json")))
        with bench.tenant({"Authorization": f"Bearer {key['token']}"}) as tenant:
            b = median_of(args.r, lambda: checked(tenant.get("/containers/json")))
        with bench.tenant() as tenant:

            def signed_request() -> None:
                headers = signing.sign_headers(key["id"], signing_key, method="GET", path="/containers/json")
                checked(tenant.get("/containers/json", headers=headers))

            c = median_of(args.r, signed_request)
        docker_run(bench.docker_env(None))  # warms the admin's template
        docker_run(bench.docker_env(config))  # and the tenant's own
        locals_, tenants = [], []
        for _ in range(args.n):  # alternated, so the machine's load weighs on both alike
            locals_.append(docker_run(bench.docker_env(None)))
            tenants.append(docker_run(bench.docker_env(config)))
        d, e = statistics.median(locals_), statistics.median(tenants)
    finally:
        bench.close()
        shutil.rmtree(root, ignore_errors=True)
    accel = inputs.accel
    print(f"accelerator: {accel.accel.value} ({accel.reason})")
    print(f"medians: API requests over {args.r}, docker runs over {args.n}")
    print(f"  (a) GET /containers/json, local socket:       {a * 1000:.2f} ms")
    print(
        f"  (b) the same, tenant TLS + bearer token:      {b * 1000:.2f} ms   b-a = {(b - a) * 1000:.2f} ms"
    )
    print(
        f"  (c) the same, tenant TLS + signed request:    {c * 1000:.2f} ms   c-a = {(c - a) * 1000:.2f} ms"
    )
    print(f"  (d) docker run --rm busybox true, local:      {d:.3f} s")
    print(f"  (e) the same through the tenant listener:     {e:.3f} s   e/d = {e / d:.2f}")


if __name__ == "__main__":
    main()
