"""OpenStack Keystone as a source of tenants, against Debian's real `keystone`.

The test starts Keystone on loopback (sqlite, Fernet tokens; see
tests/support/keystone.py) and hyperd with `--tenant-listen` and
`--keystone-url`. Users of two projects put their project-scoped tokens in
the docker CLI's config.json (`HttpHeaders: {"X-Auth-Token": …}`): each
project acts as its own Hyper tenant, made at its first request, and sees
only its own containers. Unknown and unscoped tokens get 401. A second hyperd
checks tokens as a service user (a credentials file) instead of letting
tokens check themselves. No VM boots: containers are created, not started.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hyper.image import ImageStore
from tests.integration.conftest import BUSYBOX
from tests.integration.test_docker_containers import serving
from tests.support.docker_env import DOCKER_CLI, docker_cli_available
from tests.support.keystone import ADMIN_PASSWORD, KeystoneServer, keystone_missing
from tests.support.tenants import TenantClient, TenantListener, admin_ok, tenant_hyperd

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not docker_cli_available(), reason=f"the docker CLI is not at {DOCKER_CLI}"),
    pytest.mark.skipif(keystone_missing() is not None, reason=str(keystone_missing())),
]


@pytest.fixture(scope="module")
def keystone() -> Iterator[KeystoneServer]:
    with KeystoneServer() as server:
        yield server


@pytest.fixture(scope="module")
def state(image_state: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tenants-keystone-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        ImageStore(state / "images").tag(BUSYBOX, "busybox:latest")
        yield state


@contextmanager
def listening(state: Path, cache: Path, *extra: str) -> Iterator[TenantListener]:
    made = tenant_hyperd(state=state, cache=cache, extra=extra)
    with serving(made.daemon):
        admin_ok(made.daemon, "tenant", "public", "add", "busybox:latest")
        yield made


@pytest.fixture(scope="module")
def listener(keystone: KeystoneServer, state: Path, shared_cache: Path) -> Iterator[TenantListener]:
    with listening(state, shared_cache, "--keystone-url", keystone.url) as made:
        yield made


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return done.stdout


def test_each_keystone_project_is_a_tenant_of_its_own(
    keystone: KeystoneServer, listener: TenantListener
) -> None:
    token_a, project_a = keystone.project_token("project-a", "user-a", "password-a")
    token_b, project_b = keystone.project_token("project-b", "user-b", "password-b")
    a = TenantClient(listener, "project-a", {"X-Auth-Token": token_a})
    b = TenantClient(listener, "project-b", {"X-Auth-Token": token_b})
    made = {
        client.name: ok(client.docker("create", "--name", "web", "busybox", "true")).strip()
        for client in (a, b)
    }
    assert made["project-a"] != made["project-b"]
    for me, other in ((a, b), (b, a)):
        assert ok(me.docker("ps", "-aq", "--no-trunc")).split() == [made[me.name]]
        done = me.docker("container", "inspect", made[other.name])
        assert done.returncode != 0 and "No such container" in done.stderr, done.stderr
    tenants = {
        t["name"]: t
        for t in map(json.loads, admin_ok(listener.daemon, "tenant", "ls", "--format", "json").splitlines())
    }
    assert tenants["project-a"]["keystone_project"] == project_a
    assert tenants["project-b"]["keystone_project"] == project_b
    audit = admin_ok(listener.daemon, "tenant", "audit", "--tenant", "project-a", "--format", "json")
    keys = {json.loads(line)["key"] for line in audit.splitlines()}
    assert len(keys) == 1 and next(iter(keys)).startswith("keystone:")


def test_unknown_and_unscoped_tokens_get_401(keystone: KeystoneServer, listener: TenantListener) -> None:
    unscoped = keystone.unscoped_token("admin", ADMIN_PASSWORD)
    for number, (token, says) in enumerate(
        (
            ("gAAAAABnot-a-real-fernet-token", "not valid"),
            (unscoped, "not scoped to a project"),
        ),
        start=20,
    ):
        client = TenantClient(listener, f"bad-{number}", {"X-Auth-Token": token})
        with client.http(source=f"127.0.0.{number}") as http:
            answer = http.get("/containers/json")
        assert answer.status_code == 401, answer.text
        assert says in answer.json()["message"], answer.text
    oversized = TenantClient(listener, "oversized", {"X-Auth-Token": "x" * 10_000})
    with oversized.http(source="127.0.0.30") as http:
        answer = http.get("/containers/json")
    assert answer.status_code == 400  # aiohttp's, before any handler: nothing of the server's is said
    assert "refused a malformed request from 127.0.0.30 (400)" in listener.daemon.log_tail()


def test_a_service_user_checks_the_tokens(
    keystone: KeystoneServer, state: Path, shared_cache: Path, tmp_path: Path
) -> None:
    credentials = tmp_path / "keystone.json"
    credentials.write_text(
        json.dumps({"username": "admin", "password": ADMIN_PASSWORD, "project_name": "admin"})
    )
    token, _ = keystone.project_token("project-c", "user-c", "password-c")
    with listening(
        state, shared_cache, "--keystone-url", keystone.url, "--keystone-credentials", str(credentials)
    ) as made:
        client = TenantClient(made, "project-c", {"X-Auth-Token": token})
        assert ok(client.docker("ps", "-q")) == ""
        assert "project-c" in admin_ok(made.daemon, "tenant", "ls", "-q").split()
        bad = TenantClient(made, "bad", {"X-Auth-Token": "gAAAAABnot-a-real-fernet-token"})
        done = bad.docker("ps")
        assert done.returncode != 0 and "not valid" in done.stderr, done.stderr
