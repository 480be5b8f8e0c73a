"""Host ports held for published container ports.

Traffic to a published port is forwarded by DNAT rules in the kernel
(hyper.network.nftables); nothing on the host has to listen. hyperd still
binds each published host port (without listening, and without SO_REUSEADDR)
for as long as the pod runs, so that:
- a port another program uses is found before the VM boots, and named;
- no other program can take the port while DNAT sends its traffic elsewhere;
- `-p 80` (no host port) gets a free port from the kernel, as Docker does.

Without root a pod's passt listens on its ports itself: hyperd binds them only
to check and choose them first, with SO_REUSEADDR as passt does, so that
connections of an earlier run still in TIME_WAIT do not refuse the port.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable

from hyper.errors import AlreadyExists, InvalidArgument
from hyper.network.model import PortSpec


class PortReservations:
    """The sockets that hold one pod's host ports; close() lets them go."""

    def __init__(self, *, reuse_address: bool = False) -> None:
        self._sockets: list[socket.socket] = []
        self._reuse_address = reuse_address

    def hold(self, port: PortSpec) -> PortSpec:
        """Bind `port` on the host; returns it with the host port the kernel chose for 0."""
        kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        if self._reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((port.host_ip or "0.0.0.0", port.host_port))
        except OSError as exc:
            sock.close()
            where = f"{port.host_ip or '0.0.0.0'}:{port.host_port}/{port.protocol}"
            if exc.errno == errno.EADDRINUSE:
                raise AlreadyExists(
                    f"the host port {where} is already in use", hint="choose another host port with -p"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(
                    f"cannot publish on {where}: {port.host_ip} is not an address of this host",
                    hint="give one of the host's addresses, or none",
                ) from None
            if exc.errno == errno.EACCES:
                raise InvalidArgument(
                    f"cannot publish on {where}: ports below 1024 need root",
                    hint="choose a port of 1024 or more",
                ) from None
            raise
        self._sockets.append(sock)
        if port.host_port:
            return port
        return PortSpec(port.container_port, port.protocol, port.host_ip, sock.getsockname()[1])

    def hold_all(self, ports: Iterable[PortSpec]) -> list[PortSpec]:
        try:
            return [self.hold(port) for port in ports]
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets.clear()
