"""Inside the guest: the pod's network interfaces, configured over rtnetlink.

Standard library only (a raw AF_NETLINK socket and struct), no `ip` binary
in the appliance. The host sends what each interface gets in the `setup`
request: the MAC (a VM resumed from a template still has the template's, so
the NIC is found by the address QEMU gave it), the MTU, the IPv4 address and
the routes. A NIC the pod must not use (`--network none`) is unbound from its
driver, so the container sees loopback only. The encoders are pure and are
tested on the host.

A VM resumed from a template has the features its NIC's driver negotiated in
the template, whose NIC had no backend able to take virtio-net headers: no
checksum or segmentation offload. QEMU offers them again behind a tap (the
device is made anew at the resume, with the tap as its peer), so for a NIC
marked `renegotiate` the driver is unbound and bound again: the probe reads
the device's features afresh, and the pod gets a booted VM's offloads.
"""

from __future__ import annotations

import os
import socket
import struct
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
IFLA_ADDRESS = 1
IFLA_MTU = 4
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
IFF_UP = 0x1
SYS_NET = "/sys/class/net"
VIRTIO_NET_DRIVER = "/sys/bus/virtio/drivers/virtio_net"
CARRIER_TIMEOUT = 2.0


class NetError(Exception):
    pass


def attribute(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def set_link(index: int, seq: int, *, mac: bytes | None = None, mtu: int | None = None, up: bool) -> bytes:
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP)
    if mac is not None:
        body += attribute(IFLA_ADDRESS, mac)
    if mtu is not None:
        body += attribute(IFLA_MTU, struct.pack("=I", mtu))
    return message(RTM_NEWLINK, 0, seq, body)


def add_address(index: int, seq: int, address: str, prefixlen: int) -> bytes:
    packed = socket.inet_aton(address)
    host_bits = (1 << (32 - prefixlen)) - 1
    broadcast = struct.pack("!I", struct.unpack("!I", packed)[0] | host_bits)
    body = struct.pack("=BBBBI", socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
    body += attribute(IFA_LOCAL, packed) + attribute(IFA_ADDRESS, packed)
    if prefixlen < 31:
        body += attribute(IFA_BROADCAST, broadcast)
    return message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq, body)


def add_route(index: int, seq: int, gateway: str, destination: str = "0.0.0.0", prefixlen: int = 0) -> bytes:
    body = struct.pack(
        "=BBBBBBBBI",
        socket.AF_INET,
        prefixlen,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,
    )
    if prefixlen:
        body += attribute(RTA_DST, socket.inet_aton(destination))
    body += attribute(RTA_GATEWAY, socket.inet_aton(gateway)) + attribute(RTA_OIF, struct.pack("=i", index))
    return message(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq, body)


def parse_ack(data: bytes, seq: int) -> int:
    """The error code (0 or -errno) of the kernel's answer to request `seq`."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, answer_seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        if kind == NLMSG_ERROR and answer_seq == seq:
            return int(struct.unpack_from("=i", data, offset + 16)[0])
        offset += (length + 3) & ~3
    raise NetError(f"no answer to netlink request {seq}")


def mac_bytes(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address {text!r}")
    return bytes(int(part, 16) for part in parts)


class Netlink:
    """One rtnetlink socket; each request waits for its acknowledgement."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.settimeout(5)
        self.seq = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def request(self, data: bytes, what: str) -> None:
        seq = struct.unpack_from("=I", data, 8)[0]
        self.sock.send(data)
        while True:
            try:
                code = parse_ack(self.sock.recv(65536), seq)
            except NetError:
                continue
            if code:
                raise NetError(f"{what}: {os.strerror(-code)}")
            return

    def close(self) -> None:
        self.sock.close()


def interfaces_by_mac(root: str = SYS_NET) -> dict[str, str]:
    """The guest's interfaces by MAC address, loopback left out."""
    found = {}
    for name in os.listdir(root):
        try:
            with open(f"{root}/{name}/address") as f:
                mac = f.read().strip().lower()
        except OSError:
            continue
        if name != "lo" and mac:
            found[mac] = name
    return found


def unbind(name: str) -> None:
    """Detach a NIC from its driver: the interface disappears from the VM."""
    device = os.path.basename(os.readlink(f"{SYS_NET}/{name}/device"))
    with open(f"{VIRTIO_NET_DRIVER}/unbind", "w") as f:
        f.write(device)


def rebind(name: str) -> None:
    """Unbind a NIC from its driver and bind it again: the driver negotiates
    the device's features afresh (the interface is made anew, unconfigured)."""
    device = os.path.basename(os.readlink(f"{SYS_NET}/{name}/device"))
    with open(f"{VIRTIO_NET_DRIVER}/unbind", "w") as f:
        f.write(device)
    with open(f"{VIRTIO_NET_DRIVER}/bind", "w") as f:
        f.write(device)  # the probe, and the new interface's registration, happen in this write


def wait_for_carrier(name: str, timeout: float = CARRIER_TIMEOUT) -> None:
    """A NIC bound again reports its link from a work item of its driver: the
    first packets would find no carrier (and no queue) before it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"{SYS_NET}/{name}/carrier") as f:
                if f.read().strip() == "1":
                    return
        except OSError:
            pass  # EINVAL while the link is being set up
        time.sleep(0.001)


def configure(request: dict[str, Any]) -> list[str]:
    """Apply the `network` part of a setup request; returns the names of the
    configured interfaces. Each interface: device_mac, mac, address
    ("A.B.C.D/N"), mtu, optionally gateway (the default route's) and
    renegotiate (rebind the driver first, for a VM resumed from a template)."""
    present = interfaces_by_mac()
    for device_mac in request.get("unused") or []:
        name = present.get(str(device_mac).lower())
        if name is not None:
            unbind(name)
    renegotiate = [item for item in request.get("interfaces") or [] if item.get("renegotiate")]
    for item in renegotiate:
        name = present.get(str(item["device_mac"]).lower())
        if name is not None:
            rebind(name)
    if renegotiate:
        present = interfaces_by_mac()
    configured = []
    netlink = Netlink()
    try:
        for item in request.get("interfaces") or []:
            device_mac = str(item["device_mac"]).lower()
            name = present.get(device_mac)
            if name is None:
                raise NetError(f"no network interface with MAC {device_mac}")
            index = socket.if_nametoindex(name)
            address, _, prefix = str(item["address"]).partition("/")
            netlink.request(
                set_link(
                    index, netlink.next_seq(), mac=mac_bytes(str(item["mac"])), mtu=int(item["mtu"]), up=False
                ),
                f"set the MAC and MTU of {name}",
            )
            netlink.request(add_address(index, netlink.next_seq(), address, int(prefix)), f"address {name}")
            netlink.request(set_link(index, netlink.next_seq(), up=True), f"bring {name} up")
            if item.get("renegotiate"):
                wait_for_carrier(name)
            gateway = item.get("gateway")
            if gateway:
                netlink.request(
                    add_route(index, netlink.next_seq(), str(gateway)), f"default route via {gateway}"
                )
            configured.append(name)
    finally:
        netlink.close()
    return configured


def link_states(root: str = SYS_NET) -> dict[str, dict[str, Any]]:
    """Each interface's operational state and MTU, for `stats`."""
    states = {}
    for name in os.listdir(root):
        if name == "lo":
            continue
        entry: dict[str, Any] = {}
        for key in ("operstate", "mtu", "address"):
            try:
                with open(f"{root}/{name}/{key}") as f:
                    entry[key] = f.read().strip()
            except OSError:
                continue
        states[name] = entry
    return states


def relay_tcp(port: int, stdin: int = 0, stdout: int = 1) -> int:
    """In a child of the agent (`port_forward`): connect to `port` on the VM's
    loopback, where a pod's containers listen (they share the VM's network), and
    relay bytes between the connection and this child's stdin and stdout. Stdin's
    end half-closes the connection; the connection's end ends the relay. A refused
    connection raises, which the agent reports on stderr with exit status 1."""
    import select

    # Not create_connection: its getaddrinfo needs the idna codec, which the
    # appliance leaves out; a numeric ASCII address is used as it is.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(("127.0.0.1", port))
        conn.settimeout(None)
        sources = [stdin, conn.fileno()]
        while True:
            readable, _, _ = select.select(sources, [], [])
            if stdin in readable:
                data = os.read(stdin, 64 * 1024)
                if data:
                    conn.sendall(data)
                else:
                    conn.shutdown(socket.SHUT_WR)
                    sources.remove(stdin)
            if conn.fileno() in readable:
                data = conn.recv(64 * 1024)
                if not data:
                    return 0
                view = memoryview(data)
                while view:
                    view = view[os.write(stdout, view) :]
