"""Tenants' networks from inside their VMs: no route, ARP or DNS answer crosses tenants.

hyperd runs in a test network namespace (tests/support/netns.py) and serves
two tenants on the namespace's loopback; their docker CLIs run there too.
Each tenant makes a network named `net` and runs a web server named `web`
on it; a third VM, tenant alpha's, resolves `web` to alpha's server only and
cannot reach beta's server by address. Each tenant's default `bridge` is its
own subnet. A host port one tenant published is refused to the other without
naming whose it is. Four VMs boot.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyper.image import ImageStore
from tests.integration.conftest import BUSYBOX
from tests.integration.test_docker_containers import serving
from tests.support.docker_env import DOCKER_CLI, docker_cli_available
from tests.support.netns import NetLab
from tests.support.tenants import TenantClient, TenantListener, admin_ok, tenant_hyperd

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not docker_cli_available(), reason=f"the docker CLI is not at {DOCKER_CLI}"),
]
SERVE = 'mkdir -p /www && echo "page of {tenant}" > /www/index.html && exec httpd -f -p 80 -h /www'


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    with NetLab() as made:
        yield made


@pytest.fixture(scope="module")
def listener(lab: NetLab, image_state: Path, shared_cache: Path) -> Iterator[TenantListener]:
    with tempfile.TemporaryDirectory(prefix="tenants-net-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        ImageStore(state / "images").tag(BUSYBOX, "busybox:latest")
        made = tenant_hyperd(state=state, cache=shared_cache, netns=lab.host)
        with serving(made.daemon):
            admin_ok(made.daemon, "tenant", "public", "add", "busybox:latest")
            for name in ("alpha", "beta"):
                admin_ok(made.daemon, "tenant", "create", name)
            yield made


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_no_route_or_name_crosses_tenants(listener: TenantListener, lab: NetLab) -> None:
    alpha = TenantClient.with_new_key(listener, "alpha")
    beta = TenantClient.with_new_key(listener, "beta")
    addresses = {}
    for client in (alpha, beta):
        ok(client.docker("network", "create", "net"))
        serve = SERVE.format(tenant=client.name)
        ok(client.docker("run", "-d", "--name", "web", "--network", "net", "busybox", "sh", "-c", serve))
        inspected = json.loads(ok(client.docker("inspect", "web")))[0]
        addresses[client.name] = inspected["NetworkSettings"]["Networks"]["net"]["IPAddress"]
    subnets = {
        client.name: json.loads(ok(client.docker("network", "inspect", name)))[0]["IPAM"]["Config"][0][
            "Subnet"
        ]
        for client in (alpha, beta)
        for name in ("bridge",)
    }
    assert subnets["alpha"] != subnets["beta"], subnets
    theirs = addresses["beta"]
    probe = (
        "for i in $(seq 60); do wget -qO- http://web/ && break; sleep 1; done;"
        " echo DNS; nslookup web; echo END;"
        f" ping -c 1 -W 2 {theirs} && echo PINGED;"
        f" wget -T 3 -qO- http://{theirs}/ && echo REACHED;"
        f" arping -c 1 -w 2 -I eth0 {theirs} && echo ARPED;"
        " true"
    )
    out = ok(alpha.docker("run", "--rm", "--network", "net", "busybox", "sh", "-c", probe, timeout=300))
    assert "page of alpha" in out and "page of beta" not in out, out
    answer = out.split("DNS\n", 1)[1].split("END\n", 1)[0]
    assert addresses["alpha"] in answer and theirs not in answer, answer  # `web` is alpha's own
    assert "PINGED" not in out and "REACHED" not in out and "ARPED" not in out, out


def test_a_host_port_taken_by_one_tenant_is_refused_to_the_other_anonymously(
    listener: TenantListener, lab: NetLab
) -> None:
    alpha = TenantClient.with_new_key(listener, "alpha")
    beta = TenantClient.with_new_key(listener, "beta")
    since = time.time()
    made = ok(alpha.docker("run", "-d", "--name", "pub", "-p", "18080:80", "busybox", "sleep", "600")).strip()
    try:
        done = beta.docker("run", "-d", "--name", "pub", "-p", "18080:80", "busybox", "sleep", "600")
        assert done.returncode != 0 and "18080" in done.stderr, done.stderr
        assert made[:12] not in done.stderr and "pub" not in done.stderr.replace("publish", ""), done.stderr
        beta.docker("rm", "-f", "pub")
        ok(beta.docker("create", "--name", "pub", "-p", "18081:80", "busybox", "true"))
        assert "18080" not in ok(beta.docker("ps", "-a", "--format", "{{.Ports}}"))
    finally:
        alpha.docker("rm", "-f", "pub")
        beta.docker("rm", "-f", "pub")
    # Its start connected it to its tenant's bridge, its end disconnected it: Docker's events.
    window = ("--since", f"{since:.9f}", "--until", f"{time.time():.9f}", "--filter", "type=network")
    shape = "{{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.container}}"
    seen = ok(alpha.docker("events", *window, "--format", shape)).splitlines()
    assert [line for line in seen if line.endswith(made)] == [
        f"connect bridge {made}",
        f"disconnect bridge {made}",
    ]
    assert made not in ok(beta.docker("events", *window))


def test_network_connect_and_disconnect_events_are_the_tenants_own(listener: TenantListener) -> None:
    alpha = TenantClient.with_new_key(listener, "alpha")
    beta = TenantClient.with_new_key(listener, "beta")
    since = time.time()
    network = ok(alpha.docker("network", "create", "joined")).strip()
    made = ok(alpha.docker("create", "--name", "joiner", "busybox", "true")).strip()  # no VM boots
    try:
        ok(alpha.docker("network", "connect", "joined", "joiner"))
        ok(alpha.docker("network", "disconnect", "joined", "joiner"))
    finally:
        alpha.docker("rm", "joiner")
        ok(alpha.docker("network", "rm", "joined"))
    window = ("--since", f"{since:.9f}", "--until", f"{time.time():.9f}", "--filter", "type=network")
    shape = "{{.Action}} {{.Actor.ID}} {{.Actor.Attributes.name}} {{.Actor.Attributes.container}}"
    seen = ok(alpha.docker("events", *window, "--format", shape)).splitlines()
    assert [line.split()[:3] for line in seen] == [
        [action, network, "joined"] for action in ("create", "connect", "disconnect", "destroy")
    ]
    assert [line.split()[3] for line in seen[1:3]] == [made, made]
    assert ok(beta.docker("events", *window)) == ""
