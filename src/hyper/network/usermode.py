"""User-mode networking for one pod: its passt, its published ports, and what its guest gets.

Two callers need a network without bridges, taps or nftables:
- a hyperd without root, for each pod (hyper.network.manager keeps the
  addresses and published ports in its store, as for bridged pods);
- a direct `hyper run --direct` (in the CLI's process), root or not: there is no hyperd to keep
  addresses, bridges and rules, and nothing of the run may outlive it. A
  passt tied to the VM's socket ends exactly when the VM ends, whatever ends
  it (hyper.network.passt), so `hyper run -p 8080:80 IMAGE` works as Docker
  users expect and leaves nothing behind, even after a `kill -9`.

The guest's address is not seen outside the VM (passt translates every
connection into the host's own sockets), so a direct run takes the first
candidate subnet no host route overlaps, as the default network would.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface, ip_address
from pathlib import Path

from hyper.errors import FailedPrecondition, InvalidArgument
from hyper.network import dns, links
from hyper.network.model import (
    DEFAULT_NETWORK,
    NO_NETWORK,
    PortSpec,
    choose_subnet,
    etc_hosts,
    mac_for,
    resolv_conf,
)
from hyper.network.passt import PASST_MTU, PasstPlan, PasstProcess, find_passt, has_default_route
from hyper.network.pod import GuestInterface, PodNetwork, no_network
from hyper.network.ports import PortReservations
from hyper.network.request import NetworkRequest

RESOLV_CONF = Path("/etc/resolv.conf")
THROUGH_HYPERD = "run it through hyperd (without --direct and HYPER_RUN_DIRECT)"
PROC_NET_ROUTE = Path("/proc/net/route")


def choose_ports(ports: Iterable[PortSpec]) -> list[PortSpec]:
    """The published ports with the kernel's choice for host port 0; a taken
    port is named here, with the kernel's reason, before passt binds them.
    With SO_REUSEADDR, as passt binds, so that connections of an earlier run
    still in TIME_WAIT do not refuse the port. Blocking."""
    reservations = PortReservations(reuse_address=True)
    try:
        return reservations.hold_all(ports)
    finally:
        reservations.close()


def host_has_default_route() -> bool:
    try:
        return has_default_route(PROC_NET_ROUTE.read_text())
    except OSError:
        return False


async def start_user_network(
    *,
    address: IPv4Interface,
    gateway: IPv4Address,
    hostname: str,
    request: NetworkRequest,
    ports: Iterable[PortSpec],
    passt_dir: Path,
    name: str,
    host_resolv: str,
) -> tuple[PodNetwork, PasstProcess]:
    """Start a pod's passt and return the PodNetwork its VM gets (QEMU's end
    of the socket in `fds`) and the passt. A caller cancelled meanwhile
    leaves no passt."""
    plan = PasstPlan(
        address=address,
        gateway=gateway,
        ports=tuple(ports),
        # passt started as root becomes `nobody` before it opens its files.
        pid_file=passt_dir / f"{name}.pid" if os.geteuid() != 0 else None,
        log_file=passt_dir / f"{name}.log" if os.geteuid() != 0 else None,
        default_route=await asyncio.to_thread(host_has_default_route),
    )
    process, fd = await _start_passt(plan)
    servers = request.dns or (str(gateway),)  # passt relays the gateway's port 53 to the host's resolver
    interface = GuestInterface(
        mac=mac_for(address.ip), address=address, mtu=PASST_MTU, gateway=gateway, backend="stream"
    )
    pod = PodNetwork(
        (interface,),
        etc_hosts(hostname, [address.ip], request.extra_hosts),
        resolv_conf(servers, request.dns_search or host_search(host_resolv), request.dns_options),
    )
    pod.fds.append(fd)
    return pod, process


def foreground_mode(request: NetworkRequest, *, default_bridge: bool, passt: bool) -> str:
    """A direct run's network (pure): Docker's `bridge` (the default unless
    HYPER_BRIDGE=none), served in user mode by a passt of the run's own, or
    `none` (loopback only; also the default where passt is not installed).
    Other networks, aliases and fixed addresses need hyperd: refused."""
    mode = request.mode or (DEFAULT_NETWORK if default_bridge else NO_NETWORK)
    if not request.mode and not request.ports and not passt:
        mode = NO_NETWORK  # no passt to serve the default network: loopback, as before
    if mode == NO_NETWORK:
        if request.ports:
            raise InvalidArgument(
                "a port cannot be published from a container without a network",
                hint="drop -p, or --network none (HYPER_BRIDGE=none also means none)",
            )
        return mode
    if mode != DEFAULT_NETWORK:
        raise InvalidArgument(
            f"--network {mode} needs hyperd: a direct run has the default network only",
            hint=THROUGH_HYPERD,
        )
    for flag, given in (("--network-alias", request.aliases), ("--ip", request.ip)):
        if given:
            raise InvalidArgument(
                f"{flag} needs a user-defined network, which only hyperd's containers join",
                hint=THROUGH_HYPERD,
            )
    if not passt:
        raise FailedPrecondition(
            "a direct run's network needs passt, which is not installed",
            hint="install Debian's passt, or run with --network none",
        )
    return mode


async def foreground_network(
    request: NetworkRequest, *, hostname: str, run_dir: Path, name: str, default_bridge: bool
) -> tuple[PodNetwork, PasstProcess | None]:
    """A direct run's network (see foreground_mode): its passt's pid file
    and log in the run's directory. A taken port is an error before the VM boots."""
    host_resolv = read_resolv_conf()
    mode = foreground_mode(request, default_bridge=default_bridge, passt=find_passt() is not None)
    if mode == NO_NETWORK:
        files = etc_hosts(hostname, (), request.extra_hosts), own_resolvers(host_resolv, request)
        return no_network(*files), None
    ports = await asyncio.to_thread(choose_ports, request.ports)
    subnet = choose_subnet(await asyncio.to_thread(links.host_routes))
    gateway = subnet.network_address + 1
    return await start_user_network(
        address=IPv4Interface(f"{gateway + 1}/{subnet.prefixlen}"),
        gateway=gateway,
        hostname=hostname,
        request=request,
        ports=ports,
        passt_dir=run_dir,
        name=name,
        host_resolv=host_resolv,
    )


def read_resolv_conf() -> str:
    try:
        return RESOLV_CONF.read_text()
    except OSError:
        return ""


def host_search(text: str) -> list[str]:
    """The search domains of the host's resolv.conf."""
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["search"]:
            return words[1:]
    return []


def own_resolvers(host_resolv: str, request: NetworkRequest) -> str:
    """resolv.conf of a pod without a network: --dns, or the host's that a VM could reach."""
    servers = request.dns or tuple(s for s in dns.host_resolvers(host_resolv) if not _loopback(s))
    return resolv_conf(servers, request.dns_search or host_search(host_resolv), request.dns_options)


def _loopback(address: str) -> bool:
    try:
        return ip_address(address).is_loopback
    except ValueError:
        return False


async def _start_passt(plan: PasstPlan) -> tuple[PasstProcess, int]:
    """PasstProcess.start in a thread; a caller cancelled meanwhile leaves no passt."""
    starting = asyncio.ensure_future(asyncio.to_thread(PasstProcess.start, plan))
    try:
        return await asyncio.shield(starting)
    except BaseException:
        if starting.done():
            _stop_started(starting)  # started as the caller was cancelled (nothing if it failed)
        else:
            starting.add_done_callback(_stop_started)
        raise


def _stop_started(future: asyncio.Future[tuple[PasstProcess, int]]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    process, fd = future.result()
    os.close(fd)  # passt quits when its peer closes; stop() makes sure
    process.stop()
