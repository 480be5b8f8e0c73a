"""Tenants through the network API: two tenants, each with the real docker CLI
(its own DOCKER_HOST, DOCKER_CERT_PATH and config.json with its bearer
token) and docker-py, against one hyperd serving them on a loopback TLS port.

What each tenant can see and touch is its own: another tenant's container
answers 404 to every verb, by ID, prefix or name, and both may have a
container named `web`. Bad, unknown and revoked keys get 401 saying nothing
of the server's contents. Quotas refuse with the quota's name and use, and
hold under 50 concurrent creates. The admin, on the local sockets, sees
everyone's. Containers made with `create` boot no VM; the module runs two.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

from hyper.image import ImageStore
from hyper.tenants import signing
from hyper.tenants.model import derive_signing_key
from tests.integration.conftest import BUSYBOX
from tests.integration.test_docker_containers import serving
from tests.support.docker_env import DOCKER_CLI, docker_cli_available, docker_py_available
from tests.support.tenants import TenantClient, TenantListener, admin, admin_ok, tenant_hyperd

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not docker_cli_available(), reason=f"the docker CLI is not at {DOCKER_CLI}"),
    pytest.mark.skipif(not docker_py_available(), reason="docker-py is not installed"),
]


@pytest.fixture(scope="module")
def listener(image_state: Path, shared_cache: Path) -> Iterator[TenantListener]:
    with tempfile.TemporaryDirectory(prefix="tenants-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        ImageStore(state / "images").tag(BUSYBOX, "busybox:latest")
        made = tenant_hyperd(state=state, cache=shared_cache)
        with serving(made.daemon):
            admin_ok(made.daemon, "tenant", "public", "add", "busybox:latest")
            for name in ("alpha", "beta"):
                admin_ok(made.daemon, "tenant", "create", name)
            yield made


@pytest.fixture(scope="module")
def alpha(listener: TenantListener) -> TenantClient:
    return TenantClient.with_new_key(listener, "alpha")


@pytest.fixture(scope="module")
def beta(listener: TenantListener) -> TenantClient:
    return TenantClient.with_new_key(listener, "beta")


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def webs(alpha: TenantClient, beta: TenantClient) -> dict[str, str]:
    """Each tenant's running container named `web` (one VM each), by tenant."""
    return {
        client.name: ok(client.docker("run", "-d", "--name", "web", "busybox", "sleep", "3600")).strip()
        for client in (alpha, beta)
    }


def test_each_tenant_sees_its_own_web_and_not_the_others(
    listener: TenantListener, alpha: TenantClient, beta: TenantClient, webs: dict[str, str]
) -> None:
    assert webs["alpha"] != webs["beta"]
    for me, other in ((alpha, beta), (beta, alpha)):
        mine, theirs = webs[me.name], webs[other.name]
        assert ok(me.docker("ps", "-aq", "--no-trunc")).split() == [mine]
        assert json.loads(ok(me.docker("inspect", "web")))[0]["Id"] == mine
        assert theirs[:12] not in ok(me.docker("ps", "-a"))
        assert ok(me.docker("exec", "web", "echo", "in", me.name)) == f"in {me.name}\n"
        with closing(me.docker_py()) as client:
            assert [c.id for c in client.containers.list(all=True)] == [mine]
            assert client.containers.get("web").id == mine
    with listener.daemon.http() as http:  # the admin's Docker socket sees both
        listed = {c["Id"] for c in http.get("/containers/json", params={"all": "1"}).json()}
    assert {webs["alpha"], webs["beta"]} <= listed


@pytest.mark.parametrize(
    "verb",
    [
        ("container", "inspect", "{ref}"),
        ("logs", "{ref}"),
        ("exec", "{ref}", "true"),
        ("top", "{ref}"),
        ("stats", "--no-stream", "{ref}"),
        ("port", "{ref}"),
        ("stop", "-t", "1", "{ref}"),
        ("kill", "{ref}"),
        ("pause", "{ref}"),
        ("restart", "-t", "1", "{ref}"),
        ("rename", "{ref}", "taken"),
        ("cp", "{ref}:/etc/hostname", "-"),
        ("wait", "{ref}"),
        ("rm", "-f", "{ref}"),
        ("attach", "--no-stdin", "{ref}"),
    ],
    ids=lambda verb: verb[0] if verb[0] != "container" else verb[1],
)
def test_every_verb_on_the_other_tenants_container_is_no_such_container(
    alpha: TenantClient, beta: TenantClient, webs: dict[str, str], verb: tuple[str, ...]
) -> None:
    theirs = webs["beta"]
    for ref in (theirs, theirs[:12]):
        done = alpha.docker(*(part.format(ref=ref) for part in verb), timeout=60)
        assert done.returncode != 0 or verb[:2] == ("rm", "-f"), done.stdout  # rm -f: gone either way
        assert "no such container" in done.stderr.lower(), done.stderr
    # beta's container is as it was
    state = json.loads(ok(beta.docker("inspect", "web")))[0]
    assert state["Id"] == theirs and state["State"]["Running"] and state["Name"] == "/web"


def test_docker_py_and_http_answer_404_for_the_other_tenants_objects(
    alpha: TenantClient, beta: TenantClient, webs: dict[str, str]
) -> None:
    import docker.errors

    theirs = webs["beta"]
    with closing(alpha.docker_py()) as client, pytest.raises(docker.errors.NotFound):
        client.containers.get(theirs)
    with alpha.http() as http:
        for method, path in (
            ("GET", f"/containers/{theirs}/json"),
            ("GET", f"/containers/{theirs}/logs?stdout=1"),
            ("POST", f"/containers/{theirs}/exec"),
            ("POST", f"/containers/{theirs}/stop"),
            ("DELETE", f"/containers/{theirs}?force=1"),
            ("GET", f"/containers/{theirs}/archive?path=/"),
        ):
            answer = http.request(method, path, json={"Cmd": ["true"]} if path.endswith("exec") else None)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json() == {"message": f"No such container: {theirs}"}
        # events: alpha's stream shows none of beta's containers
        events = http.get("/events", params={"since": "0", "until": str(int(time.time()) + 1)}).text
    assert theirs not in events and webs["alpha"] in events


def test_the_other_tenants_networks_are_not_seen(alpha: TenantClient, beta: TenantClient) -> None:
    made = ok(beta.docker("network", "create", "beta-net")).strip()
    try:
        names = ok(alpha.docker("network", "ls", "--format", "{{.Name}}")).split()
        assert "beta-net" not in names
        done = alpha.docker("network", "inspect", made)
        assert done.returncode != 0 and "beta-net" not in done.stderr
        done = alpha.docker("network", "rm", "beta-net")
        assert done.returncode != 0 and "not found" in done.stderr.lower(), done.stderr
        ok(alpha.docker("network", "create", "beta-net"))  # its own, of the same name
        ok(alpha.docker("network", "rm", "beta-net"))
    finally:
        ok(beta.docker("network", "rm", made))


def test_bad_unknown_and_revoked_keys_get_401_and_nothing_else(
    listener: TenantListener, webs: dict[str, str]
) -> None:
    fresh = TenantClient.with_new_key(listener, "alpha")
    ok(fresh.docker("ps"))
    admin_ok(listener.daemon, "tenant", "key", "revoke", "alpha", fresh.key_id)
    token = fresh.headers["Authorization"]
    key_id = fresh.key_id
    cases = {
        "none": {},
        "garbage": {"Authorization": "Bearer nonsense"},
        "wrong secret": {"Authorization": f"Bearer {key_id}.{'A' * 43}"},
        "unknown scheme": {"Authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"},
        "revoked": {"Authorization": token},
    }
    for number, (case, headers) in enumerate(cases.items(), start=10):
        with fresh.http(headers={}, source=f"127.0.0.{number}") as http:  # fewer failures than throttle
            for method, path in (
                ("GET", "/containers/json"),
                ("GET", f"/containers/{webs['alpha']}/json"),
                ("GET", "/no/such/path"),
                ("DELETE", f"/containers/{webs['alpha']}"),
                ("GET", "/_ping"),
            ):
                answer = http.request(method, path, headers=headers)
                assert answer.status_code == 401, (case, path, answer.text)
                assert set(answer.json()) == {"message"}, answer.text
                assert webs["alpha"] not in answer.text and "web" not in answer.text
                assert "Bearer" in answer.headers["WWW-Authenticate"]
    done = fresh.docker("ps")
    assert done.returncode != 0 and "revoked" in done.stderr, done.stderr
    assert webs["alpha"][:12] not in done.stdout + done.stderr


def test_a_tenant_cannot_mount_host_directories_or_publish_low_ports(alpha: TenantClient) -> None:
    for mount in (("-v", "/etc:/host"), ("--mount", "type=bind,source=/etc,target=/host")):
        done = alpha.docker("create", *mount, "busybox", "true")
        assert done.returncode != 0 and "cannot mount a host directory (/etc)" in done.stderr, done.stderr
    done = alpha.docker("create", "-p", "80:80", "busybox", "true")
    assert done.returncode != 0 and "host port 80" in done.stderr, done.stderr


def test_a_quota_refuses_with_its_name_and_use(listener: TenantListener) -> None:
    admin_ok(listener.daemon, "tenant", "create", "gamma", "--quota", "containers=2", "--quota", "memory=1g")
    gamma = TenantClient.with_new_key(listener, "gamma")
    made = [ok(gamma.docker("create", "busybox", "true")).strip() for _ in range(2)]
    done = gamma.docker("create", "busybox", "true")
    assert done.returncode != 0
    assert "quota exceeded: tenant gamma may have 2 containers and uses 2" in done.stderr, done.stderr
    ok(gamma.docker("rm", made[0]))
    done = gamma.docker("create", "-m", "2g", "busybox", "true")
    assert done.returncode != 0 and "memory (MiB)" in done.stderr, done.stderr
    ok(gamma.docker("create", "busybox", "true"))  # the freed place
    inspected = json.loads(admin_ok(listener.daemon, "tenant", "inspect", "gamma"))[0]
    assert inspected["holds"]["containers"] == 2 and inspected["quotas"]["containers"] == 2


def test_fifty_concurrent_creates_against_a_quota_of_ten_make_ten(listener: TenantListener) -> None:
    admin_ok(
        listener.daemon,
        "tenant",
        "create",
        "delta",
        "--quota",
        "containers=10",
        "--quota",
        "api-requests=100",
    )
    delta = TenantClient.with_new_key(listener, "delta")
    body = {"Image": "busybox", "Cmd": ["true"]}

    def create(index: int) -> int:
        with delta.http() as http:
            return http.post("/containers/create", params={"name": f"c{index}"}, json=body).status_code

    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(create, range(50)))
    assert statuses.count(201) == 10, statuses
    assert all(status in (201, 403, 409, 429) for status in statuses), statuses
    assert len(ok(delta.docker("ps", "-aq")).split()) == 10


def test_the_audit_log_records_tenants_mutations_in_an_intact_chain(
    listener: TenantListener, webs: dict[str, str]
) -> None:
    entries = [
        json.loads(line)
        for line in admin_ok(listener.daemon, "tenant", "audit", "--format", "json").splitlines()
    ]
    created = [e for e in entries if e["tenant_name"] == "beta" and e["object"] == webs["beta"]]
    assert any(e["action"].endswith("/start") and e["result"] == 204 for e in created), created
    assert "intact" in admin_ok(listener.daemon, "tenant", "audit", "--verify")
    assert admin(listener.daemon, "tenant", "rm", "beta").returncode != 0  # it still has containers


def test_a_thousand_failed_logins_are_throttled_and_others_still_served(
    listener: TenantListener, alpha: TenantClient, webs: dict[str, str]
) -> None:
    bad = {"Authorization": f"Bearer {alpha.key_id}.{'B' * 43}"}
    statuses = []
    with alpha.http(headers=bad, source="127.0.0.3") as http:
        for _ in range(1000):
            answer = http.get("/containers/json")
            statuses.append(answer.status_code)
            assert webs["alpha"] not in answer.text
    assert set(statuses) == {401, 429} and statuses[0] == 401 and statuses[-1] == 429, statuses
    assert "too many failed logins from 127.0.0.3" in answer.json()["message"]
    assert int(answer.headers["Retry-After"]) >= 1
    with alpha.http() as http:  # the tenant, from another address, is served
        assert [c["Id"] for c in http.get("/containers/json").json()] == [webs["alpha"]]

    # Behind one address (a NAT): the guessed key stays throttled there, even with its
    # real secret; another key from that address is served; made-up keys are throttled
    # per address without touching the real ones.
    with alpha.http(source="127.0.0.3") as http:
        assert http.get("/containers/json").status_code == 429
    other = TenantClient.with_new_key(listener, "alpha")
    with other.http(source="127.0.0.3") as http:
        assert [c["Id"] for c in http.get("/containers/json").json()] == [webs["alpha"]]
    made_up = {"Authorization": f"Bearer HK{'A' * 16}.{'C' * 43}"}
    with other.http(headers=made_up, source="127.0.0.3") as http:
        sprayed = [http.get("/_ping").status_code for _ in range(25)]
    assert sprayed[0] == 401 and sprayed[-1] == 429, sprayed
    with other.http(source="127.0.0.3") as http:
        assert http.get("/containers/json").status_code == 200


def signed(key: dict[str, str], method: str, path: str, body: bytes = b"", **query: str) -> dict[str, str]:
    signing_key = derive_signing_key(key["secret"])
    return signing.sign_headers(
        key["id"], signing_key, method=method, path=path, query=list(query.items()), body=body
    )


def test_signed_requests_act_once_and_any_change_is_refused(listener: TenantListener) -> None:
    key = json.loads(admin_ok(listener.daemon, "tenant", "key", "create", "alpha", "--format", "json"))
    client = TenantClient(listener, "alpha-signed", {}, key["id"])
    body = json.dumps({"Image": "busybox", "Cmd": ["true"]}).encode()
    with client.http(headers={}, source="127.0.0.40") as http:
        headers = signed(key, "POST", "/containers/create", body, name="signed")
        made = http.post("/containers/create", params={"name": "signed"}, content=body, headers=headers)
        assert made.status_code == 201, made.text
        again = http.post("/containers/create", params={"name": "signed"}, content=body, headers=headers)
        assert again.status_code == 401 and "a replay" in again.text, again.text
        for query, content in ((("name", "other"),), body), ((("name", "signed2"),), body + b" "):
            headers = signed(key, "POST", "/containers/create", body, name="signed2")
            changed = http.post("/containers/create", params=dict(query), content=content, headers=headers)
            assert changed.status_code == 401, (query, content, changed.text)
        listed = http.get(
            "/containers/json", params={"all": "1"}, headers=signed(key, "GET", "/containers/json", all="1")
        )
        assert made.json()["Id"] in [c["Id"] for c in listed.json()]
        http.delete(
            f"/containers/{made.json()['Id']}",
            headers=signed(key, "DELETE", f"/containers/{made.json()['Id']}"),
        )
    admin_ok(listener.daemon, "tenant", "key", "revoke", "alpha", key["id"])


def test_hyperd_restart_keeps_tenants_keys_quotas_and_owners(image_state: Path, shared_cache: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tenants-restart-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        ImageStore(state / "images").tag(BUSYBOX, "busybox:latest")
        made = tenant_hyperd(state=state, cache=shared_cache)
        with serving(made.daemon) as daemon:
            admin_ok(daemon, "tenant", "public", "add", "busybox:latest")
            admin_ok(daemon, "tenant", "create", "alpha", "--quota", "containers=1")
            admin_ok(daemon, "tenant", "create", "beta")
            alpha = TenantClient.with_new_key(made, "alpha")
            beta = TenantClient.with_new_key(made, "beta")
            revoked = TenantClient.with_new_key(made, "beta")
            admin_ok(daemon, "tenant", "key", "revoke", "beta", revoked.key_id)
            webs = {
                c.name: ok(c.docker("create", "--name", "web", "busybox", "true")).strip()
                for c in (alpha, beta)
            }
            daemon.keep_root = True  # the same state, certificate and port again
            daemon.close()
            daemon.start()
            daemon.keep_root = False
            for me in (alpha, beta):
                assert ok(me.docker("ps", "-aq", "--no-trunc")).split() == [webs[me.name]]
            done = alpha.docker("create", "busybox", "true")
            assert done.returncode != 0 and "may have 1 containers and uses 1" in done.stderr, done.stderr
            done = revoked.docker("ps")
            assert done.returncode != 0 and "revoked" in done.stderr, done.stderr
            assert {"alpha", "beta"} <= set(admin_ok(daemon, "tenant", "ls", "-q").split())
            assert "intact" in admin_ok(daemon, "tenant", "audit", "--verify")


def test_volumes_are_per_tenant_by_the_names_they_gave(
    listener: TenantListener, alpha: TenantClient, beta: TenantClient
) -> None:
    ok(alpha.docker("volume", "create", "data"))
    try:
        assert "data" not in ok(beta.docker("volume", "ls", "-q")).split()
        done = beta.docker("volume", "inspect", "data")
        assert done.returncode != 0 and "no such volume" in done.stderr, done.stderr
        done = beta.docker("volume", "rm", "data")
        assert done.returncode != 0 and "no such volume" in done.stderr, done.stderr
        ok(beta.docker("volume", "create", "data"))  # its own, of the same name
        for client in (alpha, beta):
            assert ok(client.docker("volume", "ls", "-q")).split() == ["data"]
            assert json.loads(ok(client.docker("volume", "inspect", "data")))[0]["Name"] == "data"
        ok(beta.docker("volume", "prune", "-af"))
        assert ok(alpha.docker("volume", "ls", "-q")).split() == ["data"]  # beta's prune took only its own
        with listener.daemon.http() as http:  # the admin sees both, by the store's names
            names = [v["Name"] for v in http.get("/volumes").json()["Volumes"]]
        assert len([n for n in names if n.endswith(".data")]) == 1
    finally:
        alpha.docker("volume", "rm", "-f", "data")
        beta.docker("volume", "rm", "-f", "data")


def test_a_tenant_cannot_join_or_borrow_from_the_other_tenants_container(
    alpha: TenantClient, webs: dict[str, str]
) -> None:
    theirs = webs["beta"]
    done = alpha.docker("create", "--network", f"container:{theirs}", "busybox", "true")
    assert done.returncode != 0 and "no such container" in done.stderr.lower(), done.stderr
    done = alpha.docker("create", "--volumes-from", theirs, "busybox", "true")
    assert done.returncode != 0 and "no such container" in done.stderr.lower(), done.stderr
    assert theirs not in ok(alpha.docker("ps", "-aq", "--no-trunc"))


def test_a_tenants_container_never_takes_a_pooled_vm(image_state: Path, shared_cache: Path) -> None:
    """The pool's ready VMs are clones of the admin's template: a tenant boots from its own."""
    from hyper.cli.client import DaemonClient

    with tempfile.TemporaryDirectory(prefix="tenants-pool-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        ImageStore(state / "images").tag(BUSYBOX, "busybox:latest")
        made = tenant_hyperd(state=state, cache=shared_cache, extra=("--pool", "1", "--pool-memory", "1g"))
        with serving(made.daemon) as daemon:

            def pool() -> dict[str, object]:
                with DaemonClient(daemon.socket) as client:
                    return client.pool()

            deadline = time.monotonic() + 300
            while pool()["ready"] != 1:
                assert time.monotonic() < deadline, f"no ready VM: {pool()}"
                time.sleep(0.2)
            admin_ok(daemon, "tenant", "public", "add", "busybox:latest")
            admin_ok(daemon, "tenant", "create", "alpha")
            alpha = TenantClient.with_new_key(made, "alpha")
            assert ok(alpha.docker("run", "--rm", "busybox", "echo", "booted")) == "booted\n"
            assert pool()["claimed"] == 0 and pool()["ready"] == 1, pool()


def test_images_and_prunes_stay_within_a_tenant(alpha: TenantClient, beta: TenantClient) -> None:
    ok(alpha.docker("tag", "busybox", "alpha-only:1"))
    try:
        assert "alpha-only" in ok(alpha.docker("images", "--format", "{{.Repository}}"))
        assert "alpha-only" not in ok(beta.docker("images", "--format", "{{.Repository}}"))
        done = beta.docker("image", "inspect", "alpha-only:1")
        assert done.returncode != 0 and "no such image" in done.stderr.lower(), done.stderr
        done = beta.docker("rmi", "alpha-only:1")
        assert done.returncode != 0, done.stdout
        # busybox is public: beta sees it too, and alpha's tag leaves beta's view alone
        assert "busybox" in ok(beta.docker("images", "--format", "{{.Repository}}"))
        stopped = ok(beta.docker("create", "--name", "stopped", "busybox", "true")).strip()
        pruned = ok(alpha.docker("container", "prune", "-f"))
        assert stopped not in pruned
        assert json.loads(ok(beta.docker("inspect", "stopped")))[0]["Id"] == stopped
    finally:
        alpha.docker("rmi", "alpha-only:1")
        beta.docker("rm", "-f", "stopped")
