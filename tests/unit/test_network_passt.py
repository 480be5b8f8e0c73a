"""The pure parts of user-mode networking (hyper.network.passt, .usermode): passt's
command line, the reading of its refusals and of the host's routes, what a
foreground run's network is."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from hyper.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from hyper.network.model import PortSpec
from hyper.network.passt import PASST_MTU, PasstPlan, explain_failure, has_default_route, port_option
from hyper.network.request import NetworkRequest
from hyper.network.usermode import foreground_mode

ROUTES_WITH_DEFAULT = """\
Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth0	00000000	0101A8C0	0003	0	0	0	00000000	0	0	0
eth0	0001A8C0	00000000	0001	0	0	0	00FFFFFF	0	0	0
"""
ROUTES_WITHOUT_DEFAULT = """\
Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth0	0001A8C0	00000000	0001	0	0	0	00FFFFFF	0	0	0
"""


def plan(**changes: object) -> PasstPlan:
    fields: dict[str, object] = {
        "address": IPv4Interface("172.17.0.2/16"),
        "gateway": IPv4Address("172.17.0.1"),
        "ports": (PortSpec(80, "tcp", "", 8080), PortSpec(53, "udp", "127.0.0.1", 5353)),
        "pid_file": Path("/run/h/passt/abc.pid"),
        "log_file": Path("/run/h/passt/abc.log"),
    }
    fields.update(changes)
    return PasstPlan(**fields)  # type: ignore[arg-type]


def test_port_options_as_passt_reads_them() -> None:
    assert port_option(PortSpec(80, "tcp", "", 8080)) == ["-t", "8080:80"]
    assert port_option(PortSpec(53, "udp", "127.0.0.1", 5353)) == ["-u", "127.0.0.1/5353:53"]


def test_command_gives_every_setting_and_no_dhcp() -> None:
    command = plan().command("/usr/bin/passt", 7)
    assert command[:3] == ["/usr/bin/passt", "--fd", "7"]

    def value(option: str) -> str:
        return value_of(command, option)

    assert value("--address") == "172.17.0.2"
    assert value("--netmask") == "16"
    assert value("--gateway") == "172.17.0.1"
    assert value("--dns-forward") == "172.17.0.1"
    assert value("--mtu") == str(PASST_MTU)
    assert value("--pid") == "/run/h/passt/abc.pid"
    for flag in ("--no-dhcp", "--no-map-gw", "--ipv4-only", "--no-ndp", "--no-ra"):
        assert flag in command
    assert command[-4:] == ["-t", "8080:80", "-u", "127.0.0.1/5353:53"]
    assert "--interface" not in command
    # A host without a default route: passt copies its settings from loopback.
    assert value_of(plan(default_route=False).command("passt", 3), "--interface") == "lo"


def value_of(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


def test_default_route_is_read_from_proc() -> None:
    assert has_default_route(ROUTES_WITH_DEFAULT)
    assert not has_default_route(ROUTES_WITHOUT_DEFAULT)
    assert not has_default_route("")


def test_refusals_are_one_line_and_name_the_port() -> None:
    taken = explain_failure("Failed to bind any port for '-t 8081:80', exiting\n", 1)
    assert isinstance(taken, AlreadyExists)
    assert "0.0.0.0:8081/tcp is already in use" in str(taken)
    on_address = explain_failure("Failed to bind any port for '-u 127.0.0.1/53:53', exiting", 1)
    assert "127.0.0.1:53/udp" in str(on_address)
    other = explain_failure("syslog: whatever\nNo routable interface for IPv4\n", 1)
    assert isinstance(other, Unavailable) and "No routable interface" in str(other)
    assert "exit status 2" in str(explain_failure("", 2))


def test_foreground_runs_get_the_default_network_or_none() -> None:
    def mode(request: NetworkRequest, *, bridge: bool = True, passt: bool = True) -> str:
        return foreground_mode(request, default_bridge=bridge, passt=passt)

    assert mode(NetworkRequest()) == "bridge"
    assert mode(NetworkRequest(mode="bridge", ports=(PortSpec(80),))) == "bridge"
    assert mode(NetworkRequest(), bridge=False) == "none"  # HYPER_BRIDGE=none
    assert mode(NetworkRequest(mode="bridge"), bridge=False) == "bridge"  # unless asked
    assert mode(NetworkRequest(), passt=False) == "none"  # nothing to serve it: loopback only
    with pytest.raises(FailedPrecondition, match="needs passt"):
        mode(NetworkRequest(ports=(PortSpec(80),)), passt=False)
    with pytest.raises(InvalidArgument, match="without a network"):
        mode(NetworkRequest(ports=(PortSpec(80),)), bridge=False)
    with pytest.raises(InvalidArgument, match="needs hyperd"):
        mode(NetworkRequest(mode="front"))
    with pytest.raises(InvalidArgument, match="--network-alias"):
        mode(NetworkRequest(aliases=("www",)))
    with pytest.raises(InvalidArgument, match="--ip"):
        mode(NetworkRequest(ip="172.17.0.9"))


def test_passt_started_as_root_has_no_files_on_its_command_line() -> None:
    command = plan(pid_file=None, log_file=None).command("passt", 3)
    assert "--pid" not in command and "--log-file" not in command
