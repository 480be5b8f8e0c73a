"""Docker Engine API: networks (/networks), and the network parts of containers.

The handlers are thin: hyper.network.manager does the work. The pure
functions here turn Hyper's networks, endpoints and published ports into
Docker's JSON (a network, a container's NetworkSettings, the Ports of
`docker ps`) and Docker's create body into RunOptions' textual fields.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from hyper.api.docker.common import (
    daemon_of,
    filters,
    find_container,
    json_body,
    parse_time,
    rfc3339,
    scope_of,
    tenants_of,
    visible_pods,
)
from hyper.api.docker.labels import label_matches
from hyper.api.docker.system import check_prune_filters
from hyper.daemon.events import network_event
from hyper.errors import InvalidArgument
from hyper.network.manager import NetworkManager
from hyper.network.model import (
    BRIDGE_NAME_OPTION,
    DEFAULT_NETWORK,
    MTU_OPTION,
    NO_NETWORK,
    Endpoint,
    Network,
    Publication,
    parse_port_key,
    parse_publish,
)
from hyper.tenants.quotas import Claim

# -- the create body's network fields ----------------------------------------------------


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{what} must be a list of strings")
    return tuple(value)


def _publish_texts(bindings: Any) -> tuple[str, ...]:
    """HostConfig.PortBindings ({"80/tcp": [{"HostIp", "HostPort"}]}) as -p texts."""
    if not bindings:
        return ()
    if not isinstance(bindings, dict):
        raise InvalidArgument("HostConfig.PortBindings must be an object")
    texts = []
    for key, entries in bindings.items():
        port, protocol = parse_port_key(str(key))
        for entry in entries or [{}]:
            if not isinstance(entry, dict):
                raise InvalidArgument(f"HostConfig.PortBindings[{key!r}] must be a list of objects")
            host_ip = str(entry.get("HostIp") or "")
            host_port = str(entry.get("HostPort") or "")
            texts.append(
                f"{host_ip}:{host_port}:{port}/{protocol}" if host_ip else f"{host_port}:{port}/{protocol}"
            )
    return tuple(texts)


def run_option_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The RunOptions network fields of POST /containers/create's body."""
    host = body.get("HostConfig") or {}
    mode = host.get("NetworkMode") or ""
    if not isinstance(mode, str):
        raise InvalidArgument("HostConfig.NetworkMode must be a string")
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    if not isinstance(endpoints, dict):
        raise InvalidArgument("NetworkingConfig.EndpointsConfig must be an object")
    if len(endpoints) > 1:
        raise InvalidArgument(
            "a container is created on one network", hint="connect it to the others before it starts"
        )
    aliases: tuple[str, ...] = ()
    ip = None
    for name, given in endpoints.items():
        if mode in ("", "default"):
            mode = name
        endpoint = given or {}
        if not isinstance(endpoint, dict):
            raise InvalidArgument(f"NetworkingConfig.EndpointsConfig.{name} must be an object")
        aliases = _strings(endpoint.get("Aliases"), "Aliases")
        ipam = endpoint.get("IPAMConfig") or {}
        ip = (ipam.get("IPv4Address") if isinstance(ipam, dict) else None) or None
        if isinstance(ipam, dict) and ipam.get("LinkLocalIPs"):
            raise InvalidArgument("--link-local-ip is not supported", hint="leave it out")
        if isinstance(ipam, dict) and ipam.get("IPv6Address"):
            raise InvalidArgument("IPv6 addresses are not supported", hint="leave out --ip6")
        if endpoint.get("Links"):
            raise InvalidArgument("--link is not supported", hint="use a user-defined network and its names")
    if body.get("NetworkDisabled"):
        mode = NO_NETWORK
    exposed = body.get("ExposedPorts") or {}
    if not isinstance(exposed, dict):
        raise InvalidArgument("ExposedPorts must be an object")
    for key in exposed:
        parse_port_key(str(key))
    return {
        "network": "" if mode == "default" else mode,
        "network_aliases": aliases,
        "ip": ip,
        "publish": _publish_texts(host.get("PortBindings")),
        "publish_all": bool(host.get("PublishAllPorts")),
        "expose": tuple(str(k) for k in exposed),
        "dns": _strings(host.get("Dns"), "HostConfig.Dns"),
        "dns_search": _strings(host.get("DnsSearch"), "HostConfig.DnsSearch"),
        "dns_options": _strings(host.get("DnsOptions"), "HostConfig.DnsOptions"),
        "extra_hosts": _strings(host.get("ExtraHosts"), "HostConfig.ExtraHosts"),
    }


# -- Docker's JSON ------------------------------------------------------------------------


def network_document(network: Network, endpoints: list[Endpoint], names: dict[str, str]) -> dict[str, Any]:
    return {
        "Name": network.name,
        "Id": network.id,
        "Created": rfc3339(network.created),
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": False,
        "IPAM": {
            "Driver": "default",
            "Options": None,
            "Config": [{"Subnet": str(network.subnet), "Gateway": str(network.gateway)}],
        },
        "Internal": network.internal,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {
            e.container_id: {
                "Name": names.get(e.container_id, e.container_id[:12]),
                "EndpointID": _endpoint_id(e),
                "MacAddress": e.mac,
                "IPv4Address": f"{e.ip}/{network.subnet.prefixlen}",
                "IPv6Address": "",
            }
            for e in endpoints
        },
        "Options": {
            BRIDGE_NAME_OPTION: network.bridge,
            **({MTU_OPTION: str(network.mtu)} if network.mtu else {}),
        },
        "Labels": dict(network.labels),
    }


def _endpoint_id(endpoint: Endpoint) -> str:
    return (endpoint.container_id[:32] + endpoint.network_id[:32])[:64]


def ports_document(publications: list[Publication], exposed: tuple[str, ...]) -> dict[str, Any]:
    """NetworkSettings.Ports: each published port's bindings; exposed ones null."""
    ports: dict[str, Any] = {}
    for key in exposed:
        port, protocol = parse_port_key(key)
        ports[f"{port}/{protocol}"] = None
    for item in publications:
        ports.setdefault(item.port.key, None)
        ports[item.port.key] = [
            *(ports[item.port.key] or []),
            {"HostIp": item.port.host_ip or "0.0.0.0", "HostPort": str(item.port.host_port)},
        ]
    return ports


def container_network(manager: NetworkManager, container_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """The inspect fields about the container's network: HostConfig's and NetworkSettings."""
    attachments = manager.attachments(container_id)
    endpoints = {e.network_id: e for e in manager.container_endpoints(container_id)}
    publications = manager.publications(container_id)
    networks: dict[str, Any] = {}
    top = {"IPAddress": "", "IPPrefixLen": 0, "Gateway": "", "MacAddress": "", "EndpointID": ""}
    for network, attachment in attachments:
        endpoint = endpoints.get(network.id)
        entry = {
            "IPAMConfig": {"IPv4Address": str(attachment.ip)} if attachment.ip else None,
            "Links": None,
            "Aliases": list(attachment.aliases) or None,
            "NetworkID": network.id,
            "EndpointID": _endpoint_id(endpoint) if endpoint else "",
            "Gateway": str(network.gateway) if endpoint else "",
            "IPAddress": str(endpoint.ip) if endpoint else "",
            "IPPrefixLen": network.subnet.prefixlen if endpoint else 0,
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "MacAddress": endpoint.mac if endpoint else "",
            "DriverOpts": None,
        }
        networks[network.name] = entry
        if network.name == DEFAULT_NETWORK:  # Docker fills the top level for the default bridge only
            top = {key: entry[key] for key in top}
    mode = options.get("network") or (attachments[0][0].name if attachments else NO_NETWORK)
    joined = mode.startswith("container:")  # in another's VM: its network (hyper.daemon.members)
    if not attachments and mode != NO_NETWORK and not joined:
        mode = NO_NETWORK
    if joined:
        networks = {}
    elif mode == NO_NETWORK:
        networks = {
            NO_NETWORK: {"NetworkID": "", "EndpointID": "", "IPAddress": "", "Gateway": "", "MacAddress": ""}
        }
    port_bindings: dict[str, list[dict[str, str]]] = {}
    for text in options.get("publish") or ():
        for spec in parse_publish(str(text)):
            port_bindings.setdefault(spec.key, []).append(
                {"HostIp": spec.host_ip, "HostPort": str(spec.host_port) if spec.host_port else ""}
            )
    return {
        "host_config": {
            "NetworkMode": mode,
            "PortBindings": port_bindings,
            "PublishAllPorts": bool(options.get("publish_all")),
            "Dns": list(options.get("dns") or []),
            "DnsSearch": list(options.get("dns_search") or []),
            "DnsOptions": list(options.get("dns_options") or []),
            "ExtraHosts": list(options.get("extra_hosts") or []) or None,
        },
        "settings": {
            "Bridge": "",
            "SandboxID": "",
            "HairpinMode": False,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "Ports": ports_document(publications, tuple(options.get("expose") or ())),
            "SandboxKey": "",
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "IPv6Gateway": "",
            **top,
            "Networks": networks,
        },
    }


def summary_ports(publications: list[Publication]) -> list[dict[str, Any]]:
    """GET /containers/json's Ports."""
    return [
        {
            "IP": p.port.host_ip or "0.0.0.0",
            "PrivatePort": p.port.container_port,
            "PublicPort": p.port.host_port,
            "Type": p.port.protocol,
        }
        for p in publications
    ]


# -- handlers -------------------------------------------------------------------------------


def _names(request: web.Request) -> dict[str, str]:
    return {pod.id: pod.record.name for pod in visible_pods(request)}


def _matches(network: Network, wanted: dict[str, list[str]], used: bool) -> bool:
    for key, values in wanted.items():
        if key == "name":
            ok = any(v in network.name for v in values)
        elif key == "id":
            ok = any(network.id.startswith(v) for v in values)
        elif key == "label":
            ok = all(label_matches(dict(network.labels), v) for v in values)
        elif key == "driver":
            ok = "bridge" in values
        elif key == "type":
            ok = ("builtin" if network.is_default else "custom") in values
        elif key == "dangling":
            ok = any((v in ("true", "1")) == (not used and not network.is_default) for v in values)
        elif key == "scope":
            ok = "local" in values
        else:
            raise InvalidArgument(
                f"invalid filter {key!r}",
                hint="networks filter by name, id, label, driver, type, dangling, scope",
            )
        if not ok:
            return False
    return True


async def list_networks(request: web.Request) -> web.StreamResponse:
    manager = daemon_of(request).network
    wanted = filters(request)
    names = _names(request)
    documents = []
    for network in manager.networks(scope_of(request).owner):
        used = bool(manager.store.attached_containers(network.id))
        if _matches(network, wanted, used):
            documents.append(network_document(network, manager.endpoints(network), names))
    return web.json_response(documents)


async def inspect_network(request: web.Request) -> web.StreamResponse:
    manager = daemon_of(request).network
    network = manager.find(request.match_info["id"], scope_of(request).owner)
    return web.json_response(network_document(network, manager.endpoints(network), _names(request)))


async def create_network(request: web.Request) -> web.StreamResponse:
    manager = daemon_of(request).network
    body = await json_body(request)
    name = body.get("Name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument("the network has no Name", hint="give it a name")
    if body.get("EnableIPv6"):
        raise InvalidArgument("IPv6 networks are not supported", hint="leave out --ipv6")
    ipam = body.get("IPAM") or {}
    configs = ipam.get("Config") or [] if isinstance(ipam, dict) else []
    if not isinstance(configs, list) or len(configs) > 1:
        raise InvalidArgument("a network takes one IPAM config (one --subnet)")
    config = configs[0] if configs else {}
    if not isinstance(config, dict):
        raise InvalidArgument("IPAM.Config entries must be objects")
    if config.get("IPRange") or config.get("AuxiliaryAddresses"):
        raise InvalidArgument(
            "--ip-range and --aux-address are not supported", hint="give --subnet and --gateway"
        )
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("Labels must map names to strings")
    options = body.get("Options") or {}
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise InvalidArgument("Options must map names to strings")
    scope, tenants = scope_of(request), tenants_of(request)
    if tenants is not None and not scope.is_admin:
        await manager.ensure_default(scope.creator)  # its `bridge` is taken, as Docker's is
    async with tenants.admitted(scope, Claim(networks=1)) if tenants else contextlib.nullcontext():
        network = await manager.create(
            name,
            subnet=config.get("Subnet") or None,
            gateway=config.get("Gateway") or None,
            internal=bool(body.get("Internal")),
            labels=labels,
            driver=str(body.get("Driver") or "bridge"),
            options=options,
            owner=scope.creator,
        )
    _publish(request, "create", network)
    return web.json_response({"Id": network.id, "Warning": ""}, status=201)


def _publish(request: web.Request, action: str, network: Network, **attributes: str) -> None:
    """Docker's network event, its owner's (a tenant sees only its own networks' events)."""
    event = network_event(action, network.id, network.name, network.owner, **attributes)
    daemon_of(request).events.publish(event)


async def remove_network(request: web.Request) -> web.StreamResponse:
    removed = await daemon_of(request).network.remove(request.match_info["id"], scope_of(request).owner)
    _publish(request, "destroy", removed)
    return web.Response(status=204)


async def prune_networks(request: web.Request) -> web.StreamResponse:
    manager = daemon_of(request).network
    wanted = filters(request)
    check_prune_filters("networks", wanted)
    until = [parse_time(v) for v in wanted.get("until", [])]

    def keep(network: Network) -> bool:
        labels = dict(network.labels)
        return (
            not all(label_matches(labels, v) for v in wanted.get("label", []))
            or any(label_matches(labels, v) for v in wanted.get("label!", []))
            or any(t is not None and network.created >= t for t in until)
        )

    removed = await manager.prune(keep=keep, owner=scope_of(request).creator)
    for network in removed:
        _publish(request, "destroy", network)
    return web.json_response({"NetworksDeleted": [n.name for n in removed]})


async def connect(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    body = await json_body(request)
    scope = scope_of(request)
    pod = find_container(daemon, str(body.get("Container") or ""), scope)
    endpoint = body.get("EndpointConfig") or {}
    ipam = endpoint.get("IPAMConfig") or {}
    network = await daemon.network.connect(
        pod.id,
        request.match_info["id"],
        aliases=_strings(endpoint.get("Aliases"), "Aliases"),
        ip=ipam.get("IPv4Address") or None,
        running=pod.running,
        owner=scope.owner,
    )
    _publish(request, "connect", network, container=pod.id)
    return web.Response(status=200)


async def disconnect(request: web.Request) -> web.StreamResponse:
    daemon = daemon_of(request)
    body = await json_body(request)
    scope = scope_of(request)
    pod = find_container(daemon, str(body.get("Container") or ""), scope)
    network = await daemon.network.disconnect(
        pod.id, request.match_info["id"], running=pod.running, owner=scope.owner
    )
    _publish(request, "disconnect", network, container=pod.id)
    return web.Response(status=200)


ROUTES = [
    ("GET", "/networks", list_networks),
    ("GET", "/networks/{id}", inspect_network),
    ("POST", "/networks/create", create_network),
    ("DELETE", "/networks/{id}", remove_network),
    ("POST", "/networks/prune", prune_networks),
    ("POST", "/networks/{id}/connect", connect),
    ("POST", "/networks/{id}/disconnect", disconnect),
]
