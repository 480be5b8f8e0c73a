"""Bearer-token authentication against Debian's real `docker-registry`, with skopeo as the witness.

The registry runs with distribution's `auth: token:` and trusts a
`TokenServer` from `tests.support.token_server`: a writer (pull and push
everywhere), a reader (pull only) and an anonymous account with no rights.
The tests log in, push and pull through the `hyper` CLI, check the results
with skopeo, and check with the token server's record which scopes Hyper
asked for and was given.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyper.image import ImageStore
from tests.integration.test_registry import assert_store_consistent, hyper, skopeo_digest, skopeo_push
from tests.support.images import file, layer_tar
from tests.support.registry import RegistryServer, registry_available, skopeo
from tests.support.token_server import ANONYMOUS, IssuedToken, ResourceAccess, TokenServer, TokenUser

pytestmark = [
    pytest.mark.skipif(not registry_available(), reason="docker-registry or openssl is not installed"),
    pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is not installed"),
]

WRITER, WRITER_PASSWORD = "writer", "w-s3cret"
READER, READER_PASSWORD = "reader", "r-s3cret"
LAYER = layer_tar([file("etc/motd", b"token auth\n" * 100)])


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    users = {
        WRITER: TokenUser(WRITER_PASSWORD, {"*": ("pull", "push")}),
        READER: TokenUser(READER_PASSWORD, {"*": ("pull",)}),
    }
    with TokenServer(tmp_path_factory.mktemp("token"), users=users) as server:
        yield server


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry"), token=token_server.auth_config()) as server:
        yield server


@pytest.fixture(scope="module")
def seeded(
    tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer, token_server: TokenServer
) -> tuple[str, str]:
    """An image pushed by skopeo through the token service: (name, manifest digest)."""
    name = f"{registry.host}/team/seed:v1"
    digest = skopeo_push(tmp_path_factory.mktemp("seed"), name, [LAYER], f"{WRITER}:{WRITER_PASSWORD}")
    return name, digest


@pytest.fixture
def tokens(token_server: TokenServer) -> TokenServer:
    """The token server with an empty record, for a test to check what it issued."""
    token_server.clear()
    return token_server


def login(tmp_path: Path, host: str, user: str, password: str) -> None:
    logged_in = hyper(tmp_path, "login", "-u", user, "--password-stdin", host, stdin=password)
    assert logged_in.returncode == 0 and logged_in.stdout.strip() == "Login Succeeded", logged_in.stderr


def repository(name: str, *actions: str) -> ResourceAccess:
    return ResourceAccess("repository", name, actions)


def issued_for(tokens: TokenServer, account: str) -> list[IssuedToken]:
    return [token for token in tokens.issued if token.account == account]


def test_login_push_and_pull_with_bearer_tokens(
    tmp_path: Path, registry: RegistryServer, tokens: TokenServer
) -> None:
    wrong = hyper(tmp_path, "login", "-u", WRITER, "--password-stdin", registry.host, stdin="nope")
    assert wrong.returncode == 125 and "rejected the credentials" in wrong.stderr, wrong.stderr
    assert not (tmp_path / "docker/config.json").exists()
    assert tokens.issued == []  # a wrong password gets no token

    login(tmp_path, registry.host, WRITER, WRITER_PASSWORD)
    [login_token] = tokens.issued
    service = tokens.auth_config().service
    assert (login_token.account, login_token.requested, login_token.service) == (WRITER, (), service)

    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(LAYER)
    name = f"{registry.host}/team/app:v1"
    imported = hyper(tmp_path, "import", "-c", 'CMD ["sh"]', str(rootfs), name)
    assert imported.returncode == 0, imported.stderr
    tokens.clear()
    pushed = hyper(tmp_path, "push", name)
    assert pushed.returncode == 0, pushed.stderr
    [local] = json.loads(hyper(tmp_path, "image", "inspect", name).stdout)
    digest = local["Metadata"]["ManifestDigest"]
    assert pushed.stdout.splitlines()[-1].startswith(f"v1: digest: {digest} size: ")
    assert {(t.account, t.requested, t.granted) for t in tokens.issued} == {
        (WRITER, (repository("team/app", "pull", "push"),), (repository("team/app", "pull", "push"),))
    }
    assert skopeo_digest(name, f"--creds={WRITER}:{WRITER_PASSWORD}") == digest

    tokens.clear()
    puller = tmp_path / "puller"
    shutil.copytree(tmp_path / "docker", puller / "docker")  # the same login, an empty image store
    pulled = hyper(puller, "pull", name)
    assert pulled.returncode == 0, pulled.stderr
    assert f"Digest: {digest}" in pulled.stdout.splitlines()
    [again] = json.loads(hyper(puller, "image", "inspect", name).stdout)
    assert (again["Id"], again["Metadata"]["ManifestDigest"]) == (local["Id"], digest)
    assert {(t.account, t.requested, t.granted) for t in tokens.issued} == {
        (WRITER, (repository("team/app", "pull"),), (repository("team/app", "pull"),))
    }
    assert_store_consistent(puller / "state/images")


def test_pull_of_an_image_pushed_by_skopeo(
    tmp_path: Path, registry: RegistryServer, seeded: tuple[str, str], tokens: TokenServer
) -> None:
    name, digest = seeded
    login(tmp_path, registry.host, READER, READER_PASSWORD)
    pulled = hyper(tmp_path, "pull", "-q", name)
    assert pulled.returncode == 0, pulled.stderr
    [image] = json.loads(hyper(tmp_path, "image", "inspect", name).stdout)
    assert image["Metadata"]["ManifestDigest"] == digest
    pulls = [t for t in issued_for(tokens, READER) if t.requested]
    assert pulls and all(t.granted == (repository("team/seed", "pull"),) for t in pulls)
    assert_store_consistent(tmp_path / "state/images")


def test_anonymous_pull_is_refused_and_stores_nothing(
    tmp_path: Path, registry: RegistryServer, seeded: tuple[str, str], tokens: TokenServer
) -> None:
    name, _ = seeded
    pulled = hyper(tmp_path, "pull", name)
    assert pulled.returncode == 125
    assert "requires authentication" in pulled.stderr, pulled.stderr
    assert f"hyper login {registry.host}" in pulled.stderr
    assert len(pulled.stderr.strip().splitlines()) <= 2, pulled.stderr  # one error and its hint
    # The anonymous account asked for pull and was given nothing.
    anonymous = issued_for(tokens, ANONYMOUS)
    assert anonymous and all(t.requested == (repository("team/seed", "pull"),) for t in anonymous)
    assert all(t.granted == (repository("team/seed"),) for t in anonymous)
    store = ImageStore(tmp_path / "state/images")
    assert store.images() == [] and list(store.blobs.digests()) == []
    assert_store_consistent(tmp_path / "state/images")


def test_a_reader_cannot_push(
    tmp_path: Path, registry: RegistryServer, seeded: tuple[str, str], tokens: TokenServer
) -> None:
    name, digest = seeded
    login(tmp_path, registry.host, READER, READER_PASSWORD)
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(layer_tar([file("etc/motd", b"written by a reader\n")]))
    target = f"{registry.host}/team/seed:from-reader"
    assert hyper(tmp_path, "import", str(rootfs), target).returncode == 0
    tokens.clear()

    pushed = hyper(tmp_path, "push", target)
    assert pushed.returncode == 125
    assert "denied access" in pushed.stderr and "rejected the credentials" not in pushed.stderr, pushed.stderr
    reader_tokens = issued_for(tokens, READER)
    assert reader_tokens and all(
        t.requested == (repository("team/seed", "pull", "push"),)
        and t.granted == (repository("team/seed", "pull"),)
        for t in reader_tokens
    )
    writer = f"--creds={WRITER}:{WRITER_PASSWORD}"
    missing = skopeo("inspect", "--tls-verify=false", writer, f"docker://{target}")
    assert missing.returncode != 0 and "manifest unknown" in missing.stderr, missing.stderr
    assert skopeo_digest(name, writer) == digest  # the tag it could read is untouched
