"""What a network, an endpoint and a published port are, and Docker's texts for them.

Pure: frozen values and the functions that parse and check Docker's forms
(`-p [IP:][HOSTPORT:]PORT[/PROTO]`, `--add-host NAME:IP`, subnets, DNS
names), each refusing bad input with one line that says what to do.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from hyper.errors import InvalidArgument

DEFAULT_NETWORK = "bridge"  # Docker's name for the default network
NO_NETWORK = "none"
DEFAULT_BRIDGE = "hyper0"
BRIDGE_PREFIX = "hy-"  # user networks' bridges: hy- and 12 hex digits of the network's id
TAP_PREFIX = "hyt-"  # a pod's tap: hyt- and 11 hex digits of the container's id
DEFAULT_MTU = 1500
MIN_MTU = 576
MAX_MTU = 65535
MTU_OPTION = "com.docker.network.driver.mtu"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
PROTOCOLS = ("tcp", "udp")
# Candidates for a network whose subnet is not given, in order: Docker's
# 172.17-31/16, then 192.168.N.0/20. One that overlaps a host route or another
# network is skipped.
SUBNET_CANDIDATES = tuple(IPv4Network(f"172.{n}.0.0/16") for n in range(17, 32)) + tuple(
    IPv4Network(f"192.168.{n}.0/20") for n in range(0, 256, 16)
)
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Network:
    """A network: a bridge on the host, a subnet, and who may leave it."""

    id: str
    name: str
    subnet: IPv4Network
    gateway: IPv4Address
    internal: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    created: float = 0.0
    mtu: int = 0  # `-o com.docker.network.driver.mtu=N`; 0: hyperd's (HYPER_NETWORK_MTU)
    owner: str = ""  # the tenant whose network it is ("": hyperd's admin); each tenant has its `bridge`

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_NETWORK

    @property
    def bridge(self) -> str:
        if self.is_default and not self.owner:
            return DEFAULT_BRIDGE
        return f"{BRIDGE_PREFIX}{self.id[:12]}"

    @property
    def gateway_interface(self) -> IPv4Interface:
        return IPv4Interface(f"{self.gateway}/{self.subnet.prefixlen}")


@dataclass(frozen=True)
class PortSpec:
    """One published port: host address and port (0: any free one) to the container's."""

    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""  # "" is every host address, Docker's 0.0.0.0
    host_port: int = 0

    @property
    def key(self) -> str:
        """Docker's "80/tcp"."""
        return f"{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class Attachment:
    """A container's wish to be on a network (what `--network`, `connect` and
    NetworkingConfig say), kept while the container exists."""

    network_id: str
    aliases: tuple[str, ...] = ()
    ip: IPv4Address | None = None  # --ip; None: the next free address


@dataclass(frozen=True)
class Endpoint:
    """A running pod's place on a network: its address and MAC, while its VM runs."""

    network_id: str
    container_id: str
    ip: IPv4Address
    mac: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Publication:
    """A published port as bound: the host port is chosen by now."""

    container_id: str
    network_id: str
    container_ip: IPv4Address
    port: PortSpec


def check_network_name(name: str) -> str:
    if not _NETWORK_NAME.match(name):
        raise InvalidArgument(
            f"invalid network name {name!r}",
            hint="use letters, digits and _ . - (the first a letter or digit), at most 128",
        )
    return name


def check_dns_name(name: str, what: str) -> str:
    """A hostname or alias: dot-separated DNS labels (letters, digits, hyphens)."""
    labels = name.rstrip(".").split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise InvalidArgument(
            f"{what} {name!r} is not a valid DNS name",
            hint="use labels of letters, digits and hyphens (1-63 each, no hyphen first or last)",
        )
    return name


def parse_subnet(text: str) -> IPv4Network:
    try:
        loose = IPv4Network(text, strict=False)
    except ValueError:
        raise InvalidArgument(
            f"invalid subnet {text!r}", hint="give an IPv4 network such as 10.20.0.0/24"
        ) from None
    if loose.network_address != IPv4Address(text.split("/", maxsplit=1)[0]):
        raise InvalidArgument(f"invalid subnet {text!r}: host bits are set", hint=f"did you mean {loose}?")
    if loose.prefixlen > 30:
        raise InvalidArgument(f"the subnet {text} is too small", hint="use a prefix of /30 or shorter")
    return loose


def parse_address(text: str, what: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise InvalidArgument(
            f"invalid {what} {text!r}", hint="give an IPv4 address such as 10.20.0.5"
        ) from None


def check_in_subnet(address: IPv4Address, subnet: IPv4Network, what: str) -> None:
    if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
        raise InvalidArgument(
            f"the {what} {address} is outside the subnet {subnet}",
            hint=f"give an address between {subnet.network_address + 1} and {subnet.broadcast_address - 1}",
        )


def network_options(options: Mapping[str, str]) -> int:
    """A new network's driver options (`docker network create -o KEY=VALUE`):
    its MTU (0: none given). Any other option is refused by name, never ignored."""
    mtu = 0
    for key, value in options.items():
        if key == MTU_OPTION:
            if not value.isdigit() or not MIN_MTU <= int(value) <= MAX_MTU:
                raise InvalidArgument(
                    f"{MTU_OPTION}={value!r} is not an MTU", hint=f"give {MIN_MTU} to {MAX_MTU}"
                )
            mtu = int(value)
        elif key == BRIDGE_NAME_OPTION:
            raise InvalidArgument(
                f"the network option {key} is not supported: Hyper names its bridges",
                hint=f"leave it out; Hyper takes {MTU_OPTION}",
            )
        else:
            raise InvalidArgument(
                f"the network option {key!r} is not supported", hint=f"Hyper takes {MTU_OPTION}"
            )
    return mtu


def choose_subnet(
    taken: Iterable[IPv4Network], candidates: Iterable[IPv4Network] = SUBNET_CANDIDATES
) -> IPv4Network:
    """The first candidate that overlaps none of `taken` (host routes, other networks)."""
    used = list(taken)
    for candidate in candidates:
        if not any(candidate.overlaps(other) for other in used):
            return candidate
    raise InvalidArgument("no free subnet is left for a new network", hint="give one with --subnet")


def overlapping(subnet: IPv4Network, networks: Iterable[Network]) -> Network | None:
    return next((n for n in networks if n.subnet.overlaps(subnet)), None)


def mac_for(ip: IPv4Address) -> str:
    """Docker's MAC for an address: 02:42 (locally administered) and the address's four bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidArgument(f"invalid {what} {text!r}", hint="give a port number from 1 to 65535")
    return int(text)


def _port_range(text: str, what: str) -> list[int]:
    first, dash, last = text.partition("-")
    start = _port(first, what)
    end = _port(last, what) if dash else start
    if end < start:
        raise InvalidArgument(f"invalid {what} range {text!r}", hint="give the lower port first")
    return list(range(start, end + 1))


def parse_publish(text: str) -> list[PortSpec]:
    """Docker's `-p [IP:][HOSTPORT:]CONTAINERPORT[/PROTO]`, ranges included."""
    body, slash, protocol = text.partition("/")
    protocol = protocol.lower() if slash else "tcp"
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"invalid protocol {protocol!r} in -p {text}", hint="use tcp or udp")
    if body.startswith("["):
        raise InvalidArgument(f"-p {text}: IPv6 host addresses are not supported", hint="publish on IPv4")
    parts = body.split(":")
    if len(parts) > 3 or not parts[-1]:
        raise InvalidArgument(
            f"invalid -p {text!r}", hint="use [IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp], e.g. 8080:80"
        )
    host_ip = parts[0] if len(parts) == 3 else ""
    host_ports_text = parts[-2] if len(parts) >= 2 else ""
    if host_ip:
        address = parse_address(host_ip, "host address in -p")
        host_ip = "" if address == IPv4Address("0.0.0.0") else str(address)
    container_ports = _port_range(parts[-1], "container port")
    if not host_ports_text:
        return [PortSpec(port, protocol, host_ip, 0) for port in container_ports]
    host_ports = _port_range(host_ports_text, "host port")
    if len(host_ports) != len(container_ports):
        if len(container_ports) == 1:
            # Docker: a host range for one container port means "any one of them";
            # Hyper takes the first, and says so if it is taken.
            host_ports = host_ports[:1]
        else:
            raise InvalidArgument(
                f"-p {text}: the host and container port ranges differ in length",
                hint="give ranges of the same length",
            )
    return [PortSpec(c, protocol, host_ip, h) for h, c in zip(host_ports, container_ports, strict=True)]


def parse_port_key(key: str) -> tuple[int, str]:
    """Docker's "80/tcp" (or "80") as (80, "tcp")."""
    port, _, protocol = key.partition("/")
    protocol = protocol.lower() or "tcp"
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"invalid protocol in port {key!r}", hint="use tcp or udp")
    return _port(port, "container port"), protocol


def parse_extra_host(text: str) -> tuple[str, str]:
    """Docker's `--add-host NAME:IP` (or NAME=IP) as (name, address)."""
    name, sep, address = text.partition("=") if "=" in text else text.partition(":")
    if not sep or not name:
        raise InvalidArgument(f"invalid --add-host {text!r}", hint="use NAME:IP, e.g. db:10.0.0.5")
    address = address.strip("[]")
    if address == "host-gateway":
        raise InvalidArgument(
            "--add-host NAME:host-gateway is not supported",
            hint="give the host's address on the container's network (its gateway)",
        )
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise InvalidArgument(f"invalid address in --add-host {text!r}", hint="use NAME:IP") from None
    return check_dns_name(name, "--add-host name"), address


def etc_hosts(hostname: str, own: Iterable[IPv4Address], extra: Iterable[tuple[str, str]] = ()) -> str:
    """A container's /etc/hosts: loopback, its own addresses under its hostname, --add-host."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    lines += [f"{name_ip}\t{name}" for name, name_ip in extra]
    addresses = list(own)
    if addresses:
        lines += [f"{address}\t{hostname}" for address in addresses]
    else:
        lines[0] += f" {hostname}"
    return "\n".join(lines) + "\n"


def resolv_conf(nameservers: Iterable[str], search: Iterable[str] = (), options: Iterable[str] = ()) -> str:
    lines = [f"nameserver {server}" for server in nameservers]
    search = list(search)
    if search:
        lines.append("search " + " ".join(search))
    options = list(options)
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + ("\n" if lines else "")
