"""Tenants of a test's hyperd, each with the real docker CLI, docker-py and a
plain HTTPS client of the tenant listener.

`tenant_hyperd` makes a self-signed pair and a DockerHyperd serving tenants
on a free loopback port; `admin` runs `hyper tenant …` on its local socket;
`TenantClient` is one tenant as a user would set it up: its own docker
config directory whose config.json carries the bearer token in HttpHeaders
(the two lines docs/tenants.md tells a tenant to write), and a certs
directory holding only the CA certificate.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import httpx

from hyper.cli.tenant_commands import make_self_signed
from tests.support.docker_env import DOCKER_CLI, DockerHyperd

if TYPE_CHECKING:
    from docker import DockerClient


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class TenantListener:
    """A DockerHyperd that also serves tenants over TLS on a loopback port."""

    daemon: DockerHyperd
    port: int
    ca: Path  # the self-signed certificate clients trust


def tenant_hyperd(
    *,
    state: Path | None = None,
    cache: Path | None = None,
    extra: tuple[str, ...] = (),
    netns: str | None = None,
) -> TenantListener:
    """A hyperd (not started yet) with --tenant-listen on a free loopback port
    (in the network namespace `netns`, when given: its clients run there too)."""
    port = free_port()
    daemon = DockerHyperd(state=state, cache=cache, netns=netns)
    cert, key, ca = make_self_signed(["127.0.0.1"], daemon.root / "tls", 1)
    listen = ("--tenant-listen", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key))
    daemon.args = (*listen, *extra)
    return TenantListener(daemon, port, ca)


def admin(daemon: DockerHyperd, *args: str) -> subprocess.CompletedProcess[str]:
    """`hyper …` as hyperd's admin, on its local socket."""
    env = dict(os.environ, HYPER_STATE_DIR=str(daemon.state), HYPER_RUNTIME_DIR=str(daemon.runtime))
    return subprocess.run(
        [sys.executable, "-m", "hyper.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def admin_ok(daemon: DockerHyperd, *args: str) -> str:
    done = admin(daemon, *args)
    assert done.returncode == 0, f"hyper {' '.join(args)}: {done.stderr}"
    return done.stdout


class TenantClient:
    """One tenant's clients of the tenant listener, each sending `headers`."""

    def __init__(
        self, listener: TenantListener, name: str, headers: dict[str, str], key_id: str = ""
    ) -> None:
        self.name = name
        self.headers = headers
        self.key_id = key_id
        self.port = listener.port
        self.netns = listener.daemon.netns
        root = listener.daemon.root
        self.config = root / f"docker-{name}-{key_id}"  # one config per key: a tenant may have several
        self.config.mkdir(exist_ok=True)
        (self.config / "config.json").write_text(json.dumps({"HttpHeaders": headers}))
        self.certs = root / f"certs-{name}-{key_id}"
        self.certs.mkdir(exist_ok=True)
        (self.certs / "ca.pem").write_bytes(listener.ca.read_bytes())

    @classmethod
    def with_new_key(cls, listener: TenantListener, tenant: str) -> TenantClient:
        """A new key of `tenant` (made by the admin), its token in the docker config."""
        made = admin_ok(listener.daemon, "tenant", "key", "create", tenant, "--format", "json")
        key = json.loads(made)
        return cls(listener, tenant, {"Authorization": f"Bearer {key['token']}"}, key["id"])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def environ(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
        env.update(
            DOCKER_HOST=f"tcp://127.0.0.1:{self.port}",
            DOCKER_TLS_VERIFY="1",
            DOCKER_CERT_PATH=str(self.certs),
            DOCKER_CONFIG=str(self.config),
            DOCKER_CLI_HINTS="false",
        )
        return env

    def docker(
        self, *args: str, input: str | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*(["ip", "netns", "exec", self.netns] if self.netns else []), DOCKER_CLI, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environ(),
            check=False,
        )

    def docker_py(self) -> DockerClient:
        """docker-py as a tenant sets it up: the listener's URL and CA certificate
        (docker.from_env() insists on a client certificate when DOCKER_CERT_PATH
        is set), and the token from config.json's HttpHeaders."""
        from docker import DockerClient
        from docker.tls import TLSConfig

        # docker-py reads DOCKER_CONFIG from the process's environment, once, here.
        # requests lets REQUESTS_CA_BUNDLE (set on this machine) override the CA
        # docker-py gives it, unless the session ignores the environment.
        ignored = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
        environment = {k: v for k, v in os.environ.items() if k not in ignored}
        with mock.patch.dict(os.environ, {**environment, "DOCKER_CONFIG": str(self.config)}, clear=True):
            tls = TLSConfig(ca_cert=str(self.certs / "ca.pem"), verify=True)
            client = DockerClient(base_url=f"tcp://127.0.0.1:{self.port}", tls=tls, timeout=180)
        client.api.trust_env = False
        return client

    def http(
        self, headers: dict[str, str] | None = None, timeout: float = 180, source: str = "127.0.0.1"
    ) -> httpx.Client:
        """An HTTPS client of the listener from the loopback address `source`
        (hyperd throttles failed logins per address: tests of bad keys use
        127.0.0.2 and up, so the tenants' own clients are not throttled)."""
        return httpx.Client(
            base_url=self.url,
            headers=self.headers if headers is None else headers,
            timeout=timeout,
            transport=httpx.HTTPTransport(
                verify=ssl.create_default_context(cafile=str(self.certs / "ca.pem")), local_address=source
            ),
        )
