"""The tenants' door to the Docker Engine API: TLS, authentication, limits and audit.

`hyperd --tenant-listen HOST:PORT` serves the same Docker Engine API app as
the local socket, behind `tenant_gate`, the outermost middleware:

1. every request is authenticated (hyper.tenants.service): a bearer token,
   a signed request or a Keystone token; anything else is answered 401 with
   one line saying what is wrong and nothing about the server, whatever the
   path (unknown paths included); an address with too many failed logins is
   answered 429 without its credentials being looked at;
2. the tenant's requests in progress are capped (its api-requests quota);
3. the request carries its Scope: every lookup behind sees the tenant's own
   objects only (hyper.api.docker.common.scope_of);
4. a signed request's body is checked against its signed hash as it is read;
5. every mutating request (POST, PUT, DELETE) is appended to the audit log
   with its result.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader

from hyper.api.docker.common import SCOPE, TENANTS, Handler, docker_error
from hyper.api.errors import http_status
from hyper.errors import HyperError, InvalidArgument, ResourceExhausted, Unauthenticated
from hyper.tenants.scope import Scope
from hyper.tenants.service import Credentials
from hyper.tenants.throttle import Throttled

MUTATING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
OBJECT_KEYS = ("id", "name")  # the path's names of the object a request acts on


def _unauthenticated(exc: HyperError) -> web.Response:
    response = docker_error(401, str(exc))
    response.headers["WWW-Authenticate"] = 'Bearer realm="hyperd"'
    return response


class VerifiedBody(StreamReader):
    """A request body whose SHA-256 must be `expected`: read through, hashed on
    the way, and at its end a mismatch is raised (401) instead of the EOF.
    It pulls from the connection's reader as the handler reads, so the
    handler's pace still holds the client back."""

    def __init__(self, original: StreamReader, expected: str, request: web.Request) -> None:
        super().__init__(request.protocol, 1 << 16, loop=request.loop)
        self._original = original
        self._expected = expected
        self._hash = hashlib.sha256()
        self._done = False

    def _seen(self, data: bytes) -> bytes:
        if data:
            self._hash.update(data)
        elif not self._done:
            self._done = True
            if self._hash.hexdigest() != self._expected:
                raise Unauthenticated(
                    "the request body does not match its signed hash (X-Hyper-Content-Sha256)",
                    hint="hash the exact bytes sent",
                )
        return data

    async def read(self, n: int = -1) -> bytes:
        data = self._seen(await self._original.read(n))
        if n == -1 and data:
            self._seen(b"")  # read to its end in one go: the end is checked now
        return data

    async def readany(self) -> bytes:
        return self._seen(await self._original.readany())

    async def readexactly(self, n: int) -> bytes:
        return self._seen(await self._original.readexactly(n))

    def at_eof(self) -> bool:
        return self._original.at_eof() and self._done

    def is_eof(self) -> bool:
        return self._original.is_eof()


@web.middleware
async def tenant_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    service = request.app[TENANTS]
    source = request.remote or ""
    credentials = Credentials(
        authorization=request.headers.get("Authorization", ""),
        keystone_token=request.headers.get("X-Auth-Token", ""),
        headers=request.headers,
    )
    try:
        principal, signed = await service.authenticate(
            credentials,
            method=request.method,
            path=request.rel_url.raw_path,
            query=list(request.query.items()),
            source=source,
        )
    except Throttled as exc:
        refusal = docker_error(429, str(exc))
        refusal.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return refusal
    except Unauthenticated as exc:
        return _unauthenticated(exc)
    except HyperError as exc:  # Keystone unreachable, the replay cache full
        return docker_error(http_status(exc), str(exc))
    tenant = principal.tenant
    try:
        service.limiter.acquire(tenant)
    except ResourceExhausted as exc:
        return docker_error(429, str(exc))
    status = 500
    response: web.StreamResponse | None = None
    try:
        if signed is not None:
            # The one place Hyper reaches into aiohttp: the body the handler reads is checked.
            # Request.content is cached (reify) on first use, so the cache is replaced too:
            # without it a handler read the unchecked body (tests/integration/test_tenants.py).
            verified = VerifiedBody(request._payload, signed.content_sha256, request)
            request._payload = verified
            request._cache["content"] = verified
        request[SCOPE] = Scope(principal)
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        service.limiter.release(tenant)
        if request.method in MUTATING:
            service.record(
                principal,
                action=f"{request.method} {request.rel_url.path}",
                object=_object_of(request, response),
                result=status,
                source=source,
            )


def _object_of(request: web.Request, response: web.StreamResponse | None) -> str:
    """The object a request acted on: the path's, or the one it made."""
    for key in OBJECT_KEYS:
        if key in request.match_info:
            return request.match_info[key]
    if isinstance(response, web.Response) and response.body and response.content_type == "application/json":
        try:
            doc: Any = json.loads(response.body)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("Id"), str):
            return str(doc["Id"])
    for key in ("name", "fromImage", "repo"):
        if key in request.query:
            return request.query[key]
    return ""


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2 and up with the server's certificate and key (given by path)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(
            f"cannot use the TLS certificate {cert} and key {key}: {exc}",
            hint="make a pair with `hyper tenant cert`, or give a PEM certificate and its key",
        ) from None
    return context


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv4, a name, or [IPv6])."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise InvalidArgument(f"invalid --tenant-listen {text!r}", hint="give HOST:PORT, e.g. 127.0.0.1:2376")
    return host.strip("[]"), int(port)
