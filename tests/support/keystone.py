"""Debian's real OpenStack Keystone on loopback, for tests of hyperd's Keystone tenants.

`KeystoneServer` writes a keystone.conf of its own (sqlite database, Fernet
tokens, keys in its directory), runs `keystone-manage db_sync`,
`fernet_setup`, `credential_setup` and `bootstrap` (an `admin` user with the
`admin` role on the `admin` project), and serves the identity API with the
package's own `keystone-wsgi-public` (the WSGI app on wsgiref) on
127.0.0.1. `project_token` makes a project, a user with the `member` role on
it, and returns a token scoped to that project, through the real API.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.tenants import free_port

KEYSTONE_MANAGE = "/usr/bin/keystone-manage"
KEYSTONE_WSGI = "/usr/bin/keystone-wsgi-public"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's keystone lives in the system's Python
ADMIN_PASSWORD = "admin-secret-for-tests"


def keystone_missing() -> str | None:
    """Why Keystone cannot run here, or None."""
    for path in (KEYSTONE_MANAGE, KEYSTONE_WSGI, SYSTEM_PYTHON):
        if not Path(path).exists():
            return f"{path} is not installed (make venv installs Debian's keystone)"
    return None


class KeystoneServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="keystone-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v3"
        self.config = self.root / "keystone.conf"
        self.log = self.root / "server.log"
        self._process: subprocess.Popen[bytes] | None = None

    def _manage(self, *args: str) -> None:
        done = subprocess.run(
            [SYSTEM_PYTHON, KEYSTONE_MANAGE, "--config-file", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"keystone-manage {args[0]} failed: {done.stderr[-3000:]}")

    def start(self) -> KeystoneServer:
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> KeystoneServer:
        root = self.root
        self.config.write_text(
            "[DEFAULT]\n"
            f"log_dir = {root}\nlog_file = keystone.log\n"
            "[database]\n"
            f"connection = sqlite:///{root}/keystone.db\n"
            "[token]\nprovider = fernet\nexpiration = 3600\n"
            f"[fernet_tokens]\nkey_repository = {root}/fernet-keys\n"
            f"[fernet_receipts]\nkey_repository = {root}/fernet-receipts\n"
            f"[credential]\nkey_repository = {root}/credential-keys\n"
            "[catalog]\ndriver = sql\n"
        )
        user = ["--keystone-user", "root", "--keystone-group", "root"]
        self._manage("db_sync")
        self._manage("fernet_setup", *user)
        self._manage("credential_setup", *user)
        self._manage(
            "bootstrap",
            "--bootstrap-password", ADMIN_PASSWORD,
            "--bootstrap-admin-url", self.url,
            "--bootstrap-public-url", self.url,
            "--bootstrap-region-id", "RegionOne",
        )  # fmt: skip
        env = {**os.environ, "OS_KEYSTONE_CONFIG_DIR": str(root)}
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [SYSTEM_PYTHON, KEYSTONE_WSGI, "--host", "127.0.0.1", "--port", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"keystone exited at start: {self.log_tail()}")
            try:
                if httpx.get(self.url, timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"keystone did not answer on {self.url}: {self.log_tail()}")

    def log_tail(self) -> str:
        texts = []
        for path in (self.log, self.root / "keystone.log"):
            if path.exists():
                texts.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(texts)

    # -- the identity API, as an operator and users use it ----------------------------
    def token(self, user: str, password: str, project: str) -> str:
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {"user": {"name": user, "domain": {"id": "default"}, "password": password}},
                },
                "scope": {"project": {"name": project, "domain": {"id": "default"}}},
            }
        }
        answer = httpx.post(f"{self.url}/auth/tokens", json=body, timeout=60)
        assert answer.status_code == 201, answer.text
        return answer.headers["X-Subject-Token"]

    def admin_token(self) -> str:
        return self.token("admin", ADMIN_PASSWORD, "admin")

    def project_token(self, project: str, user: str, password: str) -> tuple[str, str]:
        """A new project and member user; the user's token scoped to it, and the project's ID."""
        headers = {"X-Auth-Token": self.admin_token()}
        with httpx.Client(base_url=self.url, headers=headers, timeout=60) as api:
            made = api.post("/projects", json={"project": {"name": project, "domain_id": "default"}})
            assert made.status_code == 201, made.text
            project_id = made.json()["project"]["id"]
            body = {"user": {"name": user, "password": password, "domain_id": "default"}}
            made = api.post("/users", json=body)
            assert made.status_code == 201, made.text
            user_id = made.json()["user"]["id"]
            roles = api.get("/roles", params={"name": "member"}).json()["roles"]
            granted = api.put(f"/projects/{project_id}/users/{user_id}/roles/{roles[0]['id']}")
            assert granted.status_code == 204, granted.text
        return self.token(user, password, project), project_id

    def unscoped_token(self, user: str, password: str) -> str:
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {"user": {"name": user, "domain": {"id": "default"}, "password": password}},
                }
            }
        }
        answer = httpx.post(f"{self.url}/auth/tokens", json=body, timeout=60)
        assert answer.status_code == 201, answer.text
        return answer.headers["X-Subject-Token"]

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> KeystoneServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
