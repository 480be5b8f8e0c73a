"""A real registry for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1.

`RegistryServer` writes a config (filesystem storage in a temporary directory,
optionally htpasswd auth, token auth trusting a `tests.support.token_server`,
and TLS from a test CA made with the `openssl` CLI),
starts `docker-registry serve`, waits until `/v2/` answers and stops the
process on close (terminate, wait, kill). `skopeo()` runs the independent
client the tests cross-check against.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.token_server import TokenAuthConfig

REGISTRY_BINARY = "/usr/bin/docker-registry"


def registry_available() -> bool:
    return Path(REGISTRY_BINARY).is_file() and shutil.which("openssl") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class CertificateAuthority:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_test_ca(directory: Path) -> CertificateAuthority:
    """A CA and a server certificate for 127.0.0.1/localhost, with the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=Hyper Test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return CertificateAuthority(directory / "ca.crt", directory / "server.crt", directory / "server.key")


def htpasswd_line(user: str, password: str) -> str:
    import bcrypt

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}"


class RegistryServer:
    """One running `docker-registry`; a context manager whose close is idempotent."""

    def __init__(
        self,
        directory: Path,
        *,
        tls: CertificateAuthority | None = None,
        users: Sequence[tuple[str, str]] = (),
        token: TokenAuthConfig | None = None,
    ) -> None:
        if users and token is not None:
            raise ValueError("a registry authenticates with htpasswd users or with tokens, not both")
        self.directory = directory
        self.tls = tls
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = directory / "registry.log"
        self._process: subprocess.Popen[bytes] | None = None
        http: dict[str, object] = {"addr": self.host, "secret": "hyper-test-secret"}
        if tls is not None:
            http["tls"] = {"certificate": str(tls.server_cert), "key": str(tls.server_key)}
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(directory / "storage")},
                "delete": {"enabled": True},
            },
            "http": http,
        }
        directory.mkdir(parents=True, exist_ok=True)
        if users:
            htpasswd = directory / "htpasswd"
            htpasswd.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in users))
            config["auth"] = {"htpasswd": {"realm": "hyper-test", "path": str(htpasswd)}}
        if token is not None:
            config["auth"] = {"token": token.registry_config()}
        self.config_path = directory / "config.yml"
        self.config_path.write_text(json.dumps(config))  # YAML is a superset of JSON

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def start(self) -> RegistryServer:
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert)) if self.tls else None
        deadline = time.monotonic() + 20
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=2, context=context)
                return self
            except urllib.error.HTTPError:
                return self  # 401: up, and asking for credentials
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"docker-registry did not answer on {self.url}: {exc}") from exc
                time.sleep(0.05)

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running_registry(directory: Path, **kwargs: object) -> Iterator[RegistryServer]:
    with RegistryServer(directory, **kwargs) as server:  # type: ignore[arg-type]
        yield server


def skopeo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def extract_layout(layout_tar: Path, dest: Path) -> Path:
    """Unpack an OCI-layout tar written by `tests.support.images.oci_layout_archive`."""
    import tarfile

    with tarfile.open(layout_tar) as archive:
        for member in archive.getmembers():  # our own regular files only
            content = archive.extractfile(member)
            assert content is not None
            (dest / member.name).parent.mkdir(parents=True, exist_ok=True)
            (dest / member.name).write_bytes(content.read())
    return dest
