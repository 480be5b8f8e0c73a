"""A small HTTP proxy in front of a real registry that injects faults on request.

Built on `http.server` in a thread; it forwards GET and HEAD to the upstream
registry and can: replace a manifest's body, corrupt a blob (one byte
flipped, so its digest no longer matches), or drop the connection after N
bytes of a blob once (to exercise resuming with `Range`). The upstream's
answers are otherwise passed through, Range requests included.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Faults:
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # ref → (body, content type)
    corrupt: set[str] = field(default_factory=set)  # blob digests
    drop_after: dict[str, int] = field(default_factory=dict)  # blob digest → bytes sent before closing, once
    ranges: list[str] = field(default_factory=list)  # Range headers seen
    statuses: list[int] = field(default_factory=list)  # answer the next requests with these, in order


class FaultyProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.faults = Faults()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                del format, args

            def do_HEAD(self) -> None:
                self._forward(send_body=False)

            def do_GET(self) -> None:
                self._forward(send_body=True)

            def _forward(self, *, send_body: bool) -> None:
                faults = proxy.faults
                if faults.statuses:
                    self._answer(faults.statuses.pop(0), {}, b"failing on purpose", send_body)
                    return
                reference = self.path.rsplit("/manifests/", 1)[-1] if "/manifests/" in self.path else None
                if reference is not None and reference in faults.manifests:
                    body, media_type = faults.manifests[reference]
                    self._answer(200, {"Content-Type": media_type}, body, send_body)
                    return
                connection = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                if "Range" in self.headers:
                    faults.ranges.append(self.headers["Range"])
                connection.request(self.command, self.path, headers=headers)
                response = connection.getresponse()
                body = response.read()
                connection.close()
                passed = {
                    k: v
                    for k, v in response.getheaders()
                    if k.lower() not in ("content-length", "connection", "transfer-encoding")
                }
                digest = self.path.rsplit("/blobs/", 1)[-1] if "/blobs/" in self.path else ""
                if digest in faults.corrupt and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                limit = faults.drop_after.pop(digest, None)
                if limit is not None and send_body and response.status == 200:
                    self.send_response(200)
                    for key, value in passed.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:limit])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._answer(
                    response.status, passed, body, send_body, length=response.getheader("content-length")
                )

            def _answer(
                self,
                status: int,
                headers: dict[str, str],
                body: bytes,
                send_body: bool,
                length: str | None = None,
            ) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", length if not send_body and length else str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
