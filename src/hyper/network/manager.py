"""hyperd's networks: records, addresses, bridges, taps, NAT, published ports and DNS.

`NetworkManager` is the one door hyperd's pods and API go through:
- networks: create, list, find, remove, prune (records in SQLite; Docker's
  `bridge` is made at start-up);
- a container's wishes (`configure` at create, `connect`/`disconnect` while
  it is not running, `forget` at removal);
- a pod's VM: `attach` before it boots (addresses from IPAM, host ports held,
  bridges and rules made, taps opened, names served) and `release` after it
  stops; `recover` at hyperd's start for whatever ran meanwhile.

Without root the same records are kept, but a pod's NIC is connected to a
passt of its own instead of a tap on a bridge (hyper.network.passt), which
also forwards its published ports; there are no user-defined networks then.

The kernel's state (bridges, Hyper's nftables table, the resolver's sockets)
is derived from the records by `_sync`, which makes it match exactly: a
network's bridge, rules and resolver exist while a running pod is on it.
Taps are not in it: each lives as long as its QEMU (hyper.network.links).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from hyper.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from hyper.network import dns, links, nftables, usermode
from hyper.network.model import (
    BRIDGE_PREFIX,
    DEFAULT_BRIDGE,
    DEFAULT_NETWORK,
    NO_NETWORK,
    TAP_PREFIX,
    Attachment,
    Endpoint,
    Network,
    Publication,
    check_dns_name,
    check_in_subnet,
    check_network_name,
    choose_subnet,
    etc_hosts,
    mac_for,
    network_options,
    overlapping,
    parse_address,
    parse_subnet,
    resolv_conf,
)
from hyper.network.passt import PasstProcess, find_passt, passt_processes, reap
from hyper.network.pod import GuestInterface, PodNetwork, no_network
from hyper.network.ports import PortReservations
from hyper.network.request import NetworkConfig, NetworkRequest
from hyper.network.store import NetworkStore, PortTaken

log = logging.getLogger("hyper.network")


# Why a running pod's networks are fixed: QEMU's microvm has no PCI bus, and
# its virtio-mmio devices are made at start-up only (hot-adding disks works
# through a virtio-SCSI controller; a NIC has no such bus).
NO_HOTPLUG = "its microvm has no bus to hot-plug a NIC on or off (virtio-mmio devices are fixed at start)"
BRIDGE_MODE = "bridge"
USER_MODE = "user"
NO_MODE = "none"


def mode_reason() -> tuple[str, str]:
    """Which network mode this hyperd can give pods, and why."""
    if os.geteuid() == 0:
        return (
            BRIDGE_MODE,
            "root: a bridge per network, a tap per pod, NAT and published ports with nftables",
        )
    if find_passt() is not None:
        return (
            USER_MODE,
            "not root, so no bridges or nftables: each pod gets user-mode networking from a passt"
            " of its own, which also forwards -p; no user-defined networks",
        )
    return NO_MODE, "not root and passt is not installed: install Debian's passt for user-mode networking"


class NetworkManager:
    def __init__(
        self,
        db_path: Path,
        config: NetworkConfig | None = None,
        *,
        container_name: Callable[[str], str | None] = lambda container_id: None,
        runtime: Path | None = None,
        container_owner: Callable[[str], str] = lambda container_id: "",
    ) -> None:
        self.store = NetworkStore(db_path)
        self.config = config or NetworkConfig()
        self.container_name = container_name
        self.container_owner = container_owner  # whose container it is: errors name only one's own
        self.dns = dns.DnsServer()
        self._reservations: dict[str, PortReservations] = {}
        self._requests: dict[str, NetworkRequest] = {}
        self._lock = asyncio.Lock()
        self.mode = mode_reason()[0]
        self.enabled = self.mode == BRIDGE_MODE  # bridges, taps, nftables and the resolver
        # Without root: each running pod's passt, and where their pid files are.
        self.passt_dir = runtime / "passt" if runtime is not None else None
        self._passt: dict[str, PasstProcess] = {}
        # VMs that join a network made elsewhere (hyper.cri's CNI namespace): for a
        # container ID, what makes its PodNetwork from the hostname, or None.
        self.external: Callable[[str], Callable[[str], Awaitable[PodNetwork]] | None] = lambda _: None

    # -- networks ---------------------------------------------------------------
    async def ensure_default(self, owner: str = "") -> Network | None:
        """Docker's `bridge` network, made at the first start (a tenant's own
        `bridge` at its first need); none when this hyperd has no default bridge
        (HYPER_BRIDGE=none, or not root)."""
        if self.default_mode() == NO_NETWORK:
            return None
        with contextlib.suppress(NotFound):
            return self.store.resolve(DEFAULT_NETWORK, owner)
        subnet = None if owner else self.config.bridge_subnet
        if subnet is None:
            taken = await asyncio.to_thread(self._taken_subnets)
            subnet = choose_subnet(taken, self.config.tenant_candidates()) if owner else choose_subnet(taken)
        network = Network(
            id=secrets.token_hex(32),
            name=DEFAULT_NETWORK,
            subnet=subnet,
            gateway=subnet.network_address + 1,
            created=time.time(),
            owner=owner,
        )
        self.store.insert_network(network)
        return network

    def _taken_subnets(self) -> list[IPv4Network]:
        ours = {n.bridge for n in self.store.networks()}
        routes = links.host_routes() if self.mode != NO_MODE else []
        # Routes through Hyper's own bridges are its networks, counted below.
        return [r for r in routes if not self._route_is_ours(r, ours)] + [
            n.subnet for n in self.store.networks()
        ]

    def _route_is_ours(self, route: IPv4Network, bridges: set[str]) -> bool:
        return any(route == n.subnet for n in self.store.networks() if n.bridge in bridges)

    async def create(
        self,
        name: str,
        *,
        subnet: str | None = None,
        gateway: str | None = None,
        internal: bool = False,
        labels: Mapping[str, str] | None = None,
        driver: str = "bridge",
        options: Mapping[str, str] | None = None,
        owner: str = "",
    ) -> Network:
        check_network_name(name)
        mtu = network_options(options or {})
        if not self.enabled:
            raise FailedPrecondition(
                "user-defined networks need root here (a bridge per network, and nftables)",
                hint="without root each container gets user-mode networking on the default network",
            )
        if driver not in ("bridge", ""):
            raise InvalidArgument(f"Hyper has no network driver {driver!r}", hint="use the bridge driver")
        if name in (NO_NETWORK, "host", "default"):
            raise InvalidArgument(f"{name!r} is a reserved network name", hint="choose another name")
        existing = self.store.networks()
        if any(n.name == name and n.owner == owner for n in existing):
            raise AlreadyExists(f"a network named {name!r} already exists", hint="choose another name")
        if subnet:
            chosen = parse_subnet(subnet)
            clash = overlapping(chosen, existing)
            if clash is not None:
                # Another tenant's network is neither named nor shown.
                whose = f"the subnet {clash.subnet} of network {clash.name}" if clash.owner == owner else ""
                raise InvalidArgument(
                    f"the subnet {chosen} overlaps {whose or 'a subnet in use'}",
                    hint="choose a subnet that no other network uses",
                )
            routes = await asyncio.to_thread(self._taken_subnets)
            route = next(
                (r for r in routes if r.overlaps(chosen) and r not in [n.subnet for n in existing]), None
            )
            if route is not None:
                raise InvalidArgument(
                    f"the subnet {chosen} overlaps the host's route to {route}",
                    hint="choose a subnet the host does not route elsewhere",
                )
        else:
            if gateway:
                raise InvalidArgument("--gateway needs --subnet", hint="give the subnet the gateway is in")
            taken = await asyncio.to_thread(self._taken_subnets)
            chosen = choose_subnet(taken, self.config.tenant_candidates()) if owner else choose_subnet(taken)
        gateway_address = parse_address(gateway, "gateway") if gateway else chosen.network_address + 1
        check_in_subnet(gateway_address, chosen, "gateway")
        network = Network(
            id=secrets.token_hex(32),
            name=name,
            subnet=chosen,
            gateway=gateway_address,
            internal=internal,
            labels=dict(labels or {}),
            created=time.time(),
            mtu=mtu,
            owner=owner,
        )
        self.store.insert_network(network)
        return network

    def networks(self, owner: str | None = None) -> list[Network]:
        """Every network, or `owner`'s (a tenant's; "" the admin's)."""
        return self.store.networks(owner)

    def mtu(self, network: Network) -> int:
        """The MTU of a network's bridge, taps and NICs: its own, else hyperd's."""
        return network.mtu or self.config.mtu

    def find(self, ref: str, owner: str | None = None) -> Network:
        return self.store.resolve(ref, owner)

    def endpoints(self, network: Network) -> list[Endpoint]:
        return self.store.endpoints(network_id=network.id)

    async def remove(self, ref: str, owner: str | None = None) -> Network:
        network = self.store.resolve(ref, owner)
        if network.is_default:
            raise FailedPrecondition(
                "bridge is a pre-defined network and cannot be removed", hint="remove your own networks only"
            )
        users = self.store.attached_containers(network.id)
        if users:
            names = ", ".join(self.container_name(c) or c[:12] for c in users)
            raise FailedPrecondition(
                f"network {network.name} is in use by container(s) {names}",
                hint="remove or disconnect those containers first",
            )
        self.store.delete_network(network.id)
        return network

    async def prune(
        self, keep: Callable[[Network], bool] = lambda n: False, owner: str = ""
    ) -> list[Network]:
        """`owner`'s unused networks (the admin prunes its own, not its tenants')."""
        removed = []
        for network in self.store.networks(owner):
            if network.is_default or keep(network) or self.store.attached_containers(network.id):
                continue
            self.store.delete_network(network.id)
            removed.append(network)
        return removed

    # -- a container's wishes ------------------------------------------------------
    def default_mode(self) -> str:
        """The network of a container that names none: `bridge`, unless this
        hyperd cannot make bridges (not root) or was told not to (HYPER_BRIDGE=none)."""
        return DEFAULT_NETWORK if self.mode != NO_MODE and self.config.default_bridge else NO_NETWORK

    def check_request(self, request: NetworkRequest) -> Network | None:
        """The request's network (None for `none`), every field checked; nothing is written."""
        if not request.mode:
            request = dataclasses.replace(request, mode=self.default_mode())
        if request.mode == "host":
            raise InvalidArgument(
                "the host network mode is not possible in a VM",
                hint="a Hyper container has its own kernel; publish ports with -p instead",
            )
        if request.mode.startswith("container:"):
            raise InvalidArgument(
                "sharing another container's network (--network container:NAME) is not supported",
                hint="put both on one user-defined network and use its names",
            )
        for alias in request.aliases:
            check_dns_name(alias, "network alias")
        for server in request.dns:
            parse_address(server, "--dns server")
        for domain in request.dns_search:
            check_dns_name(domain, "--dns-search domain")
        if request.mode == NO_NETWORK:
            if request.ports:
                raise InvalidArgument(
                    "published ports need a network", hint="leave out --network none, or -p"
                )
            if request.aliases or request.ip:
                raise InvalidArgument("--network none takes no alias or address")
            return None
        try:
            network = self.store.resolve(request.mode, request.owner)
        except NotFound as exc:
            # A bad argument of the create (a 404 would send the docker CLI pulling the image).
            raise InvalidArgument(exc.message, hint="`hyper network ls` lists the networks") from None
        if request.aliases and network.is_default:
            raise InvalidArgument(
                "network aliases work on user-defined networks only, as in Docker",
                hint="create a network with `hyper network create` and use --network",
            )
        if request.ip:
            address = parse_address(request.ip, "--ip address")
            if network.is_default:
                raise InvalidArgument(
                    "a chosen address (--ip) works on user-defined networks only, as in Docker",
                    hint="create a network with --subnet and use --network",
                )
            check_in_subnet(address, network.subnet, "address")
            if address == network.gateway:
                raise InvalidArgument(
                    f"the address {address} is the network's gateway", hint="choose another"
                )
        return network

    def configure(self, container_id: str, request: NetworkRequest) -> None:
        """Record the container's network at create; bad requests write nothing."""
        network = self.check_request(request)
        self._requests[container_id] = request
        if network is None and request.mode in ("", NO_NETWORK):
            self._requests[container_id] = dataclasses.replace(request, mode=NO_NETWORK)
        if network is not None:
            ip = IPv4Address(request.ip) if request.ip else None
            self.store.attach(container_id, Attachment(network.id, request.aliases, ip))

    def remember(self, container_id: str, request: NetworkRequest) -> None:
        """A container found again at hyperd's start: its request (ports, DNS) in memory."""
        self._requests[container_id] = request

    def forget(self, container_id: str) -> None:
        self.store.detach(container_id)
        self._requests.pop(container_id, None)

    async def connect(
        self,
        container_id: str,
        ref: str,
        *,
        aliases: tuple[str, ...] = (),
        ip: str | None = None,
        running: bool,
        owner: str | None = None,
    ) -> Network:
        network = self.store.resolve(ref, owner)
        if running:
            raise FailedPrecondition(
                f"cannot connect a running container to network {network.name}: {NO_HOTPLUG}",
                hint="stop the container, connect it, then start it again",
            )
        request = self._requests.get(container_id, NetworkRequest(mode=NO_NETWORK))
        if request.mode == NO_NETWORK:
            raise FailedPrecondition(
                "the container has --network none", hint="create it on a network to connect it to others"
            )
        wish = dataclasses.replace(request, mode=network.id, aliases=aliases, ip=ip, ports=())
        self.check_request(dataclasses.replace(wish, owner=network.owner))
        self.store.attach(container_id, Attachment(network.id, aliases, IPv4Address(ip) if ip else None))
        return network

    async def disconnect(
        self, container_id: str, ref: str, *, running: bool, owner: str | None = None
    ) -> Network:
        network = self.store.resolve(ref, owner)
        if network.id not in [a.network_id for a in self.store.attachments(container_id)]:
            raise FailedPrecondition(f"the container is not connected to network {network.name}")
        if running:
            raise FailedPrecondition(
                f"cannot disconnect a running container from network {network.name}: {NO_HOTPLUG}",
                hint="stop the container, disconnect it, then start it again",
            )
        self.store.detach(container_id, network.id)
        return network

    def attachments(self, container_id: str) -> list[tuple[Network, Attachment]]:
        by_id = {n.id: n for n in self.store.networks()}
        return [
            (by_id[a.network_id], a) for a in self.store.attachments(container_id) if a.network_id in by_id
        ]

    def publications(self, container_id: str) -> list[Publication]:
        return self.store.publications(container_id)

    def container_endpoints(self, container_id: str) -> list[Endpoint]:
        return self.store.endpoints(container_id=container_id)

    # -- a pod's VM -------------------------------------------------------------
    async def attach(self, container_id: str, hostname: str) -> PodNetwork:
        """Everything the pod's VM needs before it boots. On failure nothing is left."""
        provider = self.external(container_id)
        if provider is not None:  # a network another front end made (the CRI's CNI namespace)
            return await provider(hostname)
        request = self._requests.get(container_id, NetworkRequest(mode=NO_NETWORK))
        host_resolv = usermode.read_resolv_conf()
        attachments = self.attachments(container_id)
        if request.mode == NO_NETWORK or not attachments:
            return no_network(
                etc_hosts(hostname, (), request.extra_hosts), usermode.own_resolvers(host_resolv, request)
            )
        if self.mode == USER_MODE:
            return await self._attach_user(container_id, hostname, request, attachments, host_resolv)
        if not self.enabled:
            raise FailedPrecondition(
                "networks need root here (bridges, taps and nftables), or passt without it",
                hint="run the container with --network none, install Debian's passt, or run hyperd as root",
            )
        async with self._lock:
            reservations = PortReservations()
            pod: PodNetwork | None = None
            try:
                endpoints = [
                    self.store.allocate(container_id, network, attachment.ip, attachment.aliases, mac_for)
                    for network, attachment in attachments
                ]
                primary_network, _ = attachments[0]
                held = await asyncio.to_thread(reservations.hold_all, request.ports)
                address = endpoints[0].ip
                try:
                    self.store.publish(
                        [Publication(container_id, primary_network.id, address, port) for port in held]
                    )
                except PortTaken as exc:
                    if self.container_owner(exc.holder) == request.owner:
                        raise
                    raise AlreadyExists(  # another tenant's container is not named
                        exc.message.partition(" is already")[0] + " is already in use", hint=exc.hint
                    ) from None
                await self._sync(host_resolv)
                interfaces = []
                pod = PodNetwork((), "", "")
                for index, ((network, _), endpoint) in enumerate(zip(attachments, endpoints, strict=True)):
                    name = f"{TAP_PREFIX}{container_id[:10]}{index}"
                    pod.fds.append(
                        await asyncio.to_thread(links.open_tap, name, network.bridge, self.mtu(network))
                    )
                    interfaces.append(
                        GuestInterface(
                            mac=endpoint.mac,
                            address=IPv4Interface(f"{endpoint.ip}/{network.subnet.prefixlen}"),
                            mtu=self.mtu(network),
                            gateway=network.gateway if index == 0 and not network.internal else None,
                        )
                    )
                primary = attachments[0][0]
                pod.interfaces = tuple(interfaces)
                pod.hosts = etc_hosts(hostname, [endpoints[0].ip], request.extra_hosts)
                pod.resolv_conf = self._pod_resolv_conf(primary, request, host_resolv)
            except BaseException:
                if pod is not None:
                    pod.close()
                reservations.close()
                self.store.release(container_id)
                with contextlib.suppress(Exception):
                    await self._sync(host_resolv)
                raise
            self._reservations[container_id] = reservations
            return pod

    async def _attach_user(
        self,
        container_id: str,
        hostname: str,
        request: NetworkRequest,
        attachments: list[tuple[Network, Attachment]],
        host_resolv: str,
    ) -> PodNetwork:
        """Without root: the pod's one NIC on a passt of its own, which forwards
        its published ports. On failure nothing is left."""
        if self.passt_dir is None:
            raise FailedPrecondition("user-mode networking needs hyperd's runtime directory")
        network, attachment = attachments[0]
        try:
            endpoint = self.store.allocate(container_id, network, attachment.ip, attachment.aliases, mac_for)
            ports = await asyncio.to_thread(usermode.choose_ports, request.ports)
            self.store.publish([Publication(container_id, network.id, endpoint.ip, port) for port in ports])
            pod, process = await usermode.start_user_network(
                address=IPv4Interface(f"{endpoint.ip}/{network.subnet.prefixlen}"),
                gateway=network.gateway,
                hostname=hostname,
                request=request,
                ports=ports,
                passt_dir=self.passt_dir,
                name=container_id[:12],
                host_resolv=host_resolv,
            )
        except BaseException:
            self.store.release(container_id)
            raise
        self._passt[container_id] = process
        return pod

    def _pod_resolv_conf(self, network: Network, request: NetworkRequest, host_resolv: str) -> str:
        search = request.dns_search or usermode.host_search(host_resolv)
        if network.is_default and request.dns:
            return resolv_conf(request.dns, search, request.dns_options)
        # hyperd's resolver, on the gateway: names on the network, the rest forwarded.
        return resolv_conf([str(network.gateway)], search, request.dns_options)

    async def release(self, container_id: str) -> None:
        """The pod's VM stopped (or never started): its addresses, ports and names go."""
        reservations = self._reservations.pop(container_id, None)
        if reservations is not None:
            reservations.close()
        passt = self._passt.pop(container_id, None)
        if passt is not None:
            await asyncio.shield(asyncio.to_thread(passt.stop))
        if not self.store.endpoints(container_id=container_id):
            return
        self.store.release(container_id)
        if self.enabled:
            async with self._lock:
                await self._sync(usermode.read_resolv_conf())

    async def recover(self, running: Iterable[str]) -> None:
        """hyperd's start: endpoints of pods that no longer run are freed, the
        ports of those that do are held again, and the kernel made to match."""
        alive = set(running)
        for endpoint in self.store.endpoints():
            if endpoint.container_id not in alive:
                self.store.release(endpoint.container_id)
        for publication in self.store.publications():
            if publication.container_id not in alive:
                self.store.release(publication.container_id)
        if self.passt_dir is not None:
            await asyncio.to_thread(self._recover_passt, alive)
        # As root hyperd holds the published ports; without root each pod's passt does.
        for container_id in alive if self.enabled else ():
            ports = [p.port for p in self.store.publications(container_id)]
            if not ports:
                continue
            reservations = PortReservations()
            try:
                await asyncio.to_thread(reservations.hold_all, ports)
            except Exception as exc:
                log.warning("container %s: cannot hold its published ports again: %s", container_id[:12], exc)
                continue
            self._reservations[container_id] = reservations
        if self.enabled:
            async with self._lock:
                await self._sync(usermode.read_resolv_conf())

    def _recover_passt(self, alive: set[str]) -> None:
        """A running pod's passt is found again by the pid file on its command
        line; every other passt of this hyperd is killed, its files removed."""
        assert self.passt_dir is not None
        by_name = {container_id[:12]: container_id for container_id in alive}
        for name, pid in passt_processes(self.passt_dir).items():
            if name in by_name:
                self._passt[by_name[name]] = PasstProcess(pid, self.passt_dir / f"{name}.pid")
        reaped = reap(self.passt_dir, [c[:12] for c in self._passt])
        if reaped:
            log.warning("stopped %d passt processes of pods that no longer run", len(reaped))

    async def shutdown(self) -> None:
        """hyperd stops: the pods run on, and so do their rules; the resolver and
        the port holds end (the next hyperd takes them again)."""
        for reservations in self._reservations.values():
            reservations.close()
        self._reservations.clear()
        await asyncio.to_thread(self.dns.stop)
        self.store.close()

    # -- the kernel's state ----------------------------------------------------------
    async def _sync(self, host_resolv: str) -> None:
        """Make bridges, Hyper's nftables table and the resolver match the records."""
        networks = {n.id: n for n in self.store.networks()}
        endpoints = self.store.endpoints()
        active_ids = {e.network_id for e in endpoints if e.network_id in networks}
        active = [nftables.ActiveNetwork(networks[i], networks[i].bridge) for i in sorted(active_ids)]
        publications = self.store.publications()
        await asyncio.to_thread(self._apply_kernel_state, active, publications)
        self.dns.update(self._directory(networks, endpoints, host_resolv))
        await asyncio.to_thread(self.dns.listen, [str(a.network.gateway) for a in active])

    def _apply_kernel_state(
        self, active: list[nftables.ActiveNetwork], publications: list[Publication]
    ) -> None:
        for item in active:
            links.ensure_bridge(item.bridge, item.network.gateway_interface, self.mtu(item.network))
        if any(not item.network.internal for item in active):
            links.enable_forwarding()
        if active or nftables.list_table() is not None:
            nftables.apply(nftables.ruleset(active, publications))
        wanted = {item.bridge for item in active}
        for name in links.links_with_prefix(BRIDGE_PREFIX, DEFAULT_BRIDGE, kind="bridge"):
            if name not in wanted:
                links.delete_link(name)

    def _directory(
        self, networks: Mapping[str, Network], endpoints: list[Endpoint], host_resolv: str
    ) -> dns.Directory:
        names: dict[tuple[str, str], tuple[str, ...]] = {}
        reverse: dict[str, str] = {}
        clients: dict[str, dns.Client] = {}
        by_container: dict[str, list[Endpoint]] = {}
        for endpoint in endpoints:
            by_container.setdefault(endpoint.container_id, []).append(endpoint)
        for container_id, owned in by_container.items():
            request = self._requests.get(container_id, NetworkRequest())
            container_name = self.container_name(container_id) or container_id[:12]
            on = [networks[e.network_id] for e in owned if e.network_id in networks]
            for endpoint in owned:
                network = networks.get(endpoint.network_id)
                if network is None:
                    continue
                if not network.is_default:  # Docker's default bridge has no names either
                    for name in {container_name, container_id[:12], *endpoint.aliases}:
                        key = (network.id, name.lower())
                        names[key] = (*names.get(key, ()), str(endpoint.ip))
                    reverse[str(endpoint.ip)] = f"{container_name}.{network.name}"
                clients[str(endpoint.ip)] = dns.Client(
                    container_id=container_id,
                    networks=frozenset(n.id for n in on),
                    upstreams=request.dns,
                    forward=not all(n.internal for n in on),
                )
        return dns.Directory(clients, names, reverse, dns.host_resolvers(host_resolv))
