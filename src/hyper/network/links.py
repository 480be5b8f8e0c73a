"""The host's network devices Hyper makes: bridges and taps, through netlink (pyroute2).

Blocking calls (quick netlink round trips): hyperd runs them in a thread.

A pod's tap is made by opening /dev/net/tun here and never made persistent:
the kernel removes it when the last descriptor closes. hyperd hands the
descriptor to QEMU and closes its own, so the tap lives exactly as long as
the VM's QEMU, whatever kills it, and no orphan tap can outlive a pod.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hyper.errors import FailedPrecondition, Unavailable

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
MAIN_TABLE = 254
AF_INET = 2


def _ipr() -> Any:
    return IPRoute()


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def ensure_bridge(name: str, gateway: IPv4Interface, mtu: int) -> None:
    """The bridge `name` with the gateway's address, up, and able to route 127/8
    (published ports reached through 127.0.0.1; see hyper.network.nftables)."""
    try:
        with _ipr() as ipr:
            index = _index(ipr, name)
            if index is None:
                ipr.link("add", ifname=name, kind="bridge")
                index = _index(ipr, name)
                assert index is not None
            addresses = {
                (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=AF_INET)
            }
            if (str(gateway.ip), gateway.network.prefixlen) not in addresses:
                ipr.addr("add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
            ipr.link("set", index=index, state="up", mtu=mtu)
    except NetlinkError as exc:
        raise Unavailable(f"cannot set up the bridge {name}: {exc}") from exc
    _sysctl(f"net/ipv4/conf/{name}/route_localnet", "1")
    with contextlib.suppress(OSError):  # the host may have IPv6 disabled already
        _sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "1")


def delete_link(name: str) -> None:
    with _ipr() as ipr:
        index = _index(ipr, name)
        if index is not None:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=index)


def links_with_prefix(*prefixes: str, kind: str | None = None) -> list[str]:
    """Names of the links starting with one of `prefixes` (of `kind`, e.g. "bridge", if given)."""
    found = []
    with _ipr() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            info = link.get_attr("IFLA_LINKINFO")
            link_kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if name and name.startswith(prefixes) and (kind is None or link_kind == kind):
                found.append(name)
    return found


def open_tap(name: str, bridge: str, mtu: int) -> int:
    """A new tap `name` on `bridge`, up; returns its descriptor (close-on-exec).
    The tap disappears when every descriptor of it is closed."""
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot open {TUN_DEVICE}: {exc.strerror}", hint="load the tun module"
        ) from exc
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        with _ipr() as ipr:
            index = _index(ipr, name)
            master = _index(ipr, bridge)
            if index is None or master is None:
                raise Unavailable(f"the tap {name} or the bridge {bridge} vanished while being joined")
            ipr.link("set", index=index, master=master, mtu=mtu, state="up")
    except (OSError, NetlinkError) as exc:
        os.close(fd)
        raise Unavailable(f"cannot make the tap {name} on {bridge}: {exc}") from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


def host_routes() -> list[IPv4Network]:
    """The destinations of the host's main routing table, the default route left out."""
    with _ipr() as ipr:
        routes = ipr.get_routes(family=AF_INET, table=MAIN_TABLE)
    networks = []
    for route in routes:
        length = route["dst_len"]
        destination = route.get_attr("RTA_DST")
        if length and destination:
            networks.append(IPv4Network(f"{destination}/{length}", strict=False))
    return networks


def link_exists(name: str) -> bool:
    with _ipr() as ipr:
        return _index(ipr, name) is not None


def enable_forwarding() -> None:
    """Routing between the bridges and the host's uplinks, as Docker sets it."""
    if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
        _sysctl("net/ipv4/ip_forward", "1")


def _sysctl(name: str, value: str) -> None:
    with open(f"/proc/sys/{name}", "w") as f:
        f.write(value)
