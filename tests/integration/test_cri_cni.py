"""Pod networking through CNI with Debian's real plugins, in a network namespace the test makes.

hyperd runs inside a namespace of the test's own (`ip netns exec`), with a
CNI configuration of Debian's containernetworking-plugins (bridge with
host-local IPAM on 203.0.113.0/24, TEST-NET-3, and loopback). The bridge
plugin makes its bridge in that namespace and a veth into the pod's
namespace that hyperd made; the VM joins the veth through a tap and tc
redirects. Traffic goes only between the pod's VM and the bridge, both inside
namespaces the test made; every namespace is removed on every path.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.integration.conftest import BUSYBOX
from tests.support.cri import CriHyperd, status_of

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        not Path("/usr/lib/cni/bridge").exists(), reason="containernetworking-plugins is missing"
    ),
]

SUBNET = IPv4Network("203.0.113.0/24")
GATEWAY = "203.0.113.1"


@dataclass
class CniLab:
    hyperd: CriHyperd
    host: str  # the namespace hyperd runs in
    ipam: Path
    sandboxes: list[str]

    def pod_namespaces(self) -> list[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        names = {line.split()[0] for line in listed.splitlines() if line.strip()}
        return sorted(f"hyper-{s[:12]}" for s in self.sandboxes if f"hyper-{s[:12]}" in names)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, check=True, timeout=30)


@pytest.fixture
def lab(image_state: Path, shared_cache: Path, tmp_path: Path) -> Iterator[CniLab]:
    host = f"hyc-{secrets.token_hex(3)}"
    state = Path(tempfile.mkdtemp(prefix="cri-cni-state-"))
    shutil.copytree(image_state, state, dirs_exist_ok=True)
    conf_dir, ipam = tmp_path / "net.d", tmp_path / "ipam"
    conf_dir.mkdir()
    (conf_dir / "10-hyper-test.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "hyper-test",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cnihy0",
                        "isGateway": True,
                        "ipMasq": False,
                        "ipam": {
                            "type": "host-local",
                            # Two addresses: a third sandbox finds the range exhausted.
                            "ranges": [
                                [
                                    {
                                        "subnet": str(SUBNET),
                                        "gateway": GATEWAY,
                                        "rangeStart": "203.0.113.2",
                                        "rangeEnd": "203.0.113.3",
                                    }
                                ]
                            ],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": str(ipam),
                        },
                    },
                    {"type": "loopback"},
                ],
            }
        )
    )
    lab: CniLab | None = None
    try:
        _ip("netns", "add", host)
        _ip("-n", host, "link", "set", "lo", "up")
        daemon = CriHyperd(
            state,
            shared_cache,
            wrapper=("ip", "netns", "exec", host),
            arguments=("--cni-conf-dir", str(conf_dir)),
        )
        lab = CniLab(daemon, host, ipam, [])
        with daemon:
            yield lab
    finally:
        if lab is not None:
            for name in lab.pod_namespaces():  # what a failed test left
                subprocess.run(["ip", "netns", "delete", name], check=False)
        subprocess.run(["ip", "netns", "delete", host], check=False)
        shutil.rmtree(state, ignore_errors=True)


def test_a_pod_gets_its_address_from_cni_and_reaches_the_bridge(lab: CniLab, tmp_path: Path) -> None:
    sandbox_config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="net", namespace="default", uid="uid-net"),
        hostname="net",
        log_directory=str(tmp_path / "logs"),
        dns_config=cri.DNSConfig(servers=["203.0.113.53"], searches=["default.svc"]),
    )
    with lab.hyperd.client() as client:
        sandbox_id = client.call(
            "RunPodSandbox", cri.RunPodSandboxRequest(config=sandbox_config), cri.RunPodSandboxResponse
        ).pod_sandbox_id
        lab.sandboxes.append(sandbox_id)
        assert lab.pod_namespaces() == [f"hyper-{sandbox_id[:12]}"]
        status = client.call(
            "PodSandboxStatus",
            cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id),
            cri.PodSandboxStatusResponse,
        ).status
        pod_ip = IPv4Address(status.network.ip)
        assert pod_ip in SUBNET and str(pod_ip) != GATEWAY
        assert (lab.ipam / "hyper-test" / str(pod_ip)).exists()  # host-local's lease

        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="main"),
            image=cri.ImageSpec(image=BUSYBOX),
            command=["sh", "-c", "while true; do sleep 1; done"],
        )
        container_id = client.call(
            "CreateContainer",
            cri.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
            ),
            cri.CreateContainerResponse,
        ).container_id
        client.call(
            "StartContainer", cri.StartContainerRequest(container_id=container_id), cri.StartContainerResponse
        )

        def run(*command: str) -> cri.ExecSyncResponse:
            request = cri.ExecSyncRequest(container_id=container_id, cmd=list(command), timeout=60)
            return client.call("ExecSync", request, cri.ExecSyncResponse)

        addresses = run("ip", "-4", "addr", "show")
        assert f"inet {pod_ip}/24" in addresses.stdout.decode(), addresses
        resolv = run("cat", "/etc/resolv.conf").stdout.decode()
        assert "nameserver 203.0.113.53" in resolv and "default.svc" in resolv, resolv
        # The VM reaches the bridge (in hyperd's namespace), and the bridge the VM.
        ping = run("ping", "-c", "1", "-W", "10", GATEWAY)
        assert ping.exit_code == 0, ping
        deadline = time.monotonic() + 60
        while True:
            back = subprocess.run(
                ["ip", "netns", "exec", lab.host, "busybox", "ping", "-c", "1", "-W", "5", str(pod_ip)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if back.returncode == 0 or time.monotonic() > deadline:
                break
        assert back.returncode == 0, back.stdout + back.stderr
        # The sandbox's stats count that traffic on the pod's interface.
        stats = client.call(
            "PodSandboxStats",
            cri.PodSandboxStatsRequest(pod_sandbox_id=sandbox_id),
            cri.PodSandboxStatsResponse,
        ).stats
        default = stats.linux.network.default_interface
        assert default.name == "eth0" and default.rx_bytes.value > 0 and default.tx_bytes.value > 0, default

        # Teardown: CNI DEL frees the address, the namespace goes; doing it again is no error.
        for _ in range(2):
            client.call(
                "StopPodSandbox",
                cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                cri.StopPodSandboxResponse,
            )
        assert lab.pod_namespaces() == []
        assert not (lab.ipam / "hyper-test" / str(pod_ip)).exists()
        client.call(
            "RemovePodSandbox",
            cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
            cri.RemovePodSandboxResponse,
        )


def test_a_failing_cni_add_leaves_no_namespace(lab: CniLab, tmp_path: Path) -> None:
    # The range holds two addresses: the third sandbox cannot get one.
    del tmp_path
    with lab.hyperd.client() as client:
        made = []
        for index in range(3):
            config = cri.PodSandboxConfig(
                metadata=cri.PodSandboxMetadata(name=f"p{index}", namespace="n", uid=f"u{index}")
            )
            try:
                made.append(
                    client.call(
                        "RunPodSandbox", cri.RunPodSandboxRequest(config=config), cri.RunPodSandboxResponse
                    ).pod_sandbox_id
                )
            except grpc.RpcError as exc:
                code, details = status_of(exc)
                assert code is grpc.StatusCode.UNAVAILABLE and "CNI plugin bridge ADD failed" in details, (
                    details
                )
                break
            lab.sandboxes.append(made[-1])
        else:
            raise AssertionError("the address range never ran out")
        assert len(made) == 2 and len(lab.pod_namespaces()) == 2
        for sandbox_id in made:
            client.call(
                "RemovePodSandbox",
                cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                cri.RemovePodSandboxResponse,
            )
        assert lab.pod_namespaces() == []
