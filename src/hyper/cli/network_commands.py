"""`hyper network create|ls|inspect|rm|prune|connect|disconnect` and `hyper port`.

They speak the Docker API's /networks that hyperd serves under `/docker`
(hyper.api.docker.networks), and print what docker prints.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from hyper.cli.container_commands import connect_daemon, format_columns, parse_labels
from hyper.cli.context import CliContext
from hyper.errors import HyperError, InvalidArgument

SHORT = 12


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    network = subparsers.add_parser("network", help="manage networks")
    commands = network.add_subparsers(dest="network_command", metavar="COMMAND")
    network.set_defaults(func=lambda args, ctx: _usage(network))

    create = commands.add_parser("create", help="create a network")
    create.add_argument("--subnet", metavar="CIDR", help="e.g. 10.20.0.0/24 (default: a free one)")
    create.add_argument("--gateway", metavar="IP", help="the host's address on it (default: the first)")
    create.add_argument("--internal", action="store_true", help="no access to or from outside the network")
    create.add_argument("-d", "--driver", default="bridge", help="bridge (the only one)")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument(
        "-o", "--opt", action="append", default=[], metavar="KEY=VALUE", help="the driver's option: MTU"
    )
    create.add_argument("name", metavar="NETWORK")
    create.set_defaults(func=create_command)

    ls = commands.add_parser("ls", help="list networks")
    ls.add_argument("-q", "--quiet", action="store_true", help="only IDs")
    ls.add_argument("--no-trunc", action="store_true")
    ls.set_defaults(func=ls_command)

    inspect = commands.add_parser("inspect", help="show networks as JSON")
    inspect.add_argument("networks", nargs="+", metavar="NETWORK")
    inspect.set_defaults(func=inspect_command)

    rm = commands.add_parser("rm", help="remove networks")
    rm.add_argument("networks", nargs="+", metavar="NETWORK")
    rm.set_defaults(func=rm_command)

    prune = commands.add_parser("prune", help="remove networks no container uses")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask (Hyper never asks)")
    prune.set_defaults(func=prune_command)

    for verb in ("connect", "disconnect"):
        sub = commands.add_parser(verb, help=f"{verb} a stopped container to or from a network")
        if verb == "connect":
            sub.add_argument("--alias", action="append", default=[], metavar="NAME")
            sub.add_argument("--ip", metavar="IP")
        sub.add_argument("network", metavar="NETWORK")
        sub.add_argument("container", metavar="CONTAINER")
        sub.set_defaults(func=connect_command, verb=verb)

    port = subparsers.add_parser("port", help="list a container's published ports")
    port.add_argument("container", metavar="CONTAINER")
    port.add_argument("private", nargs="?", metavar="PRIVATE_PORT[/PROTO]")
    port.set_defaults(func=port_command)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


def _path(ref: str, *rest: str) -> str:
    return "/docker/networks/" + "/".join([quote(ref, safe=""), *rest])


def create_command(args: argparse.Namespace, ctx: CliContext) -> int:
    body: dict[str, Any] = {
        "Name": args.name,
        "Driver": args.driver,
        "Internal": args.internal,
        "Labels": parse_labels(args.label),
        "Options": parse_labels(args.opt),
    }
    if args.subnet or args.gateway:
        body["IPAM"] = {"Config": [{"Subnet": args.subnet or "", "Gateway": args.gateway or ""}]}
    with connect_daemon(ctx) as client:
        answer = client.docker_document("POST", "/docker/networks/create", json=body)
    print(answer["Id"], file=ctx.stdout)
    return 0


def network_rows(networks: list[Mapping[str, Any]], *, no_trunc: bool = False) -> list[list[str]]:
    return [
        [n["Id"] if no_trunc else n["Id"][:SHORT], n["Name"], n["Driver"], n["Scope"]]
        for n in sorted(networks, key=lambda n: str(n["Name"]))
    ]


def ls_command(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        networks = client.docker_document("GET", "/docker/networks")
    rows = network_rows(networks, no_trunc=args.no_trunc)
    if args.quiet:
        for row in rows:
            print(row[0], file=ctx.stdout)
        return 0
    print(format_columns([["NETWORK ID", "NAME", "DRIVER", "SCOPE"], *rows]), file=ctx.stdout)
    return 0


def inspect_command(args: argparse.Namespace, ctx: CliContext) -> int:
    documents, failed = [], False
    with connect_daemon(ctx) as client:
        for ref in args.networks:
            try:
                documents.append(client.docker_document("GET", _path(ref)))
            except HyperError as exc:
                print(f"hyper: {exc}", file=ctx.stderr)
                failed = True
    print(json.dumps(documents, indent=4), file=ctx.stdout)
    return 1 if failed else 0


def rm_command(args: argparse.Namespace, ctx: CliContext) -> int:
    failed = False
    with connect_daemon(ctx) as client:
        for ref in args.networks:
            try:
                client.docker_document("DELETE", _path(ref))
                print(ref, file=ctx.stdout)
            except HyperError as exc:
                print(f"hyper: {exc}", file=ctx.stderr)
                failed = True
    return 1 if failed else 0


def prune_command(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        answer = client.docker_document("POST", "/docker/networks/prune")
    removed = answer.get("NetworksDeleted") or []
    if removed:
        print("Deleted Networks:", file=ctx.stdout)
        for name in removed:
            print(name, file=ctx.stdout)
    return 0


def connect_command(args: argparse.Namespace, ctx: CliContext) -> int:
    body: dict[str, Any] = {"Container": args.container}
    if args.verb == "connect":
        body["EndpointConfig"] = {
            "Aliases": args.alias,
            "IPAMConfig": {"IPv4Address": args.ip} if args.ip else None,
        }
    with connect_daemon(ctx) as client:
        client.docker_document("POST", _path(args.network, args.verb), json=body)
    return 0


def port_lines(ports: Mapping[str, Any] | None, private: str | None = None) -> list[str]:
    """docker port's lines from NetworkSettings.Ports: `80/tcp -> 0.0.0.0:8080`."""
    wanted = None
    if private:
        number, _, protocol = private.partition("/")
        wanted = f"{number}/{protocol or 'tcp'}"
    lines = []
    for key, bindings in sorted((ports or {}).items()):
        if wanted is not None and key != wanted:
            continue
        for binding in bindings or []:
            address = f"{binding['HostIp']}:{binding['HostPort']}"
            lines.append(address if wanted else f"{key} -> {address}")
    return lines


def port_command(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        details = client.container_details(args.container).document
    settings = details.get("NetworkSettings")
    ports = settings.get("Ports") if isinstance(settings, dict) else None
    lines = port_lines(ports if isinstance(ports, dict) else None, args.private)
    if args.private and not lines:
        raise InvalidArgument(f"no public port {args.private!r} published for {args.container}")
    for line in lines:
        print(line, file=ctx.stdout)
    return 0
