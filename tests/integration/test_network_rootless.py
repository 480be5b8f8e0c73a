"""Networking without root: hyperd as an unprivileged user, each pod on a passt of its own.

hyperd runs as `nobody` inside a "host" network namespace this test makes
(tests/support/netns.py), joined by a veth pair to an "outside" one that
serves HTTP and DNS: the pods' outbound connections go through passt to the
outside, published ports answer on the host namespace's addresses and on its
127.0.0.1, and nothing of a pod's network (passt process, listening socket)
outlives it, whether it is removed or killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.docker_env import DockerHyperd, docker_cli_available
from tests.support.netns import HOST_IP, HTTP_PORT, OUTSIDE_IP, OUTSIDE_NAME, OUTSIDE_PAGE, NetLab

NOBODY = 65534
BUSYBOX = "localhost/busybox:latest"
SERVE = 'mkdir -p /www && echo "page of $(hostname)" > /www/index.html && exec httpd -f -p 80 -h /www'

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not docker_cli_available(), reason="the docker CLI is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="making namespaces and switching to nobody needs root"),
    pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed"),
]


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    with NetLab() as made:
        yield made


@pytest.fixture(scope="module")
def nobody_cache(shared_cache: Path) -> Iterator[Path]:
    """A cache of nobody's own: the kernel by hard links, appliance and template built by nobody."""
    cache = Path(tempfile.mkdtemp(prefix="hyper-nobody-cache-", dir="/tmp"))
    try:
        shutil.copytree(
            shared_cache / "kernels",
            cache / "kernels",
            copy_function=os.link,
            ignore=shutil.ignore_patterns(".*"),
        )
        for directory in (
            cache,
            cache / "kernels",
            *(p for p in (cache / "kernels").rglob("*") if p.is_dir()),
        ):
            os.chown(directory, NOBODY, NOBODY)
        yield cache
    finally:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="module")
def hyperd(lab: NetLab, image_state: Path, nobody_cache: Path) -> Iterator[DockerHyperd]:
    daemon = DockerHyperd(state=image_state, cache=nobody_cache, netns=lab.host, user=NOBODY)
    with daemon:
        yield daemon
    assert passt_processes(daemon) == [], "a passt outlived its pod"


def passt_processes(hyperd: DockerHyperd) -> list[int]:
    """The passt processes this hyperd started (their pid files are in its runtime directory)."""
    found = subprocess.run(
        ["pgrep", "-f", f"passt.*{hyperd.runtime}/"], check=False, capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}\n{done.stderr}"
    return done.stdout


def fails(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    return done.stderr.strip()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def serves(lab: NetLab, ns: str, url: str) -> bool:
    return lab.fetch(ns, url, 5).returncode == 0


def test_info_says_user_mode_and_why(hyperd: DockerHyperd, lab: NetLab) -> None:
    info = lab.exec(
        lab.host,
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "env",
        f"HOME={hyperd.root}",
        sys.executable,
        "-m",
        "hyper.cli.main",
        "info",
        check=False,
    )
    line = next(line for line in info.stdout.splitlines() if line.startswith("Network:"))
    assert "user (not root" in line and "passt" in line, info.stdout + info.stderr


def test_direct_run_without_root_has_a_passt_of_its_own(hyperd: DockerHyperd, lab: NetLab) -> None:
    done = lab.exec(
        lab.host,
        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        "env", f"HOME={hyperd.root}", f"HYPER_STATE_DIR={hyperd.state}", f"HYPER_CACHE_DIR={hyperd.cache}",
        f"HYPER_RUNTIME_DIR={hyperd.runtime}", "HYPER_BRIDGE=bridge", "HYPER_RUN_DIRECT=1",
        sys.executable, "-m", "hyper.cli.main", "run", "--rm", BUSYBOX, "sh", "-c",
        f"ip -o -4 addr show eth0; wget -qO- http://{OUTSIDE_NAME}:{HTTP_PORT}/",
        check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "inet 172.17.0.2/16" in done.stdout and OUTSIDE_PAGE.strip() in done.stdout
    assert passt_processes(hyperd) == []  # its pid file was in the run's directory, now gone
    assert not list((hyperd.runtime / "foreground").glob("*"))


def test_outbound_connections_and_names_go_through_passt(hyperd: DockerHyperd, lab: NetLab) -> None:
    out = ok(
        hyperd.docker(
            "run",
            "--rm",
            "--add-host",
            "db.test:10.1.2.3",
            BUSYBOX,
            "sh",
            "-c",
            "ip -o -4 addr show eth0; ip route; cat /etc/resolv.conf /etc/hosts;"
            f" wget -qO- http://{OUTSIDE_IP}:{HTTP_PORT}/; wget -qO- http://{OUTSIDE_NAME}:{HTTP_PORT}/",
        )
    )
    assert "inet 172.17.0.2/16" in out
    assert "default via 172.17.0.1 dev eth0" in out
    assert "nameserver 172.17.0.1" in out  # passt relays it to the host's resolver
    assert "10.1.2.3\tdb.test" in out
    assert out.count(OUTSIDE_PAGE.strip()) == 2  # by address, and by name
    wait_for(lambda: passt_processes(hyperd) == [], "the pod's passt to go")


def test_published_ports_answer_on_loopback_and_host_address(hyperd: DockerHyperd, lab: NetLab) -> None:
    before = lab.listening()
    ok(
        hyperd.docker(
            "run", "-d", "--name", "pub", "-p", "8080:80", "-p", "127.0.0.1::80", BUSYBOX, "sh", "-c", SERVE
        )
    )
    try:
        inspect = json.loads(ok(hyperd.docker("inspect", "pub")))[0]
        assert inspect["NetworkSettings"]["IPAddress"].startswith("172.17.0.")
        ports = ok(hyperd.docker("port", "pub"))
        assert "80/tcp -> 0.0.0.0:8080" in ports
        chosen = next(line.rsplit(":", 1)[1] for line in ports.splitlines() if "127.0.0.1" in line)
        wait_for(lambda: serves(lab, lab.host, "http://127.0.0.1:8080/"), "the port on 127.0.0.1")
        assert "page of" in lab.fetch(lab.outside, f"http://{HOST_IP}:8080/").stdout
        assert "page of" in lab.fetch(lab.host, f"http://127.0.0.1:{chosen}/").stdout
        assert not serves(lab, lab.outside, f"http://{HOST_IP}:{chosen}/")  # loopback only
        assert len(passt_processes(hyperd)) == 1
        # A port another program holds is refused before the VM boots, naming it.
        with Listener(lab, 8081):
            message = fails(hyperd.docker("run", "-d", "--name", "clash", "-p", "8081:80", BUSYBOX, "true"))
        assert "8081" in message and "already in use" in message
        assert ok(hyperd.docker("inspect", "-f", "{{.State.Status}}", "clash")).strip() == "created"
        ok(hyperd.docker("rm", "clash"))
        assert len(passt_processes(hyperd)) == 1
    finally:
        hyperd.docker("rm", "-f", "pub")
    assert passt_processes(hyperd) == []
    assert lab.listening() == before


class Listener:
    """A TCP socket listening on `port` in the lab's host namespace, while in the block."""

    def __init__(self, lab: NetLab, port: int) -> None:
        self.command = [
            "ip", "netns", "exec", lab.host, sys.executable, "-c",
            "import socket, sys, time; s = socket.socket(); s.bind(('0.0.0.0', int(sys.argv[1])));"
            " s.listen(); print('up', flush=True); time.sleep(600)",
            str(port),
        ]  # fmt: skip
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Listener:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline() == "up\n"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


def test_passt_is_confined(hyperd: DockerHyperd) -> None:
    ok(hyperd.docker("run", "-d", "--name", "jailed", BUSYBOX, "sleep", "600"))
    try:
        [pid] = passt_processes(hyperd)
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ":\t" in line
        )
        assert status["Uid"].split() == [str(NOBODY)] * 4
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        for namespace in ("user", "mnt", "ipc", "uts"):
            assert os.readlink(f"/proc/{pid}/ns/{namespace}") != os.readlink(f"/proc/self/ns/{namespace}")
        assert os.listdir(f"/proc/{pid}/root/") == []  # an empty root: no host file
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        files = {t for t in targets if t.startswith("/")}
        own = hyperd.runtime / "passt" / container_id(hyperd, "jailed")[:12]
        assert files <= {"/dev/null", f"{own}.pid", f"{own}.log"}
    finally:
        ok(hyperd.docker("rm", "-f", "jailed"))
    assert passt_processes(hyperd) == []


def container_id(hyperd: DockerHyperd, name: str) -> str:
    return ok(hyperd.docker("inspect", "-f", "{{.Id}}", name)).strip()


def test_nothing_is_left_after_kill9_of_qemu_or_hyperd(hyperd: DockerHyperd, lab: NetLab) -> None:
    before = lab.listening()
    ok(hyperd.docker("run", "-d", "--name", "victim", "-p", "8085:80", BUSYBOX, "sh", "-c", SERVE))
    wait_for(lambda: serves(lab, lab.host, "http://127.0.0.1:8085/"), "victim")
    [first] = passt_processes(hyperd)
    # hyperd dies: the pod and its published port work on; the next hyperd finds its passt.
    hyperd.keep_root = True
    hyperd.kill9()
    assert serves(lab, lab.host, "http://127.0.0.1:8085/")
    hyperd.start()
    hyperd.keep_root = False
    assert passt_processes(hyperd) == [first]
    assert serves(lab, lab.host, "http://127.0.0.1:8085/")
    # QEMU dies: its passt goes with it, and the port is free.
    pid = json.loads(ok(hyperd.docker("inspect", "victim")))[0]["State"]["Pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: "exited" in ok(hyperd.docker("inspect", "-f", "{{.State.Status}}", "victim")), "the exit"
    )
    wait_for(lambda: passt_processes(hyperd) == [], "its passt to go")
    assert lab.listening() == before
    # Started again, it has its network back.
    ok(hyperd.docker("start", "victim"))
    wait_for(lambda: serves(lab, lab.host, "http://127.0.0.1:8085/"), "the restart")
    # QEMU dies while hyperd is down: the next hyperd leaves nothing of it.
    hyperd.keep_root = True
    hyperd.kill9()
    pid = next(p for p in qemu_pids(hyperd))
    os.kill(pid, signal.SIGKILL)
    hyperd.start()
    hyperd.keep_root = False
    wait_for(lambda: passt_processes(hyperd) == [], "the dead pod's passt to go")
    assert lab.listening() == before
    ok(hyperd.docker("rm", "-f", "victim"))
    assert passt_processes(hyperd) == [] and lab.listening() == before


def qemu_pids(hyperd: DockerHyperd) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", f"qemu-system.*{hyperd.runtime}/"], check=False, capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


def test_user_defined_networks_need_root(hyperd: DockerHyperd) -> None:
    assert "need root" in fails(hyperd.docker("network", "create", "mine"))
    assert "bridge" in ok(hyperd.docker("network", "ls", "--format", "{{.Name}}")).split()
    assert ok(hyperd.docker("run", "--rm", "--network", "none", BUSYBOX, "ip", "-o", "link")).count(":") >= 1
