"""The image endpoints of hyperd's Docker Engine API, driven by the real `docker`
CLI and docker-py against a real registry (Debian's docker-registry).

Each test starts its own hyperd with `--docker-socket` on temporary state; the
registry and the image pushed into it (busybox from busybox-static, pushed by
Hyper's own client) are shared by the module. No test boots a VM.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hyper.image import ImageConfig, ImageStore
from hyper.image.registry import Credentials, CredentialStore, RegistryOptions, RegistrySettings, push_image
from tests.support.docker_env import DOCKER_CLI, DockerHyperd, docker_cli_available, docker_py_available
from tests.support.images import file, layer_tar, make_busybox_image
from tests.support.registry import RegistryServer, free_port, make_test_ca, registry_available

pytestmark = pytest.mark.skipif(not registry_available(), reason="docker-registry or openssl is missing")
needs_cli = pytest.mark.skipif(not docker_cli_available(), reason=f"the docker CLI is not at {DOCKER_CLI}")
needs_docker_py = pytest.mark.skipif(not docker_py_available(), reason="docker-py is not installed")

LABEL = ("org.example.role", "test")


@dataclass(frozen=True)
class Seeded:
    """An image in the registry: its name there, manifest digest, image ID and layers."""

    registry: RegistryServer
    reference: str
    repository: str
    digest: str
    image_id: str
    diff_ids: tuple[str, ...]

    @property
    def short_id(self) -> str:
        return self.image_id.removeprefix("sha256:")[:12]


def _push(store: ImageStore, reference: str, scratch: Path) -> str:
    options = RegistryOptions(settings=RegistrySettings(certs_dir=scratch / "certs.d"))
    return push_image(store, reference, options=options).digest


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def seeded(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    scratch = tmp_path_factory.mktemp("seed")
    store = ImageStore(scratch / "images")
    repository = f"{registry.host}/busybox"
    reference = f"{repository}:latest"
    config = ImageConfig(env=("PATH=/bin",), cmd=("sh",), working_dir="/tmp", labels=(LABEL,))
    image = make_busybox_image(store, reference, config)
    digest = _push(store, reference, scratch)
    return Seeded(registry, reference, repository, digest, image.id, image.diff_ids)


@pytest.fixture
def hyperd() -> Iterator[DockerHyperd]:
    with DockerHyperd() as daemon:
        yield daemon


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stdout}{result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"{result.args} succeeded: {result.stdout}"
    return result.stderr


def table(output: str) -> list[list[str]]:
    """A `docker images` table as rows of cells (split on runs of 2+ spaces), header dropped."""
    lines = output.strip().splitlines()
    return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


# -- pull and list ------------------------------------------------------------------------------------


@needs_cli
def test_docker_pull_prints_dockers_progress_and_status(hyperd: DockerHyperd, seeded: Seeded) -> None:
    lines = ok(hyperd.docker("pull", seeded.reference)).splitlines()
    layer = seeded.diff_ids[0].removeprefix("sha256:")
    assert lines[0] == "latest: Pulling from busybox"
    assert any(line.endswith(": Pull complete") for line in lines), lines
    assert f"Digest: {seeded.digest}" in lines
    assert f"Status: Downloaded newer image for {seeded.reference}" in lines
    assert lines[-1] == seeded.reference
    assert layer not in "\n".join(lines)  # layers are named by their blob digest, as Docker does

    again = ok(hyperd.docker("pull", seeded.reference)).splitlines()
    assert f"Status: Image is up to date for {seeded.reference}" in again
    assert any(line.endswith(": Already exists") for line in again), again


@needs_cli
def test_docker_images_lists_filters_and_quiet(hyperd: DockerHyperd, seeded: Seeded) -> None:
    assert table(ok(hyperd.docker("images"))) == []
    ok(hyperd.docker("pull", seeded.reference))

    [row] = table(ok(hyperd.docker("images")))
    assert row[:3] == [seeded.repository, "latest", seeded.short_id]
    assert row[-1].endswith("MB")
    assert ok(hyperd.docker("images", "-q")).split() == [seeded.short_id]
    assert ok(hyperd.docker("images", "-q", "--no-trunc")).split() == [seeded.image_id]
    [with_digest] = table(ok(hyperd.docker("images", "--digests")))
    assert with_digest[2] == seeded.digest

    # The positional argument is the reference filter: a glob on the name or name:tag.
    assert ok(hyperd.docker("images", "-q", seeded.repository)).split() == [seeded.short_id]
    assert ok(hyperd.docker("images", "-q", f"{seeded.registry.host}/busy*")).split() == [seeded.short_id]
    assert ok(hyperd.docker("images", "-q", "busybox")).split() == []
    assert ok(hyperd.docker("images", "-q", f"{seeded.repository}:other")).split() == []

    key, value = LABEL
    assert ok(hyperd.docker("images", "-q", "-f", f"label={key}={value}")).split() == [seeded.short_id]
    assert ok(hyperd.docker("images", "-q", "-f", f"label={key}=else")).split() == []
    assert ok(hyperd.docker("images", "-q", "-f", "dangling=true")).split() == []
    assert ok(hyperd.docker("images", "-q", "-f", "dangling=false")).split() == [seeded.short_id]
    assert "invalid filter" in failed(hyperd.docker("images", "-f", "colour=blue"))


# -- inspect and history -----------------------------------------------------------------------------


@needs_cli
def test_docker_image_inspect_and_history(hyperd: DockerHyperd, seeded: Seeded) -> None:
    ok(hyperd.docker("pull", seeded.reference))
    [document] = json.loads(ok(hyperd.docker("image", "inspect", seeded.reference)))
    assert document["Id"] == seeded.image_id
    assert document["RepoTags"] == [seeded.reference]
    assert document["RepoDigests"] == [f"{seeded.repository}@{seeded.digest}"]
    assert document["RootFS"] == {"Type": "layers", "Layers": list(seeded.diff_ids)}
    assert (document["Os"], document["Architecture"]) == ("linux", "amd64")
    config = document["Config"]
    assert (config["Cmd"], config["Env"], config["WorkingDir"]) == (["sh"], ["PATH=/bin"], "/tmp")
    assert config["Labels"] == dict([LABEL])
    assert config["Entrypoint"] is None
    assert document["Size"] > 1_000_000
    assert document["Created"].endswith("Z")

    # By short ID and by repository digest too; the CLI's templates work on the answer.
    by_id = ok(hyperd.docker("image", "inspect", "--format", "{{.Id}}", seeded.short_id))
    assert by_id.strip() == seeded.image_id
    by_digest = f"{seeded.repository}@{seeded.digest}"
    assert ok(hyperd.docker("image", "inspect", "-f", "{{.Os}}", by_digest)).strip() == "linux"

    template = "{{.ID}}|{{.CreatedBy}}"
    history = ok(hyperd.docker("history", "--no-trunc", "--format", template, seeded.short_id))
    [top] = history.splitlines()
    assert top.split("|") == [seeded.image_id, "hyper import rootfs.tar"]

    assert "No such image: nope" in failed(hyperd.docker("image", "inspect", "nope"))
    assert "No such image: Not-A-Reference" in failed(hyperd.docker("image", "inspect", "Not-A-Reference"))
    assert "No such image: nope" in failed(hyperd.docker("history", "nope"))


# -- tag and rmi ---------------------------------------------------------------------------------------


@needs_cli
def test_docker_tag_and_rmi(hyperd: DockerHyperd, seeded: Seeded) -> None:
    ok(hyperd.docker("pull", seeded.reference))
    ok(hyperd.docker("tag", seeded.reference, "mine:v1"))
    ok(hyperd.docker("tag", seeded.short_id, "localhost:5000/team/app"))
    rows = table(ok(hyperd.docker("images")))
    assert sorted((row[0], row[1], row[2]) for row in rows) == sorted(
        [
            (seeded.repository, "latest", seeded.short_id),
            ("mine", "v1", seeded.short_id),
            ("localhost:5000/team/app", "latest", seeded.short_id),
        ]
    )
    assert "No such image: nope" in failed(hyperd.docker("tag", "nope", "other"))

    # By ID, an image with several names is removed only by force.
    assert "conflict" in failed(hyperd.docker("rmi", seeded.short_id))
    untagged = ok(hyperd.docker("rmi", "mine:v1")).splitlines()
    assert "Untagged: mine:v1" in untagged
    assert not any(line.startswith("Deleted:") for line in untagged)
    ok(hyperd.docker("rmi", "localhost:5000/team/app"))

    removed = ok(hyperd.docker("rmi", seeded.reference)).splitlines()
    assert removed == [
        f"Untagged: {seeded.reference}",
        f"Untagged: {seeded.repository}@{seeded.digest}",
        f"Deleted: {seeded.image_id}",
    ]
    assert ok(hyperd.docker("images", "-q")).split() == []
    assert "No such image: nope" in failed(hyperd.docker("rmi", "nope"))


@needs_cli
def test_rmi_refuses_an_image_a_container_uses(hyperd: DockerHyperd, seeded: Seeded) -> None:
    ok(hyperd.docker("pull", seeded.reference))
    # What `hyper run` records for a container: its image stays while the record does.
    record = hyperd.state / "containers" / "c0ffee" / "config.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"image_id": seeded.image_id}))

    error = failed(hyperd.docker("rmi", seeded.reference))
    assert "conflict" in error and "in use by container c0ffee" in error, error
    with hyperd.http() as http:
        answer = http.delete(f"/v1.43/images/{seeded.reference}")
    assert answer.status_code == 409, answer.text

    forced = ok(hyperd.docker("rmi", "-f", seeded.reference)).splitlines()
    assert f"Untagged: {seeded.reference}" in forced
    assert not any(line.startswith("Deleted:") for line in forced)
    assert ok(hyperd.docker("images", "-q", "-f", "dangling=true")).split() == [seeded.short_id]

    # Pruning dangling images spares it too, until no container uses it.
    assert "Total reclaimed space: 0B" in ok(hyperd.docker("image", "prune", "-f"))
    assert ok(hyperd.docker("images", "-q")).split() == [seeded.short_id]
    record.unlink()
    pruned = ok(hyperd.docker("image", "prune", "-f"))
    assert f"deleted: {seeded.image_id}" in pruned, pruned
    assert ok(hyperd.docker("images", "-q")).split() == []


# -- failures --------------------------------------------------------------------------------------------


@needs_cli
def test_pull_failures_are_clear_and_fail_the_cli(
    hyperd: DockerHyperd, seeded: Seeded, tmp_path: Path
) -> None:
    missing = failed(hyperd.docker("pull", f"{seeded.registry.host}/nope:latest"))
    assert "not found" in missing and f"{seeded.registry.host}/nope:latest" in missing, missing

    unreachable = f"127.0.0.1:{free_port()}/busybox:latest"
    assert "cannot reach registry" in failed(hyperd.docker("pull", unreachable))

    # A layer the registry lost fails after the progress started: the error comes in the stream.
    store = ImageStore(tmp_path / "images")
    broken = f"{seeded.registry.host}/broken:v1"
    layer = tmp_path / "layer.tar"
    layer.write_bytes(layer_tar([file("lost.txt", f"lost at {time.time()}".encode())]))
    image = store.import_rootfs(layer, broken)
    _push(store, broken, tmp_path)
    blob = image.layers[0].removeprefix("sha256:")
    blobs = seeded.registry.directory / "storage/docker/registry/v2/blobs/sha256"
    (blobs / blob[:2] / blob / "data").unlink()
    output = hyperd.docker("pull", broken)
    assert output.returncode != 0
    assert "v1: Pulling from broken" in output.stdout
    assert "not found" in output.stderr, output.stderr
    assert ok(hyperd.docker("images", "-q")).split() == []  # nothing half-pulled

    with hyperd.http() as http:
        everything = http.post("/v1.43/images/create", params={"fromImage": seeded.repository})
    assert everything.status_code == 400
    assert "every tag" in everything.json()["message"]


@needs_cli
def test_import_and_search_say_they_are_unsupported(hyperd: DockerHyperd, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(layer_tar([file("hello.txt", b"hi")]))
    assert "hyper import" in failed(hyperd.docker("import", str(rootfs), "imported:v1"))
    with hyperd.http() as http:
        answer = http.get("/v1.43/images/search", params={"term": "busybox"})
    assert answer.status_code == 501


# -- push, save, load, events --------------------------------------------------------------------------


@needs_cli
def test_docker_push_through_hyperd(hyperd: DockerHyperd, seeded: Seeded) -> None:
    ok(hyperd.docker("pull", seeded.reference))
    target = f"{seeded.repository}-copy:v1"
    ok(hyperd.docker("tag", seeded.reference, target))
    lines = ok(hyperd.docker("push", target)).splitlines()
    assert lines[0] == f"The push refers to repository [{seeded.repository}-copy]"
    assert lines[-1].startswith(f"v1: digest: {seeded.digest} size: ")
    assert not any(line.startswith(seeded.short_id) for line in lines), lines  # the config is no layer
    with httpx.Client(base_url=seeded.registry.url) as registry:
        manifest = registry.head(
            "/v2/busybox-copy/manifests/v1",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
    assert manifest.status_code == 200
    assert manifest.headers["docker-content-digest"] == seeded.digest

    assert "does not exist locally" in failed(hyperd.docker("push", f"{seeded.repository}:nope"))


@needs_cli
@needs_docker_py
def test_docker_save_and_load(hyperd: DockerHyperd, seeded: Seeded, tmp_path: Path) -> None:
    ok(hyperd.docker("pull", seeded.reference))
    ok(hyperd.docker("tag", seeded.reference, "another:name"))
    archive = tmp_path / "busybox.tar"
    ok(hyperd.docker("save", "-o", str(archive), seeded.reference))
    assert archive.stat().st_size > 1_000_000
    ok(hyperd.docker("rmi", seeded.reference))
    # Only the names the archive carried are reported, not the image's other names.
    loaded = ok(hyperd.docker("load", "-i", str(archive)))
    assert loaded == f"Loaded image: {seeded.reference}\n", loaded
    assert set(ok(hyperd.docker("images", "-q")).split()) == {seeded.short_id}
    # docker-py reads the answer as a stream of JSON lines.
    ok(hyperd.docker("rmi", seeded.reference, "another:name"))
    client = hyperd.docker_py()
    try:
        [image] = client.images.load(archive.read_bytes())
        assert (image.id, image.tags) == (seeded.image_id, [seeded.reference])
    finally:
        client.close()
    assert "Traceback" not in hyperd.log_tail(1 << 20)  # save's answer is prepared once


def vm_peak_kib(pid: int) -> int:
    """The largest resident size the process has had (VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def send_huge_body(socket_path: Path, path: str, *, chunked: bool) -> tuple[bytes, int]:
    """POST a 1 GiB JSON body, sent lazily: the answer, and how much of the body went out."""
    import socket

    header = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {1 << 30}"
    sent = 0
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(socket_path))
        conn.settimeout(60)
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n{header}\r\n\r\n".encode()
        )
        piece = b'{"Image": "' + b"a" * (64 * 1024)
        try:
            while sent < 1 << 30:
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
                piece = b"a" * (64 * 1024)
        except OSError:
            pass  # hyperd answered and closed the connection: the rest is never read
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                answer += chunk
    return answer, sent


def test_json_bodies_over_a_mebibyte_are_refused_before_they_are_read(hyperd: DockerHyperd) -> None:
    for socket_path, path in (
        (hyperd.docker_socket, "/v1.43/containers/create"),
        (hyperd.socket, "/v1/containers"),
        (hyperd.socket, "/docker/containers/create"),
    ):
        for chunked in (False, True):
            answer, sent = send_huge_body(socket_path, path, chunked=chunked)
            assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
            assert b"larger than the 1048576 bytes" in answer
            assert sent < 64 << 20, f"hyperd read {sent} bytes before refusing"
    assert vm_peak_kib(hyperd.pid) < 256 * 1024  # never near the gibibyte it was sent


@needs_cli
def test_image_events(hyperd: DockerHyperd, seeded: Seeded) -> None:
    since = str(int(time.time()) - 1)
    ok(hyperd.docker("pull", seeded.reference))
    ok(hyperd.docker("tag", seeded.reference, "mine:v1"))
    ok(hyperd.docker("rmi", "mine:v1", seeded.reference))
    expected = [
        f"pull {seeded.reference}",
        "tag mine:v1",
        "untag mine:v1",
        f"untag {seeded.reference}",
        f"delete {seeded.image_id}",
    ]
    with tempfile.TemporaryFile("w+") as out:
        template = '{{.Action}} {{index .Actor.Attributes "name"}}'
        events = subprocess.Popen(
            [DOCKER_CLI, "events", "--since", since, "--filter", "type=image", "--format", template],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=hyperd.cli_environ(),
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                out.seek(0)
                if len(out.read().splitlines()) >= len(expected):
                    break
                time.sleep(0.1)
        finally:
            events.terminate()
            events.wait(timeout=10)
            # hyperd notices a gone subscriber when it next writes to it: one more
            # event ends the stream now rather than at hyperd's shutdown timeout.
            ok(hyperd.docker("pull", seeded.reference))
        out.seek(0)
        assert out.read().splitlines() == expected


# -- docker-py -------------------------------------------------------------------------------------------


@needs_docker_py
def test_docker_py_pull_list_get_tag_remove(hyperd: DockerHyperd, seeded: Seeded) -> None:
    import docker

    client = hyperd.docker_py()
    try:
        image = client.images.pull(seeded.repository, tag="latest")
        assert image.id == seeded.image_id
        assert image.tags == [seeded.reference]
        assert [i.id for i in client.images.list()] == [seeded.image_id]
        assert [i.id for i in client.images.list(name=seeded.repository)] == [seeded.image_id]
        assert client.images.list(filters={"label": "no-such-label"}) == []

        got = client.images.get(seeded.reference)
        assert got.attrs["Config"]["Cmd"] == ["sh"]
        assert got.labels == dict([LABEL])
        [entry] = got.history()
        assert entry["Id"] == seeded.image_id and entry["Tags"] == [seeded.reference]

        assert got.tag("pyrepo", "v2") is True
        assert client.images.get("pyrepo:v2").id == seeded.image_id
        client.images.remove("pyrepo:v2")
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get("pyrepo:v2")

        # The low-level stream carries Docker's JSON progress messages.
        client.images.remove(seeded.reference)
        messages = list(client.api.pull(seeded.repository, tag="latest", stream=True, decode=True))
        statuses = [m.get("status", "") for m in messages]
        assert statuses[0] == "Pulling from busybox"
        assert "Download complete" in statuses and f"Digest: {seeded.digest}" in statuses
        assert all("progressDetail" in m for m in messages[1:] if m.get("id"))

        with pytest.raises(docker.errors.NotFound):
            client.images.pull(f"{seeded.registry.host}/nope", tag="latest")
    finally:
        client.close()


# -- credentials -------------------------------------------------------------------------------------------


@needs_cli
@needs_docker_py
def test_credentials_come_from_the_client(tmp_path: Path) -> None:
    """The registry asks for a login: hyperd uses what the client sends in X-Registry-Auth."""
    user, password = "hyper", "s3cret-pass"
    ca = make_test_ca(tmp_path / "ca")
    with RegistryServer(tmp_path / "registry", tls=ca, users=[(user, password)]) as secure:
        certs = tmp_path / "certs.d"
        (certs / secure.host).mkdir(parents=True)
        shutil.copy(ca.ca_cert, certs / secure.host / "ca.crt")
        store = ImageStore(tmp_path / "seed")
        reference = f"{secure.host}/private/busybox:latest"
        make_busybox_image(store, reference)
        credentials = CredentialStore(tmp_path / "seed-docker" / "config.json")
        credentials.store(secure.host, Credentials(user, password))
        options = RegistryOptions(settings=RegistrySettings(certs_dir=certs), credentials=credentials)
        push_image(store, reference, options=options)

        with DockerHyperd(environ={"HYPER_CERTS_DIR": str(certs)}) as hyperd:
            anonymous = failed(hyperd.docker("pull", reference))
            assert "requires a user name and password" in anonymous, anonymous

            # What `docker login` leaves in the CLI's config; the CLI sends it with each pull.
            auth = base64.b64encode(f"{user}:{password}".encode()).decode()
            (hyperd.cli_config / "config.json").write_text(
                json.dumps({"auths": {secure.host: {"auth": auth}}})
            )
            assert "Downloaded newer image" in ok(hyperd.docker("pull", reference))
            copy = f"{secure.host}/private/copy:v1"
            ok(hyperd.docker("tag", reference, copy))
            assert "v1: digest: sha256:" in ok(hyperd.docker("push", copy))

            client = hyperd.docker_py()
            try:
                ok(hyperd.docker("rmi", reference))
                config = {"username": user, "password": password}
                image = client.images.pull(f"{secure.host}/private/busybox", tag="latest", auth_config=config)
                assert sorted(image.tags) == [reference, copy]
            finally:
                client.close()
