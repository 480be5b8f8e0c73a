"""CNI's pure parts: picking the configuration, what each plugin reads, the address a result gives."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from hyper.cri.cni import CniNetwork, address_of, load_network, plugin_config
from hyper.cri.records import PortMapping
from hyper.errors import InvalidArgument, Unavailable


def test_the_first_configuration_by_name_is_the_network(tmp_path: Path) -> None:
    assert load_network(tmp_path / "missing") is None
    assert load_network(tmp_path) is None
    (tmp_path / "20-b.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "x"}]})
    )
    (tmp_path / "10-a.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "a", "type": "bridge"}))
    (tmp_path / "00-notes.txt").write_text("not a configuration")
    network = load_network(tmp_path)
    assert network is not None and (network.name, network.cni_version) == ("a", "0.4.0")
    assert network.plugins == ({"cniVersion": "0.4.0", "name": "a", "type": "bridge"},)
    (tmp_path / "05-bad.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "c", "plugins": []}))
    with pytest.raises(InvalidArgument, match="no plugins"):
        load_network(tmp_path)


def test_each_plugin_reads_the_network_the_previous_result_and_its_capabilities() -> None:
    network = CniNetwork("net", "1.0.0", (), Path("/x"))
    ports = (PortMapping("tcp", 80, 8080, "127.0.0.1"), PortMapping("udp", 53, 0))
    portmap = plugin_config(
        network, {"type": "portmap", "capabilities": {"portMappings": True}}, {"ips": []}, ports
    )
    assert (
        portmap["name"] == "net" and portmap["cniVersion"] == "1.0.0" and portmap["prevResult"] == {"ips": []}
    )
    assert portmap["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}]
    }
    bridge = plugin_config(network, {"type": "bridge"}, None, ports)
    assert "runtimeConfig" not in bridge and "prevResult" not in bridge


def test_the_pods_address_is_the_first_ipv4_on_its_own_interface() -> None:
    result = {
        "interfaces": [
            {"name": "cni0", "mac": "aa"},
            {"name": "veth1"},
            {"name": "eth0", "sandbox": "/run/netns/x"},
        ],
        "ips": [
            {"address": "192.0.2.1/24", "interface": 0},
            {"address": "2001:db8::2/64", "interface": 2},
            {"address": "203.0.113.2/24", "gateway": "203.0.113.1", "interface": 2},
        ],
    }
    address = address_of(result)
    assert address.interface == IPv4Interface("203.0.113.2/24") and address.gateway == IPv4Address(
        "203.0.113.1"
    )
    with pytest.raises(Unavailable, match="no IPv4"):
        address_of({"ips": [{"address": "2001:db8::2/64"}]})
