"""Pods in real VMs: containers sharing one VM (`--network container:NAME`,
`hyper pod create` and `--pod`), each with its own root, processes, log,
exit status and limits; their disks hot-added on the VM's SCSI controller
and taken out again; the pod's VM gone with the pod."""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hyper.cli.client import DaemonClient
from tests.integration.conftest import BUSYBOX, HyperEnv

pytestmark = pytest.mark.vm

WEB = "mkdir -p /www && echo from-web > /www/index.html && exec httpd -f -p 8080 -h /www"
FETCH = "until wget -qO- http://127.0.0.1:8080/; do sleep 0.1; done"


def ok(result: object) -> str:
    assert getattr(result, "returncode", None) == 0, getattr(result, "stderr", b"").decode(errors="replace")
    return str(result.stdout.decode())  # type: ignore[attr-defined]


def state(env: HyperEnv, name: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(ok(env.run("inspect", "-f", "{{json .State}}", name)))
    return doc


def test_a_container_joins_anothers_vm_and_leaves_it(hyper_env: HyperEnv) -> None:
    ok(hyper_env.run("run", "-d", "--name", "web", BUSYBOX, "sh", "-c", WEB))
    script = f"{FETCH}; hostname; test -e /www && echo shares-root || echo own-root"
    ok(
        hyper_env.run(
            "run", "-d", "--name", "client", "--network", "container:web", BUSYBOX, "sh", "-c", script
        )
    )
    assert ok(hyper_env.run("wait", "client")).strip() == "0"
    lines = ok(hyper_env.run("logs", "client")).split()
    web_hostname = ok(hyper_env.run("exec", "web", "hostname")).strip()
    assert lines == ["from-web", web_hostname, "own-root"]  # localhost and hostname shared, root not
    assert len(hyper_env.qemu_processes()) == 1
    assert state(hyper_env, "web")["Running"] is True  # the member's exit is its own

    # Started again in the running VM, then removed while it runs: the VM goes on.
    ok(
        hyper_env.run(
            "run", "-d", "--name", "sleeper", "--network", "container:web", BUSYBOX, "sleep", "1000"
        )
    )
    ok(hyper_env.run("exec", "sleeper", "true"))
    ok(hyper_env.run("rm", "-f", "sleeper"))
    assert (
        ok(hyper_env.run("exec", "web", "sh", "-c", "wget -qO- http://127.0.0.1:8080/")).strip() == "from-web"
    )
    ok(hyper_env.run("start", "client"))
    assert ok(hyper_env.run("wait", "client")).strip() == "0"

    # The host stops: its members stop with its VM.
    ok(
        hyper_env.run(
            "run", "-d", "--name", "sleeper", "--network", "container:web", BUSYBOX, "sleep", "1000"
        )
    )
    ok(hyper_env.run("stop", "-t", "1", "web"))
    assert state(hyper_env, "sleeper")["Running"] is False
    assert hyper_env.qemu_processes() == []
    refused = hyper_env.run("start", "sleeper")
    assert refused.returncode != 0 and b"web: it is not running" in refused.stderr


def test_a_pod_of_three_shares_its_vm_and_each_keeps_its_own_end(hyper_env: HyperEnv) -> None:
    assert ok(hyper_env.run("pod", "create", "shop")).strip()
    ok(hyper_env.run("create", "--pod", "shop", "--name", "srv", BUSYBOX, "sh", "-c", WEB))
    ok(
        hyper_env.run(
            "create", "--pod", "shop", "--name", "cli", BUSYBOX, "sh", "-c", f"{FETCH}; echo fetched"
        )
    )
    ok(hyper_env.run("pod", "start", "shop"))
    assert ok(hyper_env.run("wait", "cli")).strip() == "0"
    # An over-limit container is OOM-killed alone: exit 137, the reason recorded, its siblings go on.
    ok(
        hyper_env.run(
            "run", "-d", "--pod", "shop", "--name", "hog", "-m", "32m", BUSYBOX, "tail", "/dev/zero"
        )
    )
    assert ok(hyper_env.run("wait", "hog")).strip() == "137"
    assert state(hyper_env, "hog")["OOMKilled"] is True
    assert state(hyper_env, "srv")["Running"] is True
    assert len(hyper_env.qemu_processes()) == 1

    pod = json.loads(ok(hyper_env.run("pod", "inspect", "shop")))[0]
    assert pod["State"] == "running"
    assert [c["Name"] for c in pod["Containers"]] == ["srv", "cli", "hog"]
    assert pod["Vm"]["MemoryMiB"] == 1280  # 128 MiB overhead + 2 x 512 MiB, at its start, in 256 MiB steps
    listed = ok(hyper_env.run("pod", "ps")).splitlines()
    assert len(listed) == 2 and "shop" in listed[1] and "running" in listed[1]
    logs = ok(hyper_env.run("pod", "logs", "shop")).splitlines()
    assert "cli | from-web" in logs and "cli | fetched" in logs

    ok(hyper_env.run("pod", "stop", "-t", "1", "shop"))
    assert hyper_env.qemu_processes() == []
    assert state(hyper_env, "srv")["Running"] is False
    ok(hyper_env.run("pod", "start", "shop"))  # a new VM; every container starts again
    assert ok(hyper_env.run("wait", "cli")).strip() == "0"
    assert state(hyper_env, "srv")["Running"] is True

    refused = hyper_env.run("pod", "rm", "shop")
    assert refused.returncode != 0 and b"running containers" in refused.stderr
    ok(hyper_env.run("pod", "rm", "-f", "shop"))
    assert ok(hyper_env.run("ps", "-aq")).split() == []
    assert ok(hyper_env.run("pod", "ps", "-q")).split() == []
    assert hyper_env.qemu_processes() == []


def test_bad_pod_requests_are_refused_before_any_vm(hyper_env: HyperEnv) -> None:
    ok(hyper_env.run("create", "--name", "web", BUSYBOX, "true"))
    for flags, message in (
        (["--network", "container:web", "-p", "80:80"], b"conflicting options: --publish"),
        (["--network", "container:web", "--hostname", "x"], b"conflicting options: --hostname"),
        (["--network", "container:nosuch"], b"no such container: nosuch"),
        (["--pod", "nosuch"], b"no such pod: nosuch"),
    ):
        refused = hyper_env.run("create", *flags, BUSYBOX, "true")
        assert refused.returncode == 125 and message in refused.stderr, refused.stderr
    ok(hyper_env.run("pod", "create", "p1"))
    refused = hyper_env.run("pod", "create", "p1")
    assert refused.returncode == 125 and b"already in use" in refused.stderr
    refused = hyper_env.run("pod", "start", "p1")
    assert refused.returncode != 0 and b"has no containers" in refused.stderr
    ok(hyper_env.run("create", "--pod", "p1", "--name", "joined", BUSYBOX, "true"))
    refused = hyper_env.run("create", "--pod", "p1", "--network", "container:joined", BUSYBOX, "true")
    assert refused.returncode == 125 and b"--pod and --network" in refused.stderr
    assert hyper_env.qemu_processes() == []


COUNTER = 'trap "echo end; exit $CODE" USR1; i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done'


def hyperd_pid(env: HyperEnv) -> int:
    with DaemonClient(env.runtime / "hyperd.sock") as client:
        return client.ping().pid


def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 240
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def test_a_pod_of_three_outlives_a_killed_hyperd_and_loses_no_output(hyper_env: HyperEnv) -> None:
    ok(hyper_env.run("pod", "create", "crash"))
    names = [f"counter{i}" for i in range(3)]
    for i, name in enumerate(names):
        ok(
            hyper_env.run(
                "run", "-d", "--pod", "crash", "--name", name, "-e", f"CODE={i}", BUSYBOX, "sh", "-c", COUNTER
            )
        )

    def counting(name: str) -> bool:
        return ok(hyper_env.run("logs", name)).startswith("line0\n")

    for name in names:
        until(functools.partial(counting, name), f"{name} counting")
    pid = hyperd_pid(hyper_env)
    os.kill(pid, signal.SIGKILL)  # the containers keep counting while no hyperd listens
    until(lambda: not Path(f"/proc/{pid}").exists(), "hyperd gone")
    assert len(hyper_env.qemu_processes()) == 1
    for i, name in enumerate(names):  # the first command starts a hyperd, which adopts the pod
        ok(hyper_env.run("kill", "-s", "USR1", name))
        assert ok(hyper_env.run("wait", name)).strip() == str(i)
        words = ok(hyper_env.run("logs", name)).split()
        assert words[-1] == "end" and len(words) > 1, words
        assert words[:-1] == [f"line{n}" for n in range(len(words) - 1)]  # none lost, none twice
    assert json.loads(ok(hyper_env.run("pod", "inspect", "crash")))[0]["State"] == "running"
    ok(hyper_env.run("run", "-d", "--pod", "crash", "--name", "late", BUSYBOX, "sh", "-c", "echo joined"))
    assert ok(hyper_env.run("wait", "late")).strip() == "0"  # the adopted VM still takes containers
    assert ok(hyper_env.run("logs", "late")) == "joined\n"
    ok(hyper_env.run("pod", "rm", "-f", "crash"))
    assert hyper_env.qemu_processes() == []


def test_a_pod_may_share_one_pid_namespace(hyper_env: HyperEnv) -> None:
    ok(hyper_env.run("pod", "create", "--share", "pid", "one"))
    ok(hyper_env.run("run", "-d", "--pod", "one", "--name", "sleeper", BUSYBOX, "sleep", "1001"))
    ok(hyper_env.run("run", "-d", "--pod", "one", "--name", "looker", BUSYBOX, "ps", "-o", "args"))
    assert ok(hyper_env.run("wait", "looker")).strip() == "0"
    seen = ok(hyper_env.run("logs", "looker")).splitlines()
    assert "sleep 1001" in seen and "ps -o args" in seen  # the other container's process, and its own
    assert ok(hyper_env.run("exec", "sleeper", "kill", "-0", "1")) == ""  # PID 1: the pod's keep-alive
    ok(hyper_env.run("stop", "-t", "1", "sleeper"))  # one container stops, the namespace stays
    ok(hyper_env.run("start", "looker"))
    assert ok(hyper_env.run("wait", "looker")).strip() == "0"

    # Without --share pid each container has its own.
    ok(hyper_env.run("pod", "create", "two"))
    ok(hyper_env.run("run", "-d", "--pod", "two", "--name", "sleeper2", BUSYBOX, "sleep", "1002"))
    ok(hyper_env.run("run", "-d", "--pod", "two", "--name", "looker2", BUSYBOX, "ps", "-o", "args"))
    assert ok(hyper_env.run("wait", "looker2")).strip() == "0"
    assert "sleep 1002" not in ok(hyper_env.run("logs", "looker2")).splitlines()
    refused = hyper_env.run("pod", "create", "--share", "mnt", "three")
    assert refused.returncode == 125 and b"cannot share the 'mnt' namespace" in refused.stderr
    ok(hyper_env.run("pod", "rm", "-f", "one", "two"))
    assert hyper_env.qemu_processes() == []


def test_a_pods_containers_share_a_volume(hyper_env: HyperEnv) -> None:
    ok(hyper_env.run("pod", "create", "vols"))
    ok(hyper_env.run("volume", "create", "data"))
    writer = "echo from-writer > /data/note && sync"
    ok(
        hyper_env.run(
            "run", "-d", "--pod", "vols", "--name", "writer", "-v", "data:/data", BUSYBOX, "sh", "-c", writer
        )
    )
    assert ok(hyper_env.run("wait", "writer")).strip() == "0"
    ok(
        hyper_env.run(
            "run",
            "-d",
            "--pod",
            "vols",
            "--name",
            "reader",
            "-v",
            "data:/data:ro",
            BUSYBOX,
            "cat",
            "/data/note",
        )
    )
    assert ok(hyper_env.run("wait", "reader")).strip() == "0"
    assert ok(hyper_env.run("logs", "reader")) == "from-writer\n"
    # With -f the pod's logs end once each of its containers has exited and all its output came.
    assert ok(hyper_env.run("pod", "logs", "-f", "vols")).splitlines() == ["reader | from-writer"]
    assert len(hyper_env.qemu_processes()) == 1
    ok(hyper_env.run("pod", "rm", "-f", "vols"))
    assert hyper_env.qemu_processes() == []
