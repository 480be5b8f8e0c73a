"""hyper.network's pure parts: Docker's texts, IPAM, the nftables ruleset, DNS answers,
the guest's netlink messages and the NIC on QEMU's command line."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest

from hyper.agent import guest_net
from hyper.cli.network_commands import port_lines
from hyper.errors import AlreadyExists, InvalidArgument
from hyper.network import dns as resolver
from hyper.network import nftables
from hyper.network.model import (
    Network,
    PortSpec,
    Publication,
    check_dns_name,
    choose_subnet,
    etc_hosts,
    mac_for,
    network_options,
    parse_extra_host,
    parse_publish,
    parse_subnet,
)
from hyper.network.pod import UNCONNECTED_MAC, GuestInterface, PodNetwork
from hyper.network.request import NetworkConfig, request_from_options
from hyper.network.store import NetworkStore, first_free_address
from hyper.vm.accel import Accel
from hyper.vm.driver import NicSpec, VmSpec
from hyper.vm.qemu_command import build_command, passed_files


def test_publish_forms_as_docker_reads_them() -> None:
    assert parse_publish("80") == [PortSpec(80)]
    assert parse_publish("8080:80") == [PortSpec(80, "tcp", "", 8080)]
    assert parse_publish("127.0.0.1::53/udp") == [PortSpec(53, "udp", "127.0.0.1", 0)]
    assert parse_publish("0.0.0.0:9000-9001:90-91") == [
        PortSpec(90, "tcp", "", 9000),
        PortSpec(91, "tcp", "", 9001),
    ]


@pytest.mark.parametrize(
    "text", ["", "80/sctp", "a:80", "70000", "1:2:3:4", "9000-9002:90-91", "[::1]:80:80"]
)
def test_bad_publish_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_publish(text)


def test_subnets() -> None:
    assert parse_subnet("10.0.0.0/24") == IPv4Network("10.0.0.0/24")
    with pytest.raises(InvalidArgument, match="host bits"):
        parse_subnet("10.0.0.5/24")
    with pytest.raises(InvalidArgument, match="too small"):
        parse_subnet("10.0.0.0/31")
    # The first candidate no host route or network overlaps; the default route is not one.
    assert choose_subnet([IPv4Network("172.17.0.0/16"), IPv4Network("172.18.5.0/24")]) == IPv4Network(
        "172.19.0.0/16"
    )


def test_names_and_hosts() -> None:
    assert check_dns_name("web-1.internal", "alias") == "web-1.internal"
    for bad in ("-web", "we_b", "a" * 64, ""):
        with pytest.raises(InvalidArgument, match="not a valid DNS name"):
            check_dns_name(bad, "alias")
    assert parse_extra_host("db:10.0.0.5") == ("db", "10.0.0.5")
    with pytest.raises(InvalidArgument):
        parse_extra_host("db:nowhere")
    hosts = etc_hosts("web", [IPv4Address("10.0.0.2")], [("db", "10.0.0.5")])
    assert "10.0.0.2\tweb\n" in hosts and "10.0.0.5\tdb\n" in hosts
    assert mac_for(IPv4Address("172.17.0.2")) == "02:42:ac:11:00:02"


def test_requests_from_options() -> None:
    request = request_from_options("", publish=["8080:80"], publish_all=True, exposed=["80/tcp", "53/udp"])
    assert request.mode == ""
    assert request.ports == (PortSpec(80, "tcp", "", 8080), PortSpec(53, "udp"))
    with pytest.raises(InvalidArgument, match="published twice"):
        request_from_options("", publish=["8080:80", "8080:81"])
    assert NetworkConfig.from_env({"HYPER_BRIDGE": "none"}).default_bridge is False
    with pytest.raises(InvalidArgument):
        NetworkConfig.from_env({"HYPER_NETWORK_MTU": "9"})


def test_ipam_never_gives_an_address_twice(tmp_path: Path) -> None:
    store = NetworkStore(tmp_path / "db")
    net = Network("n" * 64, "front", IPv4Network("10.0.0.0/29"), IPv4Address("10.0.0.1"))
    store.insert_network(net)
    given = [store.allocate(f"c{i}", net, None, (), mac_for).ip for i in range(5)]
    assert given == [IPv4Address(f"10.0.0.{n}") for n in range(2, 7)]
    with pytest.raises(Exception, match="no free address"):
        store.allocate("c9", net, None, (), mac_for)
    store.release("c0")
    with pytest.raises(AlreadyExists):
        store.allocate("c8", net, IPv4Address("10.0.0.3"), (), mac_for)
    assert store.allocate("c8", net, None, (), mac_for).ip == IPv4Address("10.0.0.2")
    # A second connection (another process) sees the same rows.
    assert len(NetworkStore(tmp_path / "db").endpoints(network_id=net.id)) == 5
    assert first_free_address(net.subnet, [net.gateway]) == IPv4Address("10.0.0.2")


def test_published_ports_clash_in_the_store(tmp_path: Path) -> None:
    store = NetworkStore(tmp_path / "db")
    ip = IPv4Address("10.0.0.2")
    store.publish([Publication("a", "n", ip, PortSpec(80, "tcp", "", 8080))])
    with pytest.raises(AlreadyExists, match="8080"):
        store.publish([Publication("b", "n", ip, PortSpec(80, "tcp", "127.0.0.1", 8080))])
    store.publish([Publication("b", "n", ip, PortSpec(80, "udp", "", 8080))])  # another protocol is free


def _networks() -> tuple[Network, Network]:
    a = Network("a" * 64, "bridge", IPv4Network("172.17.0.0/16"), IPv4Address("172.17.0.1"))
    b = Network("b" * 64, "sealed", IPv4Network("10.0.0.0/24"), IPv4Address("10.0.0.1"), internal=True)
    return a, b


def test_ruleset_is_the_whole_table() -> None:
    a, b = _networks()
    active = [nftables.ActiveNetwork(a, a.bridge), nftables.ActiveNetwork(b, b.bridge)]
    publication = Publication("c" * 64, a.id, IPv4Address("172.17.0.2"), PortSpec(80, "tcp", "", 8080))
    commands = nftables.ruleset(active, [publication])
    assert commands[:2] == [
        {"add": {"table": {"family": "inet", "name": "hyper"}}},
        {"delete": {"table": {"family": "inet", "name": "hyper"}}},
    ]
    rules = [c["add"]["rule"] for c in commands if "rule" in c.get("add", {})]
    assert all(r["table"] == "hyper" and r["comment"].startswith("hyper:") for r in rules)
    masquerades = [r for r in rules if {"masquerade": None} in r["expr"] and r["chain"] == "postrouting"]
    # The internal network is not masqueraded out; the other is (plus loopback and hairpin for both).
    assert sum("oifname" in str(r["expr"]) and "!=" in str(r["expr"]) for r in masquerades) == 1
    dnat = [r for r in rules if r["chain"] == "ports"]
    assert dnat[0]["expr"][-1] == {"dnat": {"family": "ip", "addr": "172.17.0.2", "port": 80}}
    # Isolation: each bridge drops traffic to the other.
    assert any(r["chain"] == "forward" and "hy-bbbbbbbbbbbb" in str(r["expr"]) for r in rules)
    assert nftables.ruleset([], []) == commands[:2]  # no network: the table goes


def test_dns_answers_names_on_the_askers_networks() -> None:
    directory = resolver.Directory(
        clients={
            "10.0.0.2": resolver.Client("c1", frozenset({"n1"}), (), True),
            "10.0.1.2": resolver.Client("c2", frozenset({"n2"}), (), True),
            "10.0.2.2": resolver.Client("c3", frozenset({"n3"}), (), False),
        },
        names={("n1", "web"): ("10.0.0.3",)},
        reverse={"10.0.0.3": "web.front"},
    )

    def ask(client: str, name: str, kind: str = "A") -> dns.message.Message | None:
        return resolver.answer(directory, client, dns.message.make_query(name, kind))

    found = ask("10.0.0.2", "WEB.")
    assert found is not None and found.answer[0][0].to_text() == "10.0.0.3"
    assert found.flags & dns.flags.QR
    assert ask("10.0.1.2", "web") is None  # another network: forwarded, not answered
    refused = ask("192.0.2.9", "web")
    assert refused is not None and refused.rcode() == dns.rcode.REFUSED  # not a pod: no open resolver
    internal = ask("10.0.2.2", "example.org")
    assert (
        internal is not None and internal.rcode() == dns.rcode.SERVFAIL
    )  # an internal network forwards nothing
    ptr = ask("10.0.0.2", "3.0.0.10.in-addr.arpa.", "PTR")
    assert ptr is not None and "web.front" in ptr.answer[0][0].to_text()
    assert resolver.host_resolvers("nameserver 127.0.0.53\nsearch x\nnameserver ::1\n") == (
        "127.0.0.53",
        "::1",
    )


def test_guest_netlink_messages() -> None:
    message = guest_net.add_address(3, 7, "10.0.0.2", 24)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", message)
    assert (length, kind, seq) == (len(message), guest_net.RTM_NEWADDR, 7)
    assert flags & guest_net.NLM_F_ACK
    assert socket.inet_aton("10.0.0.255") in message  # the broadcast address
    ack = struct.pack("=IHHII", 36, guest_net.NLMSG_ERROR, 0, 7, 0) + struct.pack("=i", -17) + b"\0" * 16
    assert guest_net.parse_ack(ack, 7) == -17
    assert guest_net.mac_bytes("02:42:ac:11:00:02") == bytes([2, 0x42, 0xAC, 0x11, 0, 2])


def test_nics_on_qemu_command_line(tmp_path: Path) -> None:
    spec = VmSpec(
        name="x",
        kernel=tmp_path / "k",
        initrd=tmp_path / "i",
        cmdline="",
        accel=Accel.TCG,
        memory_mib=256,
        cpus=1,
        run_dir=tmp_path,
        nics=(NicSpec("02:42:ac:11:00:02", "tap"), NicSpec(UNCONNECTED_MAC, "none")),
    )
    command = " ".join(build_command(spec))
    [nic] = [f for f in passed_files(spec) if f.kind == "nic"]
    assert f"-netdev tap,id=net0,fd={nic.fd},vhost=off" in command
    assert "-netdev hubport,id=net1,hubid=1" in command
    assert "virtio-net-device,netdev=net0,mac=02:42:ac:11:00:02" in command


def test_pod_network_guest_request() -> None:
    pod = PodNetwork(
        (GuestInterface("02:42:0a:00:00:02", IPv4Interface("10.0.0.2/24"), 1500, IPv4Address("10.0.0.1")),),
        "",
        "",
    )
    request = pod.guest_request([UNCONNECTED_MAC])
    assert request["interfaces"][0]["device_mac"] == UNCONNECTED_MAC
    assert request["interfaces"][0]["gateway"] == "10.0.0.1"
    assert request["interfaces"][0]["renegotiate"] is False  # a booted VM negotiated with its tap
    # Resumed from a template: a tap's NIC renegotiates (offloads); passt's stream has none to offer.
    assert pod.guest_request([UNCONNECTED_MAC], resumed=True)["interfaces"][0]["renegotiate"] is True
    stream = PodNetwork(
        (GuestInterface("02:42:0a:00:00:02", IPv4Interface("10.0.0.2/24"), 65520, backend="stream"),), "", ""
    )
    assert stream.guest_request([UNCONNECTED_MAC], resumed=True)["interfaces"][0]["renegotiate"] is False
    assert PodNetwork((), "", "").guest_request([UNCONNECTED_MAC]) == {
        "interfaces": [],
        "unused": [UNCONNECTED_MAC],
    }


def test_port_lines_as_docker_port_prints() -> None:
    ports = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}], "53/udp": None}
    assert port_lines(ports) == ["80/tcp -> 0.0.0.0:8080"]
    assert port_lines(ports, "80") == ["0.0.0.0:8080"]


def test_network_options_give_an_mtu_or_are_refused_by_name(tmp_path: Path) -> None:
    assert network_options({}) == 0
    assert network_options({"com.docker.network.driver.mtu": "9000"}) == 9000
    for bad in ("68", "70000", "jumbo"):
        with pytest.raises(InvalidArgument, match="is not an MTU"):
            network_options({"com.docker.network.driver.mtu": bad})
    with pytest.raises(InvalidArgument, match="not supported"):
        network_options({"com.docker.network.bridge.enable_icc": "false"})
    with pytest.raises(InvalidArgument, match="Hyper names its bridges"):
        network_options({"com.docker.network.bridge.name": "br0"})
    store = NetworkStore(tmp_path / "net.db")
    jumbo = Network("a" * 64, "jumbo", IPv4Network("10.9.0.0/24"), IPv4Address("10.9.0.1"), mtu=9000)
    store.insert_network(jumbo)
    assert store.resolve("jumbo").mtu == 9000
