"""OpenStack Keystone as a source of tenants: an `X-Auth-Token` validated by Keystone.

hyperd asks Keystone's identity API (`GET /v3/auth/tokens` with the token as
`X-Subject-Token`) through keystoneauth1. With service credentials (a JSON
file: username, password, project_name, and optionally user_domain_id and
project_domain_id, as keystonemiddleware's `[keystone_authtoken]` has them)
hyperd authenticates as that service user, the usual OpenStack set-up;
without, the token validates itself (Keystone lets a token's subject
validate it), so hyperd needs no secret of Keystone's.

A valid token scoped to a project acts as the Hyper tenant of that project
(hyper.tenants.service makes one at the project's first request). Answers
are kept for CACHE_SECONDS (never past the token's expiry), so most requests
cost no round trip; a revoked token stops working within that time.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from keystoneauth1 import access, session
from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1.identity import v3

from hyper.errors import InvalidArgument, Unauthenticated, Unavailable

CACHE_SECONDS = 60.0
CACHE_SIZE = 10_000
TIMEOUT_SECONDS = 10.0
MAX_TOKEN_LENGTH = 8192  # Fernet tokens are ~200 bytes; PKI ones were a few KiB


@dataclass(frozen=True)
class ServiceCredentials:
    username: str
    password: str
    project_name: str
    user_domain_id: str = "default"
    project_domain_id: str = "default"

    @classmethod
    def load(cls, path: Path) -> ServiceCredentials:
        try:
            doc = json.loads(path.read_text())
            return cls(
                username=str(doc["username"]),
                password=str(doc["password"]),
                project_name=str(doc["project_name"]),
                user_domain_id=str(doc.get("user_domain_id", "default")),
                project_domain_id=str(doc.get("project_domain_id", "default")),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(
                f"cannot read Keystone service credentials from {path}: {exc}",
                hint='give a JSON file {"username", "password", "project_name"}',
            ) from None


@dataclass(frozen=True)
class KeystoneIdentity:
    """Who a valid token speaks for."""

    project_id: str
    project_name: str
    user_id: str
    user_name: str
    roles: tuple[str, ...]
    expires_at: float


class KeystoneValidator:
    def __init__(self, url: str, credentials: ServiceCredentials | None = None) -> None:
        self.url = url.rstrip("/")
        if not self.url.endswith("/v3"):
            self.url += "/v3"
        auth = None
        if credentials is not None:
            auth = v3.Password(
                auth_url=self.url,
                username=credentials.username,
                password=credentials.password,
                user_domain_id=credentials.user_domain_id,
                project_name=credentials.project_name,
                project_domain_id=credentials.project_domain_id,
            )
        self._session = session.Session(auth=auth, timeout=TIMEOUT_SECONDS)
        self._service = credentials is not None
        self._cache: OrderedDict[str, tuple[KeystoneIdentity, float]] = OrderedDict()

    def cached(self, token: str, now: float) -> KeystoneIdentity | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        found = self._cache.get(key)
        if found is None:
            return None
        identity, until = found
        if until < now:
            del self._cache[key]
            return None
        return identity

    def validate(self, token: str) -> KeystoneIdentity:
        """The identity of a valid project-scoped token (blocking: call it in a thread)."""
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii() or not token.isprintable():
            raise Unauthenticated("the Keystone token is malformed")
        now = time.time()
        found = self.cached(token, now)
        if found is not None:
            return found
        headers = {"X-Subject-Token": token}
        if not self._service:
            headers["X-Auth-Token"] = token  # the token validates itself
        try:
            response = self._session.get(
                f"{self.url}/auth/tokens", headers=headers, authenticated=self._service, raise_exc=False
            )
        except ks_exceptions.ClientException as exc:
            raise Unavailable(f"Keystone at {self.url} cannot be reached: {exc}") from None
        if response.status_code in (401, 403, 404):
            raise Unauthenticated("the Keystone token is not valid (unknown, expired or revoked)")
        if response.status_code != 200:
            raise Unavailable(f"Keystone at {self.url} answered {response.status_code} to a token check")
        info = access.create(resp=response, body=response.json())
        if not info.project_scoped or not info.project_id:
            raise Unauthenticated(
                "the Keystone token is not scoped to a project",
                hint="ask Keystone for a project-scoped token",
            )
        expires = info.expires
        expires_at = expires.timestamp() if isinstance(expires, datetime.datetime) else now + CACHE_SECONDS
        identity = KeystoneIdentity(
            project_id=str(info.project_id),
            project_name=str(info.project_name or info.project_id),
            user_id=str(info.user_id or ""),
            user_name=str(info.username or ""),
            roles=tuple(info.role_names or ()),
            expires_at=expires_at,
        )
        key = hashlib.sha256(token.encode()).hexdigest()
        self._cache[key] = (identity, min(expires_at, now + CACHE_SECONDS))
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return identity
