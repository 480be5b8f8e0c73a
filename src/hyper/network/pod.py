"""What a pod's VM gets from the network: its NICs, the descriptors behind them,
and what the guest agent configures. The runtime's one view of networking.

`PodNetwork` is handed to the runtime when a pod's VM is about to start. The
runtime puts `nics` in the VM's spec, passes `fds` to QEMU, then sends
`guest_request` in the agent's `setup`; it never asks how the NICs were
made. That is the narrow seam a CNI backend (a tap in a pod network
namespace a kubelet's plugins made, joined by a tc redirect) plugs into.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from hyper.vm.driver import NicSpec

# The MAC of a NIC that is connected to nothing (a VM template's, --network
# none): locally administered, never on any bridge.
UNCONNECTED_MAC = "02:48:59:50:45:52"


@dataclass(frozen=True)
class GuestInterface:
    """One NIC as the guest configures it."""

    mac: str
    address: IPv4Interface
    mtu: int
    gateway: IPv4Address | None = None  # the default route's, on one interface at most
    backend: str = "tap"


@dataclass
class PodNetwork:
    """A pod's network for one run of its VM; owns the NICs' host-side descriptors."""

    interfaces: tuple[GuestInterface, ...]
    hosts: str
    resolv_conf: str
    fds: list[int] = field(default_factory=list)

    @property
    def nics(self) -> tuple[NicSpec, ...]:
        """The VM's devices; a pod with no network still has the one every
        template has, connected to nothing, which the agent removes."""
        if not self.interfaces:
            return (NicSpec(UNCONNECTED_MAC, "none"),)
        return tuple(NicSpec(i.mac, i.backend) for i in self.interfaces)

    def guest_request(self, device_macs: Sequence[str], *, resumed: bool = False) -> dict[str, Any]:
        """The `network` of the agent's setup, for NICs that QEMU created with
        `device_macs` (a VM resumed from a template has the template's). In a
        resumed VM the driver of a NIC on a tap negotiates again, for the
        offloads its template's NIC could not have (hyper.agent.guest_net)."""
        if not self.interfaces:
            return {"interfaces": [], "unused": list(device_macs)}
        return {
            "interfaces": [
                {
                    "device_mac": device_mac,
                    "mac": interface.mac,
                    "address": str(interface.address),
                    "mtu": interface.mtu,
                    "gateway": str(interface.gateway) if interface.gateway else None,
                    "renegotiate": resumed and interface.backend == "tap",
                }
                for device_mac, interface in zip(device_macs, self.interfaces, strict=True)
            ],
            "unused": [],
        }

    def close(self) -> None:
        """Drop this process's hold of the NICs (QEMU holds its own copies). Idempotent."""
        while self.fds:
            with contextlib.suppress(OSError):
                os.close(self.fds.pop())


def no_network(hosts: str, resolv_conf: str) -> PodNetwork:
    """Loopback only (`--network none`, and a foreground run)."""
    return PodNetwork((), hosts, resolv_conf)
