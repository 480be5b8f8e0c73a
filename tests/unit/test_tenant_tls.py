"""The tenant listener's TLS keeps writing after the peer's close_notify (Go's
CloseWrite, which the docker CLI sends when its input ends), as Go's TLS does."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyper.api.tls import HalfCloseTLSProtocol
from hyper.cli.tenant_commands import make_self_signed

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


class Echo(asyncio.Protocol):
    """Takes input until the peer's end of it, then answers and closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool:
        assert isinstance(self.transport, asyncio.WriteTransport)
        transport = self.transport
        received = self.received

        def answer() -> None:
            transport.write(b"after eof: " + received)
            transport.close()

        asyncio.get_running_loop().call_later(0.05, answer)
        return True  # keep the connection open to write


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    cert, key, ca = make_self_signed(["127.0.0.1"], tmp_path, 1)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()
    port: list[int] = []

    async def serve() -> None:
        made = await loop.create_server(lambda: HalfCloseTLSProtocol(loop, Echo(), context), "127.0.0.1", 0)
        port.append(made.sockets[0].getsockname()[1])
        started.set()
        await stop.wait()
        made.close()
        await made.wait_closed()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield port[0], ca
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_the_server_writes_after_the_client_closed_its_side(server: tuple[int, Path]) -> None:
    port, ca = server
    context = ssl.create_default_context(cafile=str(ca))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:

        def flush() -> None:
            if data := outgoing.read():
                sock.sendall(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                incoming.write(sock.recv(65536))
        flush()
        tls.write(b"input")
        with pytest.raises(ssl.SSLWantReadError):
            tls.unwrap()  # close_notify sent: the client's side ends, as Go's CloseWrite
        flush()
        answer = b""
        while True:
            try:
                answer += tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    break
                incoming.write(data)
            except ssl.SSLZeroReturnError:
                break
    assert answer == b"after eof: input"
