"""Request bodies of the HTTP APIs, bounded before they are read.

A JSON body is at most MAX_JSON_BODY bytes: one that says it is larger
(Content-Length) is refused before a byte of it is read, and one sent without
a length is refused as soon as it passes the bound, so a client cannot make
hyperd hold a large body in memory. Bodies that are data (a tar for `docker
cp`, an image archive for `docker load`) are not read through here: their
handlers stream them to disk.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from hyper.errors import InvalidArgument, ResourceExhausted

MAX_JSON_BODY = 1 << 20
_READ_CHUNK = 64 * 1024


class BodyTooLarge(ResourceExhausted):
    """A request body over the bound: HTTP 413 in every front end (hyper.api.errors)."""


async def refuse_at_once(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Send `response` to a body over the bound, then close the connection: the
    rest of the body is neither read nor drained."""
    await response.prepare(request)
    await response.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()  # the answer is flushed first
    return response


def too_large(length: int | None) -> BodyTooLarge:
    said = f" ({length} bytes)" if length is not None else ""
    return BodyTooLarge(
        f"the request body{said} is larger than the {MAX_JSON_BODY} bytes a JSON request may have",
        hint="send a smaller document",
    )


def refuse_if_declared_too_large(request: web.Request) -> None:
    """Refuse a body whose Content-Length is over the bound, before reading it."""
    length = request.content_length
    if length is not None and length > MAX_JSON_BODY:
        raise too_large(length)


async def read_json_body(request: web.Request) -> Any:
    """The request's JSON document (None for an empty body), read within the bound."""
    refuse_if_declared_too_large(request)
    received = bytearray()
    while chunk := await request.content.read(_READ_CHUNK):
        received += chunk
        if len(received) > MAX_JSON_BODY:
            raise too_large(None)
    if not received.strip():
        return None
    try:
        return json.loads(received)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        raise InvalidArgument("the request body is not valid JSON") from None
