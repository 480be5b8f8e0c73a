"""`hyper login` / `hyper logout`: check credentials against a registry and remember them."""

from __future__ import annotations

from hyper.errors import InvalidArgument
from hyper.image.reference import DEFAULT_DOMAIN
from hyper.image.registry.auth import Credentials, CredentialStore
from hyper.image.registry.client import connect
from hyper.image.registry.pull import RegistryOptions


def registry_host(server: str | None) -> str:
    """`docker.io`, `https://index.docker.io/v1/`, `host:port` or `https://host:port/` → the host."""
    if not server:
        return DEFAULT_DOMAIN
    host = server.split("://", 1)[-1].split("/", 1)[0]
    if not host:
        raise InvalidArgument(f"invalid registry address {server!r}", hint="give HOST[:PORT]")
    return DEFAULT_DOMAIN if host in ("index.docker.io", "registry-1.docker.io") else host


def login(server: str | None, credentials: Credentials, *, options: RegistryOptions | None = None) -> str:
    """Verify `credentials` with the registry (a token for no scope, or Basic on /v2/), then store them."""
    options = options or RegistryOptions()
    host = registry_host(server)
    for client in connect(
        host, options.resolved_settings(), credentials, for_push=True, **options.client_options()
    ):
        client.request("GET", "/v2/", scopes=(), ok=(200,), what=f"login to {host}")
        break
    (options.credentials or CredentialStore()).store(host, credentials)
    return host


def logout(server: str | None, *, credentials: CredentialStore | None = None) -> tuple[str, bool]:
    host = registry_host(server)
    return host, (credentials or CredentialStore()).remove(host)
