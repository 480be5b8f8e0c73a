"""hyperd killed with SIGKILL in the middle of a burst of `docker run -d`: the
next hyperd owns every QEMU that runs, reaps the ones it never recorded, and
`docker rm -f` then leaves no QEMU and no run directory behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hyper.image import ImageStore
from tests.integration.conftest import BUSYBOX
from tests.support.docker_env import DOCKER_CLI, DockerHyperd, docker_cli_available

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not docker_cli_available(), reason=f"the docker CLI is not at {DOCKER_CLI}"),
]

BURST = 6
WAIT = 240


def _qemus(runtime: Path) -> list[int]:
    pattern = f"qemu-system.*{runtime}/"
    found = subprocess.run(["pgrep", "-f", pattern], check=False, capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def _until(probe: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not probe():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_hyperd_killed_mid_burst_leaves_no_orphan_vm(image_state: Path, shared_cache: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="crash-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        ImageStore(state / "images").tag(BUSYBOX, "busybox:latest")
        daemon = DockerHyperd(state=state, cache=shared_cache)
        daemon.start()
        try:
            runs = [
                subprocess.Popen(
                    [DOCKER_CLI, "run", "-d", "busybox", "sleep", "600"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=daemon.cli_environ(),
                )
                for _ in range(BURST)
            ]
            _until(lambda: len(_qemus(daemon.runtime)) >= 3, "the burst never had three VMs")
            assert daemon._process is not None
            os.kill(daemon._process.pid, signal.SIGKILL)  # mid-burst: some VMs unrecorded
            daemon._process.wait(30)
            for run in runs:
                run.wait(WAIT)
            daemon.start()  # the same state and runtime directories
            with daemon.http() as http:
                listed = http.get("/containers/json", params={"all": "1"}).json()
                running = [c for c in listed if c["State"] == "running"]
                # Every QEMU left is a container the new hyperd owns and calls running.
                assert len(_qemus(daemon.runtime)) == len(running)
                # One that never ran starts now: no orphan holds its disk's lock.
                created = [c for c in listed if c["State"] == "created"]
                if created:
                    started = daemon.docker("start", created[0]["Id"])
                    assert started.returncode == 0, started.stderr
                for container in listed:
                    assert (
                        http.delete(f"/containers/{container['Id']}", params={"force": "1"}).status_code
                        == 204
                    )
            _until(lambda: not _qemus(daemon.runtime), "QEMU left after rm -f")
            leftovers = [p.name for p in daemon.runtime.iterdir() if p.is_dir() and len(p.name) == 12]
            assert leftovers == []
        finally:
            log = daemon.log_tail()
            runtime = daemon.runtime
            daemon.close()
            strays = _qemus(runtime)
            for pid in strays:
                os.kill(pid, signal.SIGKILL)
            assert not strays, f"QEMU left running: {strays}\n{log}"


ATTACK = (
    "d=/sys/bus/virtio/drivers/virtio_console; echo virtio0 > $d/unbind; echo virtio0 > $d/bind;"
    " n=$(cat /sys/class/virtio-ports/vport*/dev); mknod /tmp/port c ${n%:*} ${n#*:};"
    " printf '\\377forged exit frame' > /tmp/port"
)


def test_a_guest_that_forges_frames_fails_its_pod(image_state: Path, shared_cache: Path) -> None:
    """A privileged container owns its VM: it takes the agent's port from the
    agent (unbind and rebind the driver) and writes a forged frame. hyperd
    fails the pod with the reason and powers the VM off; it does not stay Up."""
    with tempfile.TemporaryDirectory(prefix="breach-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        ImageStore(state / "images").tag(BUSYBOX, "busybox:latest")
        with DockerHyperd(state=state, cache=shared_cache) as daemon:
            started = daemon.docker("run", "-d", "--privileged", "--name", "owner", "busybox", "sleep", "600")
            assert started.returncode == 0, started.stderr
            attacked = daemon.docker("exec", "-d", "owner", "sh", "-c", ATTACK)
            assert attacked.returncode == 0, attacked.stderr

            def failed() -> bool:
                state = daemon.docker("inspect", "-f", "{{.State.Status}}", "owner").stdout.strip()
                return state == "exited"

            _until(failed, "the pod whose channel was forged stayed up")
            error = daemon.docker("inspect", "-f", "{{.State.ExitCode}} {{.State.Error}}", "owner").stdout
            assert error.startswith("137 the guest broke its agent channel"), error
            _until(lambda: not _qemus(daemon.runtime), "its VM was not powered off")
            daemon.docker("rm", "-f", "owner")
