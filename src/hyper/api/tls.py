"""TLS for the tenants' listener, with the half-close Docker's streams need.

The docker CLI ends its side of an attach or exec stream by closing its
write half (Go's tls.Conn.CloseWrite sends TLS close_notify) and then reads
the container's output to the end. asyncio's TLS takes a peer's
close_notify as the end of the whole connection: it ignores the protocol's
wish to stay open (`eof_received` returning True) and shuts down, so the
output never reaches the client. dockerd (Go's TLS) keeps writing after a
peer's close_notify, as TLS allows (RFC 8446, 6.1).

`HalfCloseTLSProtocol` is asyncio's TLS protocol with that one difference:
a close_notify from the peer while the application asked to stay open ends
the peer's direction only; hyperd's own close later sends its close_notify
and closes the connection as usual. It builds on asyncio.sslproto of
Python 3.11 (Debian 12's) and is checked by tests/unit/test_tenant_tls.py.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

MAX_LOGGED_REASON = 200  # aiohttp's reason quotes what the client sent


class HalfCloseTLSProtocol(sslproto.SSLProtocol):
    def __init__(
        self, loop: asyncio.AbstractEventLoop, app: asyncio.BaseProtocol, context: ssl.SSLContext
    ) -> None:
        super().__init__(loop, app, context, None, server_side=True)  # type: ignore[arg-type]
        self._reading_peer = False  # inside the read path, where a close_notify is noticed
        self._peer_half_closed = False

    def _call_eof_received(self) -> None:
        app_state = sslproto.AppProtocolState
        if self._app_state != app_state.STATE_CON_MADE or not self._reading_peer:  # type: ignore[has-type]
            super()._call_eof_received()  # type: ignore[misc]
            return
        self._app_state = app_state.STATE_EOF
        try:
            keep_open = self._app_protocol.eof_received()  # type: ignore[attr-defined]
        except Exception as exc:
            self._fatal_error(exc, "Error calling eof_received()")
            return
        self._peer_half_closed = bool(keep_open)

    def _start_shutdown(self) -> None:
        if self._reading_peer and self._peer_half_closed:
            return  # the peer closed its side only: hyperd's side stays open for writing
        super()._start_shutdown()

    def _do_read__copied(self) -> None:
        self._reading_peer = True
        try:
            super()._do_read__copied()  # type: ignore[misc]
        finally:
            self._reading_peer = False

    def _do_read__buffered(self) -> None:
        self._reading_peer = True
        try:
            super()._do_read__buffered()  # type: ignore[misc]
        finally:
            self._reading_peer = False


class TLSSite(web.BaseSite):
    """An aiohttp site on HOST:PORT whose connections are HalfCloseTLSProtocol's."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(runner, shutdown_timeout=5.0)
        self._host = host
        self._port = port
        self._context = context

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server: Any = self._runner.server
        assert server is not None
        context = self._context
        self._server = await loop.create_server(
            lambda: HalfCloseTLSProtocol(loop, server(), context), self._host, self._port, reuse_address=True
        )


class _MalformedRequests(logging.Filter):
    """aiohttp logs each request it cannot parse (an oversized header, a bad
    request line) with a traceback. On a listener open to a network that is
    routine, and a traceback per request would let anyone fill hyperd's log:
    one line says it. aiohttp has already answered 400."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            source = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            reason = str(exc).replace("\n", " ").strip()[:MAX_LOGGED_REASON]
            record.msg, record.args = "refused a malformed request from %s (400): %s", (source, reason)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


SERVER_LOGGER = logging.getLogger("hyper.tenants.http")
SERVER_LOGGER.addFilter(_MalformedRequests())
