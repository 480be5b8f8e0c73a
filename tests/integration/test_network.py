"""Networking end to end: real VMs, bridges, taps, nftables and hyperd's resolver,
driven by the real docker CLI and docker-py.

Traffic stays inside namespaces the test makes (tests/support/netns.py):
hyperd runs in a "host" namespace, and an "outside" one across a veth pair
serves HTTP and DNS. One hyperd (module scope) serves every test; each test
removes what it made, and the last one checks that nothing is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.docker_env import DockerHyperd, docker_cli_available, docker_py_available
from tests.support.netns import HOST_IP, HTTP_PORT, OUTSIDE_IP, OUTSIDE_NAME, OUTSIDE_PAGE, NetLab

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not docker_cli_available(), reason="the docker CLI is not installed"),
]
BUSYBOX = "localhost/busybox:latest"
SERVE = 'mkdir -p /www && echo "page of $(hostname)" > /www/index.html && exec httpd -f -p 80 -h /www'


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    with NetLab() as made:
        yield made


@pytest.fixture(scope="module")
def hyperd(lab: NetLab, image_state: Path, shared_cache: Path) -> Iterator[DockerHyperd]:
    with DockerHyperd(state=image_state, cache=shared_cache, netns=lab.host) as daemon:
        yield daemon


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}\n{done.stderr}"
    return done.stdout


def fails(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    return done.stderr.strip()


def fetch(lab: NetLab, ns: str, url: str, timeout: int = 10) -> subprocess.CompletedProcess[str]:
    return lab.fetch(ns, url, timeout)


def wait_for(condition: object, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_default_bridge_reaches_outside_and_resolves_through_hyperd(
    hyperd: DockerHyperd, lab: NetLab
) -> None:
    out = ok(
        hyperd.docker(
            "run",
            "--rm",
            "--add-host",
            "db.test:10.1.2.3",
            "--dns-search",
            "example.test",
            BUSYBOX,
            "sh",
            "-c",
            f"ip -o -4 addr show eth0; ip route; cat /etc/resolv.conf /etc/hosts; "
            f"wget -qO- http://{OUTSIDE_IP}:{HTTP_PORT}/; wget -qO- http://{OUTSIDE_NAME}:{HTTP_PORT}/",
        )
    )
    assert "inet 172.17.0." in out
    assert "default via 172.17.0.1 dev eth0" in out
    assert "nameserver 172.17.0.1" in out and "search example.test" in out
    assert "10.1.2.3\tdb.test" in out
    assert (
        out.count(OUTSIDE_PAGE.strip()) == 2
    )  # by address through NAT, and by name through hyperd's resolver
    assert lab.rules() == 0 and "hyper" not in lab.tables()  # the last pod gone: its network's rules too


def test_user_network_names_aliases_and_isolation(hyperd: DockerHyperd, lab: NetLab) -> None:
    ok(hyperd.docker("network", "create", "--subnet", "10.89.0.0/24", "--label", "team=a", "front"))
    ok(hyperd.docker("network", "create", "other"))
    try:
        ok(
            hyperd.docker(
                "run",
                "-d",
                "--name",
                "web",
                "--network",
                "front",
                "--network-alias",
                "www",
                BUSYBOX,
                "sh",
                "-c",
                SERVE,
            )
        )
        inspect = json.loads(ok(hyperd.docker("inspect", "web")))[0]
        web_ip = inspect["NetworkSettings"]["Networks"]["front"]["IPAddress"]
        assert web_ip.startswith("10.89.0.")
        assert inspect["HostConfig"]["NetworkMode"] == "front"
        network = json.loads(ok(hyperd.docker("network", "inspect", "front")))[0]
        assert network["IPAM"]["Config"] == [{"Subnet": "10.89.0.0/24", "Gateway": "10.89.0.1"}]
        assert network["Labels"] == {"team": "a"}
        assert [c["Name"] for c in network["Containers"].values()] == ["web"]
        wait_for(
            lambda: fetch(lab, lab.host, f"http://{web_ip}/").returncode == 0,
            "web",
        )
        out = ok(
            hyperd.docker(
                "run",
                "--rm",
                "--network",
                "front",
                BUSYBOX,
                "sh",
                "-c",
                "wget -qO- http://web/ && wget -qO- http://www/ && nslookup web | grep -c Address",
            )
        )
        assert out.count("page of") == 2
        # Another network cannot reach it, by name or by address.
        isolated = hyperd.docker(
            "run",
            "--rm",
            "--network",
            "other",
            BUSYBOX,
            "sh",
            "-c",
            f"nslookup web; wget -T 3 -qO- http://{web_ip}/ && echo REACHED",
        )
        assert "REACHED" not in isolated.stdout
        assert "page of" not in isolated.stdout
        # A network in use is not removed, and says by whom.
        assert "in use by container(s) web" in fails(hyperd.docker("network", "rm", "front"))
    finally:
        hyperd.docker("rm", "-f", "web")
        ok(hyperd.docker("network", "rm", "front", "other"))
    assert "front" not in ok(hyperd.docker("network", "ls", "--format", "{{.Name}}"))


def test_internal_network_has_no_way_out(hyperd: DockerHyperd) -> None:
    ok(hyperd.docker("network", "create", "--internal", "sealed"))
    try:
        out = hyperd.docker(
            "run",
            "--rm",
            "--network",
            "sealed",
            BUSYBOX,
            "sh",
            "-c",
            f"ip route; wget -T 3 -qO- http://{OUTSIDE_IP}:{HTTP_PORT}/ && echo REACHED;"
            f" nslookup {OUTSIDE_NAME} || true",
        )
        assert "default" not in out.stdout
        assert "REACHED" not in out.stdout and OUTSIDE_PAGE.strip() not in out.stdout
    finally:
        ok(hyperd.docker("network", "rm", "sealed"))


def test_published_ports_answer_on_loopback_and_host_address(hyperd: DockerHyperd, lab: NetLab) -> None:
    before = lab.listening()
    ok(
        hyperd.docker(
            "run", "-d", "--name", "pub", "-p", "8080:80", "-p", "127.0.0.1::80", BUSYBOX, "sh", "-c", SERVE
        )
    )
    try:
        ports = ok(hyperd.docker("port", "pub"))
        assert "80/tcp -> 0.0.0.0:8080" in ports
        loopback_port = next(line.rsplit(":", 1)[1] for line in ports.splitlines() if "127.0.0.1" in line)
        wait_for(
            lambda: fetch(lab, lab.host, "http://127.0.0.1:8080/").returncode == 0,
            "the published port on 127.0.0.1",
        )
        assert "page of" in fetch(lab, lab.outside, f"http://{HOST_IP}:8080/").stdout
        assert "page of" in fetch(lab, lab.host, f"http://127.0.0.1:{loopback_port}/").stdout
        # The chosen port is on loopback only: the outside does not reach it.
        assert fetch(lab, lab.outside, f"http://{HOST_IP}:{loopback_port}/", 3).returncode != 0
        # A taken port is refused before any VM boots, naming it, and leaves nothing.
        rules = lab.rules()
        message = fails(hyperd.docker("run", "-d", "--name", "clash", "-p", "8080:80", BUSYBOX, "true"))
        assert "8080" in message and "already" in message
        assert lab.rules() == rules
        # As with dockerd, the container stays created (a start failed, not the create).
        assert ok(hyperd.docker("inspect", "-f", "{{.State.Status}}", "clash")).strip() == "created"
        ok(hyperd.docker("rm", "clash"))
        summary = json.loads(ok(hyperd.docker("ps", "--format", "{{json .}}", "--filter", "name=pub")))
        assert "0.0.0.0:8080->80/tcp" in summary["Ports"]
    finally:
        hyperd.docker("rm", "-f", "pub")
    assert lab.rules() == 0
    assert lab.listening() == before


def test_bad_input_is_one_line_with_a_hint(hyperd: DockerHyperd, lab: NetLab) -> None:
    ok(hyperd.docker("network", "create", "--subnet", "10.90.0.0/24", "taken"))
    try:
        assert "overlaps" in fails(hyperd.docker("network", "create", "--subnet", "10.90.0.0/16", "again"))
        assert "not found" in fails(hyperd.docker("run", "--rm", "--network", "nowhere", BUSYBOX, "true"))
        assert "outside the subnet" in fails(
            hyperd.docker("run", "--rm", "--network", "taken", "--ip", "10.91.0.5", BUSYBOX, "true")
        )
        assert "not a valid DNS name" in fails(
            hyperd.docker(
                "run", "--rm", "--network", "taken", "--network-alias", "bad_name!", BUSYBOX, "true"
            )
        )
        assert "not possible in a VM" in fails(
            hyperd.docker("run", "--rm", "--network", "host", BUSYBOX, "true")
        )
        assert "host bits" in fails(hyperd.docker("network", "create", "--subnet", "10.92.0.5/24", "x"))
        names = ok(hyperd.docker("network", "ls", "--format", "{{.Name}}")).split()
        assert "again" not in names and "x" not in names
        assert ok(hyperd.docker("ps", "-aq")) == ""
    finally:
        ok(hyperd.docker("network", "rm", "taken"))
    assert lab.rules() == 0


def test_network_none_is_loopback_only(hyperd: DockerHyperd) -> None:
    out = ok(hyperd.docker("run", "--rm", "--network", "none", BUSYBOX, "ip", "-o", "link"))
    assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]


def test_pod_resumed_from_a_template_has_offloads(hyperd: DockerHyperd, lab: NetLab) -> None:
    # Its NIC's driver negotiated in the template with no tap behind it: the
    # agent binds it again, so it gets the tap's checksum and TSO offloads.
    ok(hyperd.docker("run", "-d", "--name", "offloads", BUSYBOX, "sleep", "600"))
    try:
        pid = json.loads(ok(hyperd.docker("inspect", "offloads")))[0]["State"]["Pid"]
        qemu = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"-incoming" in qemu, "this pod should be resumed from a template"
        features = ok(hyperd.docker("exec", "offloads", "cat", "/sys/class/net/eth0/device/features"))
        # virtio-net feature bits: 0 CSUM, 1 GUEST_CSUM, 7 GUEST_TSO4, 11 HOST_TSO4.
        assert [features[bit] for bit in (0, 1, 7, 11)] == ["1"] * 4, features
        assert ok(hyperd.docker("exec", "offloads", "cat", "/sys/class/net/eth0/carrier")).strip() == "1"
        assert OUTSIDE_PAGE.strip() in ok(
            hyperd.docker("exec", "offloads", "wget", "-qO-", f"http://{OUTSIDE_IP}:{HTTP_PORT}/")
        )
        # The guest's counters reach stats: what it received and sent, not zero.
        stats = json.loads(ok(hyperd.docker("stats", "--no-stream", "--format", "{{json .}}", "offloads")))
        received, sent = (part.strip() for part in stats["NetIO"].split("/"))
        assert received != "0B" and sent != "0B", stats["NetIO"]
    finally:
        ok(hyperd.docker("rm", "-f", "offloads"))


def test_network_mtu_option(hyperd: DockerHyperd, lab: NetLab) -> None:
    bad = fails(hyperd.docker("network", "create", "-o", "com.docker.network.bridge.enable_icc=false", "icc"))
    assert "com.docker.network.bridge.enable_icc" in bad and "not supported" in bad
    assert "is not an MTU" in fails(
        hyperd.docker("network", "create", "-o", "com.docker.network.driver.mtu=70000", "huge")
    )
    mtu = ("-o", "com.docker.network.driver.mtu=9000")
    ok(hyperd.docker("network", "create", *mtu, "--subnet", "10.96.0.0/24", "jumbo"))
    try:
        inspect = json.loads(ok(hyperd.docker("network", "inspect", "jumbo")))[0]
        assert inspect["Options"]["com.docker.network.driver.mtu"] == "9000"
        ok(hyperd.docker("run", "-d", "--name", "big", "--network", "jumbo", BUSYBOX, "sleep", "600"))
        try:
            assert ok(hyperd.docker("exec", "big", "cat", "/sys/class/net/eth0/mtu")).strip() == "9000"
            bridge = inspect["Options"]["com.docker.network.bridge.name"]
            links = json.loads(lab.exec(lab.host, "ip", "-j", "link").stdout)
            mtus = {link["ifname"]: link["mtu"] for link in links}
            assert mtus[bridge] == 9000
            assert [mtu for name, mtu in mtus.items() if name.startswith("hyt-")] == [9000]  # its tap
            ok(hyperd.docker("exec", "big", "ping", "-c", "1", "-s", "8972", "10.96.0.1"))
        finally:
            ok(hyperd.docker("rm", "-f", "big"))
    finally:
        ok(hyperd.docker("network", "rm", "jumbo"))


def test_connect_and_disconnect(hyperd: DockerHyperd) -> None:
    ok(hyperd.docker("network", "create", "--subnet", "10.94.0.0/24", "left"))
    ok(hyperd.docker("network", "create", "--subnet", "10.95.0.0/24", "right"))
    try:
        ok(hyperd.docker("create", "--name", "multi", "--network", "left", BUSYBOX, "sleep", "600"))
        # Stopped: connected now, on both networks from its next start.
        ok(hyperd.docker("network", "connect", "--alias", "both", "right", "multi"))
        ok(hyperd.docker("start", "multi"))
        addresses = ok(hyperd.docker("exec", "multi", "ip", "-o", "-4", "addr"))
        assert "inet 10.94.0.2/24" in addresses and "inet 10.95.0.2/24" in addresses, addresses
        networks = json.loads(ok(hyperd.docker("inspect", "multi")))[0]["NetworkSettings"]["Networks"]
        assert sorted(networks) == ["left", "right"]
        # Running: its VM's NICs are fixed, and the refusal says why and what to do.
        for verb in ("connect", "disconnect"):
            network = "bridge" if verb == "connect" else "right"
            message = fails(hyperd.docker("network", verb, network, "multi"))
            assert f"cannot {verb} a running container" in message and "hot-plug a NIC" in message
            assert "stop the container" in message
        ok(hyperd.docker("stop", "-t", "0", "multi"))
        ok(hyperd.docker("network", "disconnect", "right", "multi"))
        ok(hyperd.docker("start", "multi"))
        addresses = ok(hyperd.docker("exec", "multi", "ip", "-o", "-4", "addr"))
        assert "inet 10.94.0.2/24" in addresses and "10.95.0." not in addresses, addresses
        assert "not connected" in fails(hyperd.docker("network", "disconnect", "right", "multi"))
    finally:
        hyperd.docker("rm", "-f", "multi")
        hyperd.docker("network", "rm", "left", "right")


@pytest.mark.skipif(not docker_py_available(), reason="docker-py is not installed")
def test_docker_py_networks_and_ports(hyperd: DockerHyperd, lab: NetLab) -> None:
    client = hyperd.docker_py()
    network = client.networks.create("pynet", labels={"via": "docker-py"})
    container = None
    try:
        assert network.attrs["Labels"] == {"via": "docker-py"}
        container = client.containers.create(
            BUSYBOX, ["sh", "-c", SERVE], name="pyweb", ports={"80/tcp": 8090}, network="pynet"
        )
        container.start()
        container.reload()
        assert container.ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8090"}]}
        assert container.attrs["NetworkSettings"]["Networks"]["pynet"]["IPAddress"]
        wait_for(
            lambda: fetch(lab, lab.host, "http://127.0.0.1:8090/").returncode == 0,
            "docker-py's published port",
        )
        network.reload()
        assert container.id in network.attrs["Containers"]
        pruned = client.networks.prune()
        assert "pynet" not in (pruned.get("NetworksDeleted") or [])
    finally:
        if container is not None:
            container.remove(force=True)
        network.remove()
        client.close()


def test_faults_leave_no_tap_rule_or_port(hyperd: DockerHyperd, lab: NetLab) -> None:
    """kill -9 of QEMU, and of hyperd: nothing of the pod's network is left once hyperd is back."""
    before = lab.listening()
    ok(hyperd.docker("run", "-d", "--name", "victim", "-p", "8085:80", BUSYBOX, "sh", "-c", SERVE))
    taps = [name for name in lab.links() if name.startswith("hyt-")]
    assert len(taps) == 1 and lab.rules() > 0
    wait_for(lambda: fetch(lab, lab.host, "http://127.0.0.1:8085/").returncode == 0, "victim")
    # hyperd dies: the pod and its published port keep working without it.
    hyperd.keep_root = True
    hyperd.kill9()
    assert "page of" in fetch(lab, lab.host, "http://127.0.0.1:8085/").stdout
    hyperd.start()
    hyperd.keep_root = False
    assert "page of" in fetch(lab, lab.host, "http://127.0.0.1:8085/").stdout
    # QEMU dies: the tap goes with it, and hyperd removes the rules and frees the port.
    pid = json.loads(ok(hyperd.docker("inspect", "victim")))[0]["State"]["Pid"]
    subprocess.run(["kill", "-9", str(pid)], check=True)
    wait_for(
        lambda: "exited" in ok(hyperd.docker("inspect", "-f", "{{.State.Status}}", "victim")), "the exit"
    )
    # hyperd replaces the rules, then removes the bridge, then closes the resolver's sockets.
    wait_for(lambda: lab.rules() == 0, "the rules to go")
    wait_for(lambda: lab.listening() == before, "the port and the resolver's sockets to close")
    assert not [name for name in lab.links() if name.startswith(("hyt-", "hyper0", "hy-"))]
    # Started again, it gets its network back.
    ok(hyperd.docker("start", "victim"))
    wait_for(lambda: fetch(lab, lab.host, "http://127.0.0.1:8085/").returncode == 0, "the restart")
    ok(hyperd.docker("rm", "-f", "victim"))
    assert lab.rules() == 0 and "hyper" not in lab.tables()
    assert not [name for name in lab.links() if name.startswith(("hyt-", "hyper0", "hy-"))]


def test_hyper_cli_networks_and_ports(hyperd: DockerHyperd, lab: NetLab) -> None:
    env = {
        **os.environ,
        "HYPER_STATE_DIR": str(hyperd.state),
        "HYPER_RUNTIME_DIR": str(hyperd.runtime),
        "HYPER_CACHE_DIR": str(hyperd.cache),
    }

    def hyper(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hyper.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=240,
            check=False,
        )

    ok(
        hyper(
            "network",
            "create",
            "--subnet",
            "10.93.0.0/24",
            "-o",
            "com.docker.network.driver.mtu=1400",
            "clinet",
        )
    )
    try:
        assert "clinet" in ok(hyper("network", "ls"))
        ok(
            hyper(
                "run",
                "-d",
                "--name",
                "cliweb",
                "--network",
                "clinet",
                "-p",
                "8095:80",
                BUSYBOX,
                "sh",
                "-c",
                SERVE,
            )
        )
        assert ok(hyper("port", "cliweb")).strip() == "80/tcp -> 0.0.0.0:8095"
        wait_for(lambda: fetch(lab, lab.host, "http://127.0.0.1:8095/").returncode == 0, "the CLI's port")
        assert (
            json.loads(ok(hyper("network", "inspect", "clinet")))[0]["IPAM"]["Config"][0]["Subnet"]
            == "10.93.0.0/24"
        )
        assert ok(hyper("exec", "cliweb", "cat", "/sys/class/net/eth0/mtu")).strip() == "1400"
        # A direct run cannot join hyperd's networks (it has a passt of its own).
        assert "needs hyperd" in fails(
            hyper("run", "--direct", "--rm", "--network", "clinet", BUSYBOX, "true")
        )
    finally:
        hyper("rm", "-f", "cliweb")
        ok(hyper("network", "rm", "clinet"))
    assert lab.rules() == 0
