"""Where a registry is reached and how: endpoints, TLS, insecure registries, mirrors.

Settings come from a JSON file in the spirit of Docker's `daemon.json`
(`$HYPER_REGISTRY_CONFIG`, else `/etc/hyper/registries.json`):

    {"insecure-registries": ["10.0.0.5:5000", "192.168.0.0/16"],
     "registry-mirrors": ["https://mirror.example"],          (Docker Hub only)
     "mirrors": {"ghcr.io": ["https://ghcr-cache.example"]}}   (any registry)

CA files follow Docker's `certs.d`: `/etc/hyper/certs.d/HOST[:PORT]/*.crt` are
trusted besides the system's CAs and `*.cert` + `*.key` is a client
certificate; `$HYPER_CERTS_DIR` moves the directory (tests use it).

A listed insecure registry is tried over HTTPS without verification, then
over plain HTTP. A loopback address may use plain HTTP without being listed,
as in Docker, but its HTTPS is still verified (Docker skips that too): a test
registry with its own CA works through certs.d and nothing is trusted blindly.
Mirrors serve pulls only and are tried before the registry itself.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyper.errors import DataLoss, InvalidArgument
from hyper.image.reference import DEFAULT_DOMAIN

DEFAULT_CONFIG = Path("/etc/hyper/registries.json")
DEFAULT_CERTS_DIR = Path("/etc/hyper/certs.d")
DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"


@dataclass(frozen=True)
class Endpoint:
    """One base URL to try for a registry."""

    url: str  # scheme://host[:port], no trailing slash
    host: str  # the registry's name, for credentials and certs.d
    verify_tls: bool = True
    mirror: bool = False

    @property
    def plain_http(self) -> bool:
        return self.url.startswith("http://")


@dataclass(frozen=True)
class RegistrySettings:
    insecure: tuple[str, ...] = ()
    mirrors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    certs_dir: Path = DEFAULT_CERTS_DIR

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> RegistrySettings:
        env = os.environ if environ is None else environ
        path = Path(env.get("HYPER_REGISTRY_CONFIG") or DEFAULT_CONFIG)
        certs_dir = Path(env.get("HYPER_CERTS_DIR") or DEFAULT_CERTS_DIR)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return cls(certs_dir=certs_dir)
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise DataLoss(f"{path} is not valid JSON: {exc}", hint=f"fix {path}") from exc
        return cls.from_document(document, str(path), certs_dir)

    @classmethod
    def from_document(
        cls, document: Any, source: str, certs_dir: Path = DEFAULT_CERTS_DIR
    ) -> RegistrySettings:
        hint = f"see the format in the documentation of {source}"
        if not isinstance(document, dict):
            raise InvalidArgument(f"{source} is not a JSON object", hint=hint)
        insecure = _string_list(document.get("insecure-registries", []), "insecure-registries", source)
        mirrors: dict[str, tuple[str, ...]] = {}
        hub = _string_list(document.get("registry-mirrors", []), "registry-mirrors", source)
        if hub:
            mirrors[DEFAULT_DOMAIN] = tuple(hub)
        extra = document.get("mirrors", {})
        if not isinstance(extra, dict):
            raise InvalidArgument(f"{source}: 'mirrors' is not an object", hint=hint)
        for host, urls in extra.items():
            mirrors[str(host)] = (*mirrors.get(str(host), ()), *_string_list(urls, f"mirrors.{host}", source))
        for urls in mirrors.values():
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise InvalidArgument(f"{source}: mirror {url!r} has no http(s):// scheme", hint=hint)
        return cls(tuple(insecure), mirrors, certs_dir)

    def is_insecure(self, host: str) -> bool:
        return is_insecure(host, self.insecure)

    def endpoints(self, host: str, *, for_push: bool = False) -> list[Endpoint]:
        """Endpoints to try in order: mirrors (pull only), then the registry itself."""
        found: list[Endpoint] = []
        if not for_push:
            for url in self.mirrors.get(host, ()):
                mirror_host = url.split("://", 1)[1].split("/", 1)[0]
                found.append(
                    Endpoint(url.rstrip("/"), host, verify_tls=not self.is_insecure(mirror_host), mirror=True)
                )
        if host == DEFAULT_DOMAIN:
            found.append(Endpoint(DOCKER_HUB_ENDPOINT, host))
        elif is_insecure(host, self.insecure, loopback=False):
            found += [Endpoint(f"https://{host}", host, verify_tls=False), Endpoint(f"http://{host}", host)]
        elif is_loopback(host):
            # Unlisted loopback: verified TLS if it works, else plain HTTP; never unverified TLS.
            found += [Endpoint(f"https://{host}", host), Endpoint(f"http://{host}", host)]
        else:
            found.append(Endpoint(f"https://{host}", host))
        return found

    def ssl_context(self, endpoint: Endpoint) -> ssl.SSLContext:
        """System CAs plus the host's certs.d files; no verification for an insecure endpoint."""
        context = ssl.create_default_context()
        if not endpoint.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        url_host = endpoint.url.split("://", 1)[1]
        directory = self.certs_dir / url_host
        if directory.is_dir():
            for ca in sorted(directory.glob("*.crt")):
                context.load_verify_locations(cafile=str(ca))
            for cert in sorted(directory.glob("*.cert")):
                key = cert.with_suffix(".key")
                if not key.is_file():
                    raise InvalidArgument(
                        f"client certificate {cert} has no key {key.name}", hint=f"add {key} or remove {cert}"
                    )
                context.load_cert_chain(str(cert), str(key))
        return context


def _string_list(value: Any, what: str, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidArgument(f"{source}: {what!r} is not a list of strings", hint=f"fix {source}")
    return list(value)


def split_host_port(host: str) -> tuple[str, str | None]:
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else None
    name, sep, port = host.rpartition(":")
    return (name, port) if sep and port.isdigit() else (host, None)


def is_loopback(host: str) -> bool:
    name, _ = split_host_port(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_insecure(host: str, insecure: Sequence[str], *, loopback: bool = True) -> bool:
    """Docker's rule: loopback, a listed `host[:port]`, or an IP inside a listed CIDR."""
    if loopback and is_loopback(host):
        return True
    name, _ = split_host_port(host)
    for entry in insecure:
        if entry in (host, name):
            return True
        if "/" in entry:
            try:
                network = ipaddress.ip_network(entry, strict=False)
                if ipaddress.ip_address(name) in network:
                    return True
            except ValueError:
                continue
    return False
