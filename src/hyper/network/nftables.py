"""Hyper's nftables rules: one table of its own, written whole through `nft -j`.

Everything Hyper needs from netfilter lives in the table `inet hyper` and
nowhere else; no rule of anyone else's is read, flushed or rewritten. The
table's whole content is a pure function of the active networks and the
published ports (`ruleset`), and `apply` replaces it in one atomic nft
transaction (add, delete and re-add the table with its chains and rules),
so a crash never leaves half a change and two writers cannot interleave.
With no active network the table is deleted. Input and output are nft's JSON
(`nft -j`), never its text.

Per network (bridge B, subnet S, gateway G):
- outbound NAT: `ip saddr S oifname != B masquerade` (not for --internal);
- isolation: traffic from B to any other Hyper bridge is dropped, so two
  networks cannot reach each other, and so is traffic from B to the host's
  address on another network (its gateway, where that network's resolver
  answers): a pod reaches no other network's host side either, which keeps
  tenants apart; an internal network's traffic may not leave B at all, and
  reaches the host only for DNS on G;
- published ports reached from the host itself through 127.0.0.1 (DNAT in
  the output hook; the kernel routes 127/8 out of B because B has
  route_localnet) get their source rewritten to G: `oifname B ip saddr
  127.0.0.0/8 masquerade`; a pod reaching a published port of a pod on its
  own bridge (hairpin) is masqueraded the same way, so replies come back
  through the host.

Published ports are DNAT rules in the prerouting and output hooks, for
packets to a local address (`fib daddr type local`, Docker's "0.0.0.0") or to
the one address given. DNAT rather than a user-space proxy: the kernel
forwards at full speed, the container sees the client's real address, and
the rules keep working while hyperd restarts. hyperd still binds each
published host port (hyper.network.ports) so that the port is refused to
other programs, and a taken one is an error before the VM boots.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hyper.errors import FailedPrecondition, Unavailable
from hyper.network.model import Network, Publication

TABLE = "hyper"
FAMILY = "inet"
NFT = "nft"
COMMENT_PREFIX = "hyper:"

Rule = list[dict[str, Any]]


@dataclass(frozen=True)
class ActiveNetwork:
    network: Network
    bridge: str


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _prefix(network: Any) -> dict[str, Any]:
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def _names(names: Sequence[str]) -> Any:
    return names[0] if len(names) == 1 else {"set": list(names)}


def _chain(name: str, kind: str | None = None, hook: str | None = None, prio: int = 0) -> dict[str, Any]:
    chain: dict[str, Any] = {"family": FAMILY, "table": TABLE, "name": name}
    if kind is not None:
        chain.update({"type": kind, "hook": hook, "prio": prio, "policy": "accept"})
    return {"add": {"chain": chain}}


def _rule(chain: str, expr: Rule, comment: str) -> dict[str, Any]:
    return {
        "add": {
            "rule": {
                "family": FAMILY,
                "table": TABLE,
                "chain": chain,
                "expr": expr,
                "comment": COMMENT_PREFIX + comment,
            }
        }
    }


def network_rules(
    active: ActiveNetwork, others: Sequence[str], other_gateways: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The rules one network needs; `others` are the other Hyper bridges and
    `other_gateways` the host's addresses on them."""
    net, bridge = active.network, active.bridge
    tag = f"net:{net.id[:12]}"
    rules = []
    if others:
        rules.append(
            _rule(
                "forward",
                [_match(_meta("iifname"), bridge), _match(_meta("oifname"), _names(others)), {"drop": None}],
                tag,
            )
        )
    if other_gateways:
        rules.append(
            _rule(
                "input",
                [
                    _match(_meta("iifname"), bridge),
                    _match(_payload("ip", "daddr"), _names(other_gateways)),
                    {"drop": None},
                ],
                tag,
            )
        )
    if net.internal:
        rules += [
            _rule(
                "forward",
                [_match(_meta("iifname"), bridge), _match(_meta("oifname"), bridge, "!="), {"drop": None}],
                tag,
            ),
            _rule(
                "forward",
                [_match(_meta("oifname"), bridge), _match(_meta("iifname"), bridge, "!="), {"drop": None}],
                tag,
            ),
            _rule(
                "input",
                [
                    _match(_meta("iifname"), bridge),
                    _match(_payload("ip", "daddr"), str(net.gateway)),
                    _match(_meta("l4proto"), {"set": ["tcp", "udp"]}),
                    _match(_payload("th", "dport"), 53),
                    {"accept": None},
                ],
                tag,
            ),
            _rule("input", [_match(_meta("iifname"), bridge), {"drop": None}], tag),
        ]
    else:
        rules.append(
            _rule(
                "postrouting",
                [
                    _match(_payload("ip", "saddr"), _prefix(net.subnet)),
                    _match(_meta("oifname"), bridge, "!="),
                    {"masquerade": None},
                ],
                tag,
            )
        )
    rules += [
        _rule(
            "postrouting",
            [
                _match(_meta("oifname"), bridge),
                _match(_payload("ip", "saddr"), {"prefix": {"addr": "127.0.0.0", "len": 8}}),
                {"masquerade": None},
            ],
            tag,
        ),
        _rule(
            "postrouting",
            [
                _match(_meta("iifname"), bridge),
                _match(_meta("oifname"), bridge),
                _match({"ct": {"key": "status"}}, "dnat", "in"),
                {"masquerade": None},
            ],
            tag,
        ),
    ]
    return rules


def port_rule(publication: Publication) -> dict[str, Any]:
    port = publication.port
    destination = (
        _match(_payload("ip", "daddr"), port.host_ip)
        if port.host_ip
        else _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    )
    return _rule(
        "ports",
        [
            _match(_meta("nfproto"), "ipv4"),
            destination,
            _match(_meta("l4proto"), port.protocol),
            _match(_payload("th", "dport"), port.host_port),
            {"dnat": {"family": "ip", "addr": str(publication.container_ip), "port": port.container_port}},
        ],
        f"pod:{publication.container_id[:12]}",
    )


def ruleset(active: Sequence[ActiveNetwork], publications: Iterable[Publication]) -> list[dict[str, Any]]:
    """The commands that make Hyper's table exactly what `active` and `publications` need.

    Always starts by deleting the table (after adding it, so that the delete
    cannot fail), so the result replaces whatever the table held."""
    commands: list[dict[str, Any]] = [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
    ]
    if not active:
        return commands
    bridges = [a.bridge for a in active]
    commands += [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        _chain("prerouting", "nat", "prerouting", -100),
        _chain("output", "nat", "output", -100),
        _chain("postrouting", "nat", "postrouting", 100),
        _chain("forward", "filter", "forward", 0),
        _chain("input", "filter", "input", 0),
        _chain("ports"),
        _rule(
            "prerouting",
            [_match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"), {"jump": {"target": "ports"}}],
            "ports",
        ),
        _rule(
            "output",
            [_match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"), {"jump": {"target": "ports"}}],
            "ports",
        ),
    ]
    for item in active:
        gateways = [str(a.network.gateway) for a in active if a.bridge != item.bridge]
        commands += network_rules(item, [b for b in bridges if b != item.bridge], gateways)
    known = {a.network.id for a in active}
    commands += [port_rule(p) for p in publications if p.network_id in known]
    return commands


def document(commands: list[dict[str, Any]]) -> str:
    return json.dumps({"nftables": commands}, separators=(",", ":"))


def apply(commands: list[dict[str, Any]], binary: str = NFT) -> None:
    """Run one nft transaction (blocking: call it from a thread)."""
    try:
        result = subprocess.run(
            [binary, "-j", "-f", "-"], input=document(commands), capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise FailedPrecondition(
            "nft is not installed: networks need nftables", hint="install Debian's nftables package"
        ) from None
    if result.returncode != 0:
        raise Unavailable(f"nftables refused Hyper's rules: {result.stderr.strip()[:500]}")


def list_table(binary: str = NFT) -> list[dict[str, Any]] | None:
    """Hyper's table as nft's JSON objects, or None when there is none (blocking)."""
    try:
        result = subprocess.run(
            [binary, "-j", "list", "table", FAMILY, TABLE], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return None
    if result.returncode != 0:
        return None
    items: list[dict[str, Any]] = json.loads(result.stdout).get("nftables", [])
    return items


def count_rules(items: list[dict[str, Any]] | None) -> int:
    return sum(1 for item in items or [] if "rule" in item)
