"""The CRI's streaming server: where the URLs that Exec, Attach and PortForward
return lead, as the kubelet's own streaming server does for containerd.

hyperd serves it over HTTP (127.0.0.1 and a free port unless configured).
Each URL carries a one-time token that expires (TOKEN_SECONDS, as the
kubelet's): the request the RPC checked is held under the token, and the
first connection to it takes it. The protocols are Kubernetes' over
WebSocket and over SPDY/3.1 (hyper.cri.spdystreams), chosen by the request's
Upgrade header: remotecommand (hyper.cri.remotecommand) and port-forward
(hyper.cri.portforward).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import hdrs, web
from google.protobuf.message import Message

from hyper.errors import InvalidArgument, ResourceExhausted, Unavailable

if TYPE_CHECKING:
    from hyper.cri.sandboxes import PodSandboxes

TOKEN_SECONDS = 60.0  # the kubelet's streaming server gives a token a minute
MAX_PENDING = 1000  # the kubelet's bound on tokens not yet used
KINDS = ("exec", "attach", "portforward")
SHUTDOWN_SECONDS = 2.0


@dataclass(frozen=True)
class Pending:
    kind: str
    request: Message
    expires: float


class Tokens:
    """Requests waiting for their stream, each under a one-time token."""

    def __init__(self, ttl: float = TOKEN_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self.pending: dict[str, Pending] = {}

    def issue(self, kind: str, request: Message) -> str:
        now = self.clock()
        for token in [t for t, p in self.pending.items() if p.expires <= now]:
            del self.pending[token]
        if len(self.pending) >= MAX_PENDING:
            raise ResourceExhausted(
                f"{MAX_PENDING} streaming requests wait for their connection",
                hint="connect to the URLs given, or wait a minute for them to expire",
            )
        token = secrets.token_urlsafe(16)
        self.pending[token] = Pending(kind, request, now + self.ttl)
        return token

    def take(self, kind: str, token: str) -> Message | None:
        """The request under `token`, once; None if unknown, used, expired or of another kind."""
        pending = self.pending.get(token)
        if pending is None or pending.kind != kind:
            return None
        del self.pending[token]
        return pending.request if pending.expires > self.clock() else None


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or HOST (a free port)."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, "0"
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(
            f"bad streaming address {text!r}", hint="give HOST:PORT (port 0: a free one), e.g. 127.0.0.1:0"
        )
    return host, int(port)


Handler = Callable[["StreamingServer", web.Request, Message], Awaitable[web.StreamResponse]]


class StreamingServer:
    def __init__(self, runtime: PodSandboxes, address: str) -> None:
        self.runtime = runtime
        self.host, self.port = parse_address(address)
        self.tokens = Tokens()
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> None:
        from hyper.cri import portforward, remotecommand  # their handlers, in this server's routes

        handlers: dict[str, Handler] = {
            "exec": remotecommand.serve_exec,
            "attach": remotecommand.serve_attach,
            "portforward": portforward.serve_port_forward,
        }
        app = web.Application()
        for kind, handler in handlers.items():
            app.router.add_get(f"/{kind}/{{token}}", self._handle(kind, handler))
        # At hyperd's stop, streams still open (an exec of `sleep`) are cut after a
        # moment rather than holding the stop for aiohttp's default minute.
        self.runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise Unavailable(
                f"cannot serve CRI streams on {self.host}:{self.port}: {exc.strerror}",
                hint="give another --cri-streaming-address",
            ) from exc
        server = site._server  # the bound port, when 0 asked for a free one
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            with contextlib.suppress(Exception):
                await self.runner.cleanup()

    def url(self, kind: str, request: Message) -> str:
        """A one-time URL for `request` (an Exec, Attach or PortForward request the RPC checked)."""
        assert kind in KINDS
        return f"{self.base_url}/{kind}/{self.tokens.issue(kind, request)}"

    def _handle(self, kind: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            upgrade = request.headers.get(hdrs.UPGRADE, "").lower()
            if upgrade not in {"websocket", "spdy/3.1"}:
                return web.Response(
                    status=400,
                    text="hyper's CRI streaming server speaks WebSocket and SPDY/3.1: upgrade the "
                    "connection to one of them (Upgrade: websocket or Upgrade: SPDY/3.1)\n",
                )
            pending = self.tokens.take(kind, request.match_info["token"])
            if pending is None:
                return web.Response(
                    status=404, text="unknown or expired streaming token: ask the CRI again\n"
                )
            return await handler(self, request, pending)

        return handle
