"""Docker's `--network container:NAME` through hyperd's Docker Engine API,
driven by the real docker CLI and docker-py: the joining container runs in
the other's VM (one QEMU), sees its localhost and hostname, and keeps its own
root, output and exit status."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyper.image import ImageStore
from tests.integration.conftest import BUSYBOX
from tests.integration.test_docker_containers import failed, inspect, ok, qemu_processes, remove_all, serving
from tests.support.docker_env import DOCKER_CLI, DockerHyperd, docker_cli_available, docker_py_available

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not docker_cli_available(), reason=f"the docker CLI is not at {DOCKER_CLI}"),
    pytest.mark.skipif(not docker_py_available(), reason="docker-py is not installed"),
]

WEB = "mkdir -p /www && echo from-web > /www/index.html && exec httpd -f -p 8080 -h /www"


@pytest.fixture(scope="module")
def hyperd(image_state: Path, shared_cache: Path) -> Iterator[DockerHyperd]:
    with tempfile.TemporaryDirectory(prefix="docker-pods-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        ImageStore(state / "images").tag(BUSYBOX, "busybox:latest")
        with serving(DockerHyperd(state=state, cache=shared_cache)) as daemon:
            yield daemon


def test_network_container_runs_in_the_other_containers_vm(hyperd: DockerHyperd) -> None:
    try:
        web = ok(hyperd.docker("run", "-d", "--name", "web", "busybox", "sh", "-c", WEB)).strip()
        fetch = "until wget -qO- http://127.0.0.1:8080/; do sleep 0.1; done; hostname; exit 3"
        run = hyperd.docker(
            "run", "--name", "peer", "--network", "container:web", "busybox", "sh", "-c", fetch
        )
        assert run.returncode == 3, run.stderr  # its own exit status
        assert run.stdout.split() == ["from-web", web[:12]]  # web's localhost and hostname
        assert inspect(hyperd, "peer", "{{.HostConfig.NetworkMode}}") == f"container:{web}"
        assert len(qemu_processes(str(hyperd.root))) == 1

        client = hyperd.docker_py()
        try:
            output = client.containers.run(
                "busybox",
                ["sh", "-c", "test -e /www || echo own-root"],
                network_mode="container:web",
                remove=True,
            )
        finally:
            client.close()
        assert output == b"own-root\n"

        refused = failed(hyperd.docker("run", "--network", "container:web", "-p", "80:80", "busybox", "true"))
        assert "conflicting options: --publish" in refused
        ok(hyperd.docker("rm", "-f", "web"))
        assert inspect(hyperd, "peer", "{{.State.Status}}") == "exited"
        assert qemu_processes(str(hyperd.root)) == []
    finally:
        remove_all(hyperd)
