"""The DNS resolver hyperd serves to its pods, on each network's gateway address, port 53.

A pod on a user-defined network finds the others by container name, short
ID and `--network-alias`, the way Docker's embedded DNS does; Docker's own
resolver lives in each container's network namespace and so cannot serve a
VM, which has its own kernel. Any other name is forwarded to the pod's
`--dns` servers or else the host's resolvers (as hyperd reads them, loopback
ones included: hyperd runs on the host), except on an --internal network.
Queries from addresses that are not pods are refused: this is no open resolver.

It runs in a thread with its own event loop, so that a flood of queries from
a guest never delays hyperd's API; hyperd hands it immutable snapshots of who
is where (`Directory`), swapped whole. Messages are parsed and built with
dnspython (a small, pure-Python, typed and widely fuzzed codec) and bounded in
size; forwarded queries are relayed as bytes, never re-encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.reversename
import dns.rrset

log = logging.getLogger("hyper.network.dns")

PORT = 53
TTL = 600  # Docker's embedded DNS answers with 600 s
MAX_UDP = 4096
MAX_TCP = 65535
FORWARD_TIMEOUT = 3.0
TCP_IDLE_TIMEOUT = 10.0
MAX_IN_FLIGHT = 512  # forwarded queries at once, over every client


@dataclass(frozen=True)
class Client:
    """A pod as the resolver sees it: which networks' names it may ask for."""

    container_id: str
    networks: frozenset[str]
    upstreams: tuple[str, ...]  # empty: the host's resolvers
    forward: bool  # False on an --internal network


@dataclass(frozen=True)
class Directory:
    """Who is where, at one moment: an immutable snapshot hyperd replaces whole."""

    clients: Mapping[str, Client] = field(default_factory=dict)  # by the pod's address
    names: Mapping[tuple[str, str], tuple[str, ...]] = field(
        default_factory=dict
    )  # (network, name) → addresses
    reverse: Mapping[str, str] = field(default_factory=dict)  # address → name
    host_resolvers: tuple[str, ...] = ()


def answer(directory: Directory, client_ip: str, query: dns.message.Message) -> dns.message.Message | None:
    """The local answer to `query` from `client_ip`, or None to forward it. Pure."""
    client = directory.clients.get(client_ip)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    if client is None:
        response.set_rcode(dns.rcode.REFUSED)
        return response
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    if question.rdtype == dns.rdatatype.PTR:
        with contextlib.suppress(dns.exception.SyntaxError, ValueError):
            address = dns.reversename.to_address(question.name)
            found = directory.reverse.get(address)
            if found is not None:
                response.answer.append(dns.rrset.from_text(question.name, TTL, "IN", "PTR", f"{found}."))
                return response
    addresses: list[str] = []
    for network in sorted(client.networks):
        addresses += directory.names.get((network, name), ())
    if addresses:
        if question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
            response.answer.append(
                dns.rrset.from_text(question.name, TTL, "IN", "A", *sorted(set(addresses)))
            )
        return response  # AAAA and the rest: the name exists, with no such record
    if not client.forward:
        response.set_rcode(dns.rcode.SERVFAIL)
        return response
    return None


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.spawn(self.server.handle_udp(self, data, str(addr[0]), addr))


class DnsServer:
    """The resolver's thread, loop and sockets."""

    def __init__(self) -> None:
        self.directory = Directory()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="hyper-dns", daemon=True)
        self._listeners: dict[str, tuple[asyncio.DatagramTransport, asyncio.Server]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._started = False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def update(self, directory: Directory) -> None:
        self.directory = directory  # one reference swapped: the thread sees old or new, whole

    def listen(self, addresses: Sequence[str]) -> None:
        """Serve on exactly these addresses (port 53, UDP and TCP). Blocking."""
        self.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(list(addresses)), self._loop)
        future.result(10)

    def stop(self) -> None:
        if not self._started:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._listen([]), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._started = False

    async def _listen(self, addresses: list[str]) -> None:
        for address in [a for a in self._listeners if a not in addresses]:
            udp, tcp = self._listeners.pop(address)
            udp.close()
            tcp.close()
        for address in [a for a in addresses if a not in self._listeners]:
            try:
                udp, _ = await self._loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(address, PORT), family=socket.AF_INET
                )
            except OSError as exc:
                log.warning("DNS: cannot listen on %s:%d/udp: %s", address, PORT, exc.strerror)
                continue
            try:
                tcp = await asyncio.start_server(self._handle_tcp, address, PORT, family=socket.AF_INET)
            except OSError as exc:
                log.warning("DNS: cannot listen on %s:%d/tcp: %s", address, PORT, exc.strerror)
                udp.close()
                continue
            self._listeners[address] = (udp, tcp)

    def spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, data: bytes, client_ip: str, *, tcp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None  # not DNS: no answer, as a resolver does with garbage
        if query.flags & dns.flags.QR:
            return None
        directory = self.directory
        local = answer(directory, client_ip, query)
        if local is not None:
            return local.to_wire(max_size=MAX_TCP if tcp else _udp_limit(query))
        client = directory.clients[client_ip]
        upstreams = client.upstreams or directory.host_resolvers
        async with self._in_flight:
            for upstream in upstreams:
                reply = await (_forward_tcp(data, upstream) if tcp else _forward_udp(data, upstream))
                if reply is not None:
                    return reply
        failure = dns.message.make_response(query)
        failure.set_rcode(dns.rcode.SERVFAIL)
        return failure.to_wire()

    async def handle_udp(self, protocol: _Udp, data: bytes, client_ip: str, addr: tuple[str, int]) -> None:
        reply = await self._resolve(data[:MAX_UDP], client_ip, tcp=False)
        if reply is not None and protocol.transport is not None and not protocol.transport.is_closing():
            protocol.transport.sendto(reply, addr)

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client_ip = str(writer.get_extra_info("peername")[0])
        try:
            while True:
                header = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                (length,) = struct.unpack("!H", header)
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
                reply = await self._resolve(data, client_ip, tcp=True)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _udp_limit(query: dns.message.Message) -> int:
    return max(512, min(query.payload, MAX_UDP)) if query.edns >= 0 else 512


async def _forward_udp(data: bytes, upstream: str) -> bytes | None:
    """Relay the query to `upstream` and return its reply (matched by id), or None."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in upstream else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (upstream, PORT))
        await loop.sock_sendall(sock, data)
        deadline = loop.time() + FORWARD_TIMEOUT
        while (remaining := deadline - loop.time()) > 0:
            reply = await asyncio.wait_for(loop.sock_recv(sock, MAX_UDP), remaining)
            if len(reply) >= 2 and reply[:2] == data[:2]:
                return reply
    except (OSError, TimeoutError):
        return None
    finally:
        sock.close()
    return None


async def _forward_tcp(data: bytes, upstream: str) -> bytes | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(upstream, PORT), FORWARD_TIMEOUT)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(struct.pack("!H", len(data)) + data)
        await writer.drain()
        (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), FORWARD_TIMEOUT))
        return await asyncio.wait_for(reader.readexactly(length), FORWARD_TIMEOUT)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()


def host_resolvers(text: str) -> tuple[str, ...]:
    """The nameservers of a resolv.conf."""
    servers = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            with contextlib.suppress(ValueError):
                servers.append(str(IPv4Address(words[1])) if "." in words[1] else words[1].split("%")[0])
    return tuple(servers)


__all__ = ["Client", "Directory", "DnsServer", "answer", "host_resolvers"]
