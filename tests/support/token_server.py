"""A bearer-token service for tests, the kind `docker-registry`'s `auth: token:` trusts.

`TokenServer` is a small `http.server` on 127.0.0.1 that answers
`GET /token?service=…&scope=repository:NAME:pull,push` the way Docker Hub's
and distribution's token services do: it checks HTTP Basic credentials
against a user table (no credentials means the anonymous account), grants
each requested scope only the actions the account holds, and returns a JWT
signed RS256 with the `openssl` CLI. The JWT header carries the signing
certificate in `x5c`; that certificate (self-signed) is the registry's
`rootcertbundle`, which is all distribution 2.8 needs to verify the chain.

Every answered request is recorded in `issued`, so tests can check which
scopes a client asked for and what it was given.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# Repository name pattern (fnmatch) → the actions an account holds there.
AccessTable = Mapping[str, Sequence[str]]
ANONYMOUS = ""


@dataclass(frozen=True)
class TokenUser:
    password: str
    access: AccessTable


@dataclass(frozen=True)
class ResourceAccess:
    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, scope: str) -> ResourceAccess:
        """`repository:team/app:pull,push` (the name may not contain ':', the type may carry a class)."""
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if not kind or not name:
            raise ValueError(f"malformed scope {scope!r}")
        return cls(kind, name, tuple(a for a in actions.split(",") if a))

    def claim(self) -> dict[str, object]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True)
class IssuedToken:
    account: str  # ANONYMOUS for a request without credentials
    service: str
    requested: tuple[ResourceAccess, ...]
    granted: tuple[ResourceAccess, ...]


@dataclass(frozen=True)
class TokenAuthConfig:
    """What a registry needs to trust this service: distribution's `auth: token:` section."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path

    def registry_config(self) -> dict[str, object]:
        return {
            "realm": self.realm,
            "service": self.service,
            "issuer": self.issuer,
            "rootcertbundle": str(self.rootcertbundle),
        }


@dataclass
class _State:
    users: Mapping[str, TokenUser]
    anonymous: AccessTable
    service: str
    issuer: str
    key: Path
    x5c: str
    lifetime: int
    issued: list[IssuedToken] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(key: Path, data: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 with SHA-256 (JWS `RS256`)."""
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(key), "-binary"],
        input=data,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout


def allowed_actions(table: AccessTable, name: str) -> set[str]:
    return {
        action
        for pattern, actions in table.items()
        if fnmatch.fnmatchcase(name, pattern)
        for action in actions
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet

    def do_GET(self) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        if url.path != "/token":
            self._answer(404, {"details": "not found"})
            return
        query = parse_qs(url.query)
        service = (query.get("service") or [""])[0]
        if service != state.service:
            self._answer(400, {"details": f"unknown service {service!r}"})
            return
        try:
            requested = tuple(
                ResourceAccess.parse(scope) for value in query.get("scope", []) for scope in value.split()
            )
        except ValueError as exc:
            self._answer(400, {"details": str(exc)})
            return
        account = self._account()
        if account is None:
            self._answer(401, {"details": "incorrect user name or password"}, challenge=True)
            return
        table = state.anonymous if account == ANONYMOUS else state.users[account].access
        granted = tuple(
            ResourceAccess(r.type, r.name, tuple(a for a in r.actions if a in allowed_actions(table, r.name)))
            for r in requested
            if r.type == "repository"
        )
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [state.x5c]}
        claims = {
            "iss": state.issuer,
            "sub": account,
            "aud": state.service,
            "exp": now + state.lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": [g.claim() for g in granted if g.actions],
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        token = f"{signing_input}.{_b64url(_sign(state.key, signing_input.encode()))}"
        with state.lock:
            state.issued.append(IssuedToken(account, service, requested, granted))
        self._answer(200, {"token": token, "access_token": token, "expires_in": state.lifetime})

    def _account(self) -> str | None:
        """The authenticated account, ANONYMOUS without credentials, None for wrong ones."""
        header = self.headers.get("Authorization")
        if header is None:
            return ANONYMOUS
        scheme, _, value = header.partition(" ")
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        known = self.server.state.users.get(user)
        if scheme.lower() != "basic" or not sep or known is None or known.password != password:
            return None
        return user

    def _answer(self, status: int, document: object, *, challenge: bool = False) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if challenge:
            self.send_header("WWW-Authenticate", 'Basic realm="hyper-test-token"')
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _State) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class TokenServer:
    """One running token service; a context manager whose close is idempotent.

    `users` maps a user name to its password and access table; `anonymous` is
    the access table of requests without credentials (none by default).
    """

    def __init__(
        self,
        directory: Path,
        *,
        users: Mapping[str, TokenUser],
        anonymous: AccessTable | None = None,
        service: str = "hyper-test-registry",
        issuer: str = "hyper-test-token-issuer",
        lifetime: int = 300,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.certificate = directory / "token-signer.crt"
        key = directory / "token-signer.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
             "-out", str(self.certificate), "-days", "2", "-subj", "/CN=Hyper Test Token Signer"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        der = ssl.PEM_cert_to_DER_cert(self.certificate.read_text())
        self._state = _State(
            users=dict(users),
            anonymous=dict(anonymous or {}),
            service=service,
            issuer=issuer,
            key=key,
            x5c=base64.b64encode(der).decode(),
            lifetime=lifetime,
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def issued(self) -> list[IssuedToken]:
        with self._state.lock:
            return list(self._state.issued)

    def clear(self) -> None:
        with self._state.lock:
            self._state.issued.clear()

    def auth_config(self) -> TokenAuthConfig:
        if self._server is None:
            raise RuntimeError("the token server is not running; its realm has no port yet")
        return TokenAuthConfig(self.realm, self._state.service, self._state.issuer, self.certificate)

    def start(self) -> TokenServer:
        self._server = _Server(self._state)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
