"""What a container asks of the network, from Docker's texts; hyperd's network settings.

Pure: `request_from_options` turns RunOptions' textual network options
(`--network`, `-p`, `-P`, `--dns`, `--add-host`, …) into a checked
NetworkRequest, so bad input is refused at create, before anything is made.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import TYPE_CHECKING

from hyper.errors import InvalidArgument
from hyper.network.model import (
    DEFAULT_MTU,
    PortSpec,
    parse_extra_host,
    parse_port_key,
    parse_publish,
    parse_subnet,
)

if TYPE_CHECKING:
    from hyper.runtime.spec import RunOptions

# Tenants' networks get /24s from their own pool, not Docker's 31 candidates:
# a service with many tenants would run out of those.
DEFAULT_TENANT_SUBNETS = IPv4Network("10.210.0.0/16")
TENANT_PREFIX = 24


@dataclass(frozen=True)
class NetworkRequest:
    """What a container asks of the network, from RunOptions' Docker texts."""

    mode: str = ""  # a network's name or ID, "none", or "" for the default (bridge, or none)
    aliases: tuple[str, ...] = ()
    ip: str | None = None
    ports: tuple[PortSpec, ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    extra_hosts: tuple[tuple[str, str], ...] = ()
    owner: str = ""  # the tenant asking ("": the admin): names resolve among its networks


@dataclass(frozen=True)
class NetworkConfig:
    """hyperd's network settings from the environment.

    | variable | meaning | default |
    |---|---|---|
    | HYPER_BRIDGE_SUBNET | the default `bridge` network's subnet (made once, then kept) | see below |
    | HYPER_NETWORK_MTU | the MTU of bridges, taps and the pods' NICs | 1500 |
    | HYPER_BRIDGE | `none`: a container given no --network gets none (dockerd's --bridge=none) | bridge |
    | HYPER_TENANT_SUBNETS | tenants' networks' subnets (/24 each) when they give none | 10.210.0.0/16 |

    Without HYPER_BRIDGE_SUBNET the default network takes the first of
    172.17-31.0.0/16, then 192.168.N.0/20, that no host route overlaps.
    """

    bridge_subnet: IPv4Network | None = None
    mtu: int = DEFAULT_MTU
    default_bridge: bool = (
        True  # HYPER_BRIDGE=none: containers get no network unless asked (dockerd's --bridge=none)
    )
    tenant_subnets: IPv4Network = DEFAULT_TENANT_SUBNETS

    def tenant_candidates(self) -> list[IPv4Network]:
        """The /24s a tenant's network may get (a small pool has one subnet)."""
        if self.tenant_subnets.prefixlen >= TENANT_PREFIX:
            return [self.tenant_subnets]
        return list(self.tenant_subnets.subnets(new_prefix=TENANT_PREFIX))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NetworkConfig:
        env = os.environ if environ is None else environ
        subnet = env.get("HYPER_BRIDGE_SUBNET")
        mtu_text = env.get("HYPER_NETWORK_MTU", str(DEFAULT_MTU))
        if not mtu_text.isdigit() or not 576 <= int(mtu_text) <= 65535:
            raise InvalidArgument(f"HYPER_NETWORK_MTU={mtu_text!r} is not an MTU", hint="give 576 to 65535")
        bridge = env.get("HYPER_BRIDGE", "bridge")
        if bridge not in ("bridge", "none"):
            raise InvalidArgument(f"HYPER_BRIDGE={bridge!r}", hint="give bridge (the default) or none")
        pool = env.get("HYPER_TENANT_SUBNETS")
        return cls(
            parse_subnet(subnet) if subnet else None,
            int(mtu_text),
            bridge == "bridge",
            parse_subnet(pool) if pool else DEFAULT_TENANT_SUBNETS,
        )


def request_from_options(
    network: str,
    *,
    aliases: Iterable[str] = (),
    ip: str | None = None,
    publish: Iterable[str] = (),
    publish_all: bool = False,
    exposed: Iterable[str] = (),
    dns_servers: Iterable[str] = (),
    dns_search: Iterable[str] = (),
    dns_options: Iterable[str] = (),
    extra_hosts: Iterable[str] = (),
    owner: str = "",
) -> NetworkRequest:
    """RunOptions' textual network options as a checked NetworkRequest (pure)."""
    ports: list[PortSpec] = []
    for text in publish:
        ports += parse_publish(text)
    if publish_all:
        published = {p.key for p in ports}
        for key in exposed:
            number, protocol = parse_port_key(key)
            if f"{number}/{protocol}" not in published:
                ports.append(PortSpec(number, protocol))
    seen: set[tuple[str, str, int]] = set()
    for port in ports:
        if port.host_port:
            where = (port.protocol, port.host_ip, port.host_port)
            if where in seen:
                raise InvalidArgument(
                    f"the host port {port.host_port}/{port.protocol} is published twice",
                    hint="give each -p its own host port",
                )
            seen.add(where)
    return NetworkRequest(
        mode="" if network == "default" else network,
        aliases=tuple(aliases),
        ip=ip or None,
        ports=tuple(ports),
        dns=tuple(dns_servers),
        dns_search=tuple(dns_search),
        dns_options=tuple(dns_options),
        extra_hosts=tuple(parse_extra_host(h) for h in extra_hosts),
        owner=owner,
    )


def request_for(options: RunOptions, image_exposed: Iterable[str] = ()) -> NetworkRequest:
    """A container's NetworkRequest from its RunOptions (and its image's EXPOSE, for -P)."""
    return request_from_options(
        options.network,
        aliases=options.network_aliases,
        ip=options.ip,
        publish=options.publish,
        publish_all=options.publish_all,
        exposed=(*options.expose, *image_exposed),
        dns_servers=options.dns,
        dns_search=options.dns_search,
        dns_options=options.dns_options,
        extra_hosts=options.extra_hosts,
        owner=options.owner,
    )
