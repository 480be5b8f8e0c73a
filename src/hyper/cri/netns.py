"""A pod's network namespace, and a VM joined to the interface CNI made in it.

As Kata's default `tcfilter` model does it: inside the namespace, a tap for
the VM's NIC and two tc redirects (the CNI interface's ingress to the tap,
the tap's ingress to the interface), so every frame passes between the
interface and the VM untouched; the VM's NIC takes the interface's MAC, MTU
and address, so any CNI network works unchanged. The tap is opened by hyperd
and handed to QEMU, never made persistent: it goes with the VM's QEMU.

Blocking (netlink, setns, the `ip` and `tc` tools): hyperd runs these in threads.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from hyper.errors import FailedPrecondition, Unavailable

NETNS_DIR = Path("/run/netns")
TAP = "tap0"
CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_TAP_FLAGS = 0x0002 | 0x1000 | 0x4000  # IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, as hyperd's own taps


def name_for(sandbox_id: str) -> str:
    return f"hyper-{sandbox_id[:12]}"


def path_of(name: str) -> Path:
    return NETNS_DIR / name


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise Unavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def create(name: str) -> Path:
    _ip("netns", "add", name)
    return path_of(name)


def delete(name: str) -> None:
    """Remove the namespace; one already gone is no error."""
    if path_of(name).exists():
        _ip("netns", "delete", name)


@dataclass(frozen=True)
class Joined:
    tap_fd: int
    mac: str
    mtu: int


def join(name: str, interface: str = "eth0") -> Joined:
    """A tap in the namespace, redirected both ways to `interface`; its descriptor
    and the interface's MAC and MTU. Runs in a thread of its own, which enters
    the namespace (setns is per thread) and leaves it before it ends."""
    outcome: dict[str, Any] = {}

    def inside() -> None:
        try:
            outcome["joined"] = _join_inside(path_of(name), interface)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=inside, name=f"netns-{name}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    joined: Joined = outcome["joined"]
    every_frame = ("parent", "ffff:", "protocol", "all", "u32", "match", "u8", "0", "0", "action", "mirred")
    try:
        for args in (
            ("qdisc", "del", "dev", interface, "ingress"),  # a previous VM's redirect, if any
            ("qdisc", "add", "dev", interface, "ingress"),
            ("filter", "add", "dev", interface, *every_frame, "egress", "redirect", "dev", TAP),
            ("qdisc", "add", "dev", TAP, "ingress"),
            ("filter", "add", "dev", TAP, *every_frame, "egress", "redirect", "dev", interface),
        ):
            done = subprocess.run(
                ["ip", "netns", "exec", name, "tc", *args],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if done.returncode != 0 and args[1] != "del":
                raise Unavailable(f"`tc {' '.join(args)}` in {name} failed: {done.stderr.strip()}")
    except BaseException:
        os.close(joined.tap_fd)
        raise
    return joined


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise Unavailable(f"cannot enter a network namespace: {os.strerror(error)}")


def _join_inside(netns: Path, interface: str) -> Joined:
    if not netns.exists():
        raise FailedPrecondition(f"the pod's network namespace {netns} is gone", hint="run a new pod sandbox")
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    tap = -1
    try:
        _setns(target)
        try:
            tap = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            fcntl.ioctl(tap, _TUNSETIFF, struct.pack("16sH22x", TAP.encode(), _TAP_FLAGS))
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=interface)
                if not found:
                    raise Unavailable(f"the CNI plugins made no {interface} in {netns}")
                link = ipr.get_links(found[0])[0]
                mac, mtu = str(link.get_attr("IFLA_ADDRESS")), int(link.get_attr("IFLA_MTU"))
                tap_index = ipr.link_lookup(ifname=TAP)[0]
                ipr.link("set", index=tap_index, mtu=mtu, state="up")
        finally:
            _setns(own)
    except BaseException:
        if tap >= 0:
            os.close(tap)
        raise
    finally:
        os.close(own)
        os.close(target)
    return Joined(tap, mac, mtu)
