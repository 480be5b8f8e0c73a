"""A direct `hyper run` (in the CLI's process, no hyperd) on a network: a passt of the run's own.

The CLI runs inside a "host" network namespace this test makes
(tests/support/netns.py), joined by a veth pair to an "outside" one that
serves HTTP and DNS. The container reaches the outside by address and by
name, `-p` answers on the host namespace's addresses and its 127.0.0.1, and
nothing of the run's network (passt, listening socket, files) outlives it,
whether it ends, is interrupted, or its CLI is killed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import HyperEnv
from tests.support.netns import HOST_IP, HTTP_PORT, OUTSIDE_IP, OUTSIDE_NAME, OUTSIDE_PAGE, NetLab

pytestmark = [pytest.mark.vm]
BUSYBOX = "localhost/busybox:latest"
SERVE = 'mkdir -p /www && echo "page of $(hostname)" > /www/index.html && exec httpd -f -p 80 -h /www'


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    with NetLab() as made:
        yield made


def command(lab: NetLab, *args: str) -> list[str]:
    return ["ip", "netns", "exec", lab.host, sys.executable, "-m", "hyper.cli.main", *args]


def hyper(env: HyperEnv, lab: NetLab, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(lab, *args),
        capture_output=True,
        text=True,
        env=env.environ(**{"HYPER_BRIDGE": "bridge", **extra}),
        timeout=300,
        check=False,
    )


def passt_processes(lab: NetLab) -> list[int]:
    """The passt processes in the lab's host namespace (as root, passt's command line names no file)."""
    pids = lab.exec(lab.host, "ip", "netns", "pids", lab.host).stdout.split()
    return [int(pid) for pid in pids if comm(int(pid)).startswith("passt")]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return ""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def serves(lab: NetLab, url: str, ns: str | None = None) -> bool:
    return lab.fetch(ns or lab.host, url, 5).returncode == 0


class Serving:
    """A direct `hyper run -p … httpd` in the lab's host namespace, while in the block."""

    def __init__(self, env: HyperEnv, lab: NetLab, *args: str) -> None:
        self.process = subprocess.Popen(
            command(lab, "run", "--rm", *args, BUSYBOX, "sh", "-c", SERVE),
            env=env.environ(HYPER_BRIDGE="bridge"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(60)

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()


def test_outbound_names_and_etc_files(hyper_env: HyperEnv, lab: NetLab) -> None:
    done = hyper(
        hyper_env,
        lab,
        "run",
        "--rm",
        "--add-host",
        "db.test:10.1.2.3",
        "--hostname",
        "fg",
        BUSYBOX,
        "sh",
        "-c",
        "ip -o -4 addr show eth0; ip route; cat /etc/resolv.conf /etc/hosts;"
        f" wget -qO- http://{OUTSIDE_IP}:{HTTP_PORT}/; wget -qO- http://{OUTSIDE_NAME}:{HTTP_PORT}/",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "inet 172.17.0.2/16" in out  # the first candidate subnet no route of the host overlaps
    assert "default via 172.17.0.1 dev eth0" in out
    assert "nameserver 172.17.0.1" in out  # passt relays it to the host's resolver (the outside's)
    assert "10.1.2.3\tdb.test" in out and "\tfg" in out
    assert out.count(OUTSIDE_PAGE.strip()) == 2  # by address, and by name
    assert passt_processes(lab) == []
    assert hyper_env.runtime_leftovers() == []


def test_published_port_answers_and_goes_with_the_run(hyper_env: HyperEnv, lab: NetLab) -> None:
    before = lab.listening()
    with Serving(hyper_env, lab, "-p", "8080:80", "-p", "127.0.0.1:8081:80") as run:
        wait_for(lambda: serves(lab, "http://127.0.0.1:8080/"), "the port on 127.0.0.1")
        assert "page of" in lab.fetch(lab.outside, f"http://{HOST_IP}:8080/").stdout
        assert "page of" in lab.fetch(lab.host, "http://127.0.0.1:8081/").stdout
        assert not serves(lab, f"http://{HOST_IP}:8081/", lab.outside)  # published on loopback only
        [passt] = passt_processes(lab)
        # A second run cannot take the port: refused before its VM boots, naming it.
        clash = hyper(hyper_env, lab, "run", "--rm", "-p", "8080:80", BUSYBOX, "true")
        assert clash.returncode == 125, clash.stderr
        assert "0.0.0.0:8080/tcp is already in use" in clash.stderr
        assert passt_processes(lab) == [passt]
        # Ctrl-C (as a terminal sends it to the process group): the run ends, its network with it.
        run.process.send_signal(signal.SIGINT)
        run.process.wait(120)
    wait_for(lambda: passt_processes(lab) == [], "passt to go")
    assert lab.listening() == before
    assert hyper_env.runtime_leftovers() == []


def test_kill9_of_the_cli_leaves_no_passt_or_port(hyper_env: HyperEnv, lab: NetLab) -> None:
    before = lab.listening()
    with Serving(hyper_env, lab, "-p", "8082:80") as run:
        wait_for(lambda: serves(lab, "http://127.0.0.1:8082/"), "the port")
        assert len(passt_processes(lab)) == 1
        # `ip netns exec` execs the CLI: this pid is the CLI's. Its QEMU dies with
        # it (a parent-death signal), and passt when QEMU's end of its socket closes.
        run.process.kill()
    wait_for(lambda: passt_processes(lab) == [] and not hyper_env.qemu_processes(), "passt and QEMU")
    wait_for(lambda: lab.listening() == before, "the port to be free")


def test_what_a_direct_run_cannot_do_is_refused(hyper_env: HyperEnv, lab: NetLab) -> None:
    refused = {
        ("--network", "front"): "--network front needs hyperd",
        ("--network-alias", "www"): "--network-alias needs a user-defined network",
        ("--ip", "172.17.0.9"): "--ip needs a user-defined network",
        ("--network", "none", "-p", "80"): "a port cannot be published from a container without a network",
    }
    for args, message in refused.items():
        done = hyper(hyper_env, lab, "run", "--rm", *args, BUSYBOX, "true")
        assert done.returncode == 125 and message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    # HYPER_BRIDGE=none (as dockerd's --bridge=none): loopback only, unless asked.
    done = hyper(hyper_env, lab, "run", "--rm", BUSYBOX, "ip", "-o", "-4", "addr", HYPER_BRIDGE="none")
    assert done.returncode == 0 and "eth0" not in done.stdout, done.stdout
    done = hyper(
        hyper_env, lab, "run", "--rm", "--network", "bridge", BUSYBOX, "ip", "-o", "-4", "addr",
        HYPER_BRIDGE="none",
    )  # fmt: skip
    assert done.returncode == 0 and "eth0" in done.stdout, done.stdout
    assert passt_processes(lab) == []


def test_info_says_what_direct_runs_get(hyper_env: HyperEnv, lab: NetLab) -> None:
    out = hyper(hyper_env, lab, "info").stdout
    assert "direct runs (--direct): user mode, through a passt" in out, out
    none = hyper(hyper_env, lab, "info", HYPER_BRIDGE="none").stdout
    assert "direct runs (--direct): loopback only" in none, none
