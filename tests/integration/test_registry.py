"""Pull, push, save and login against Debian's real `docker-registry`, cross-checked with skopeo.

One plain HTTP registry and one with TLS (a test CA) and htpasswd auth run for
the module. Images come from OCI layouts built by `tests.support.images` and
pushed by skopeo, so Hyper's client is checked against an independent one
both ways, with identical manifest digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyper.errors import PermissionDenied
from hyper.image import ImageStore
from hyper.image.registry import (
    Credentials,
    CredentialStore,
    RegistryOptions,
    RegistrySettings,
    pull_image,
    push_image,
)
from tests.support.images import busybox_rootfs_tar, file, image_config, layer_tar, oci_layout_archive
from tests.support.registry import (
    CertificateAuthority,
    RegistryServer,
    extract_layout,
    make_test_ca,
    registry_available,
    skopeo,
)

pytestmark = [
    pytest.mark.skipif(not registry_available(), reason="docker-registry or openssl is not installed"),
    pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is not installed"),
]

USER, PASSWORD = "hyper", "s3cret-pass"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def secure_registry(
    tmp_path_factory: pytest.TempPathFactory, test_ca: CertificateAuthority
) -> Iterator[RegistryServer]:
    directory = tmp_path_factory.mktemp("secure-registry")
    with RegistryServer(directory, tls=test_ca, users=[(USER, PASSWORD)]) as server:
        yield server


@pytest.fixture(scope="module")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return busybox_rootfs_tar(tmp_path_factory.mktemp("rootfs") / "rootfs.tar").read_bytes()


def skopeo_push(
    tmp_path: Path,
    destination: str,
    layers: list[bytes],
    creds: str | None = None,
    **config: object,
) -> str:
    """Push an image built from `layers` with skopeo; returns its manifest digest."""
    document = image_config(layers, {"Cmd": ["sh"], "Env": ["PATH=/bin"]}, **config)
    layout = extract_layout(
        oci_layout_archive(tmp_path / "layout.tar", layers, document, "v1"), tmp_path / "oci"
    )
    auth = [f"--dest-creds={creds}"] if creds else []
    copied = skopeo("copy", "--dest-tls-verify=false", *auth, f"oci:{layout}:v1", f"docker://{destination}")
    assert copied.returncode == 0, copied.stderr
    return skopeo_digest(destination, *([f"--creds={creds}"] if creds else []))


def skopeo_digest(reference: str, *extra: str) -> str:
    raw = skopeo("inspect", "--tls-verify=false", *extra, "--raw", f"docker://{reference}")
    assert raw.returncode == 0, raw.stderr
    return "sha256:" + hashlib.sha256(raw.stdout.encode()).hexdigest()


def hyper_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HYPER_STATE_DIR=str(tmp_path / "state"),
        HYPER_CACHE_DIR=str(tmp_path / "cache"),
        HYPER_RUNTIME_DIR=str(tmp_path / "run"),
        HYPER_REGISTRY_CONFIG=str(tmp_path / "no-registries.json"),
        HYPER_CERTS_DIR=str(tmp_path / "certs.d"),
        DOCKER_CONFIG=str(tmp_path / "docker"),
    )
    env.update(extra)
    return env


def hyper(
    tmp_path: Path, *args: str, stdin: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hyper.cli.main", *args],
        env=hyper_env(tmp_path, **extra),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_store_consistent(root: Path) -> None:
    """Every indexed image's blobs exist and verify; nothing is left in the ingest area."""
    store = ImageStore(root)
    for image in store.images():
        assert image.manifest_digest is not None
        for digest in (image.id, image.manifest_digest, *image.layers):
            data = (root / "blobs/sha256" / digest.split(":")[1]).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    ingest = root / "ingest"
    assert not ingest.exists() or list(ingest.iterdir()) == []


def options(tmp_path: Path, **kwargs: object) -> RegistryOptions:
    return RegistryOptions(
        settings=RegistrySettings(certs_dir=tmp_path / "certs.d"),
        credentials=CredentialStore(tmp_path / "docker" / "config.json"),
        backoff=0.01,
        **kwargs,  # type: ignore[arg-type]
    )


# -- pull and push, cross-checked with skopeo ------------------------------------------


def test_pull_of_an_image_pushed_by_skopeo(
    tmp_path: Path, registry: RegistryServer, busybox_layer: bytes
) -> None:
    extra = layer_tar([file("etc/motd", b"hello\n" * 1000)])
    name = f"{registry.host}/team/app:v1"
    digest = skopeo_push(tmp_path, name, [busybox_layer, extra])

    pulled = hyper(tmp_path, "pull", name)
    assert pulled.returncode == 0, pulled.stderr
    lines = pulled.stdout.splitlines()
    assert lines[0] == f"v1: Pulling from {registry.host}/team/app"
    assert f"Digest: {digest}" in lines
    assert f"Status: Downloaded newer image for {name}" in lines
    assert lines[-1] == name
    assert any(line.endswith(": Pull complete") for line in lines)

    again = hyper(tmp_path, "pull", name)
    assert f"Status: Image is up to date for {name}" in again.stdout
    assert again.stdout.count("Already exists") == 2

    [row] = [json.loads(line) for line in hyper(tmp_path, "images", "--format", "json").stdout.splitlines()]
    assert row["Digest"] == digest
    table = hyper(tmp_path, "images", "--digests").stdout.splitlines()
    assert table[0].split()[:3] == ["REPOSITORY", "TAG", "DIGEST"] and digest in table[1]
    [inspected] = json.loads(hyper(tmp_path, "image", "inspect", name).stdout)
    assert inspected["RepoDigests"] == [f"{registry.host}/team/app@{digest}"]
    assert inspected["Config"]["Cmd"] == ["sh"]
    history = hyper(tmp_path, "image", "history", name)
    assert history.returncode == 0 and history.stdout.startswith("IMAGE")
    assert_store_consistent(tmp_path / "state/images")

    by_digest = hyper(tmp_path, "pull", "-q", f"{registry.host}/team/app@{digest}")
    assert by_digest.returncode == 0 and by_digest.stdout.strip() == f"{registry.host}/team/app@{digest}"


def test_push_is_pulled_by_skopeo_with_the_same_digest(
    tmp_path: Path, registry: RegistryServer, busybox_layer: bytes
) -> None:
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(busybox_layer)
    name = f"{registry.host}/pushed/busybox:v2"
    assert hyper(tmp_path, "import", "-c", 'CMD ["sh"]', str(rootfs), "localhost/bb:v2").returncode == 0
    tagged = hyper(tmp_path, "tag", "bb:v2", name)
    assert tagged.returncode == 0, tagged.stderr
    pushed = hyper(tmp_path, "push", name)
    assert pushed.returncode == 0, pushed.stderr
    local_digest = json.loads(hyper(tmp_path, "image", "inspect", name).stdout)[0]["Metadata"][
        "ManifestDigest"
    ]
    assert pushed.stdout.splitlines()[-1].startswith(f"v2: digest: {local_digest} size: ")
    assert skopeo_digest(name) == local_digest
    copied = skopeo("copy", "--src-tls-verify=false", f"docker://{name}", f"oci:{tmp_path / 'copy'}:x")
    assert copied.returncode == 0, copied.stderr

    again = hyper(tmp_path, "push", name)
    assert again.stdout.count("Layer already exists") == 2  # the layer and the config

    other = f"{registry.host}/other/busybox:v2"
    assert hyper(tmp_path, "tag", name, other).returncode == 0
    mounted = hyper(tmp_path, "push", other)
    assert mounted.returncode == 0, mounted.stderr
    assert "Mounted from pushed/busybox" in mounted.stdout
    assert skopeo_digest(other) == local_digest


def test_chunked_push_and_concurrent_pulls(
    tmp_path: Path, registry: RegistryServer, busybox_layer: bytes
) -> None:
    source = ImageStore(tmp_path / "source")
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(busybox_layer)
    name = f"{registry.host}/chunked/busybox:v1"
    image = source.import_rootfs(rootfs, name)
    result = push_image(source, name, options=options(tmp_path), chunk_size=256 * 1024)
    assert result.digest == image.manifest_digest == skopeo_digest(name)

    import concurrent.futures

    target = ImageStore(tmp_path / "target")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pulls = [pool.submit(pull_image, target, name, options=options(tmp_path)) for _ in range(2)]
        ids = {future.result().id for future in pulls}
    assert ids == {image.id}
    assert [i.id for i in target.images()] == [image.id]
    assert_store_consistent(tmp_path / "target")


# -- save ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["docker-archive", "oci"])
def test_save_is_read_by_skopeo_and_loaded_back(tmp_path: Path, busybox_layer: bytes, fmt: str) -> None:
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(busybox_layer)
    assert hyper(tmp_path, "import", "-c", 'CMD ["sh"]', str(rootfs), "localhost/saved:v1").returncode == 0
    archive = tmp_path / "saved.tar"
    saved = hyper(tmp_path, "save", "--format", fmt, "-o", str(archive), "saved:v1")
    assert saved.returncode == 0, saved.stderr
    transport = "docker-archive" if fmt == "docker-archive" else "oci-archive"
    inspected = skopeo("inspect", f"{transport}:{archive}")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Architecture"]
    copied = skopeo("copy", f"{transport}:{archive}", f"oci:{tmp_path / 'copy'}:x")
    assert copied.returncode == 0, copied.stderr

    other = tmp_path / "other"
    loaded = hyper(other, "load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "Loaded image: localhost/saved:v1"


# -- TLS and authentication -------------------------------------------------------------


def test_login_and_pull_over_tls_with_a_private_ca(
    tmp_path: Path, secure_registry: RegistryServer, test_ca: CertificateAuthority, busybox_layer: bytes
) -> None:
    name = f"{secure_registry.host}/private/app:v1"
    digest = skopeo_push(tmp_path, name, [busybox_layer], f"{USER}:{PASSWORD}")

    no_ca = hyper(tmp_path, "pull", name)
    assert no_ca.returncode == 125
    assert "certificate" in no_ca.stderr.lower() and len(no_ca.stderr.splitlines()) == 1, no_ca.stderr

    certs = tmp_path / "certs.d" / secure_registry.host
    certs.mkdir(parents=True)
    shutil.copy(test_ca.ca_cert, certs / "ca.crt")
    anonymous = hyper(tmp_path, "pull", name)
    assert anonymous.returncode == 125 and "hyper login" in anonymous.stderr, anonymous.stderr

    wrong = hyper(tmp_path, "login", "-u", USER, "--password-stdin", secure_registry.host, stdin="nope\n")
    assert wrong.returncode == 125 and "credentials" in wrong.stderr, wrong.stderr
    assert not (tmp_path / "docker/config.json").exists()

    logged_in = hyper(tmp_path, "login", "-u", USER, "--password-stdin", secure_registry.host, stdin=PASSWORD)
    assert logged_in.returncode == 0 and logged_in.stdout.strip() == "Login Succeeded", logged_in.stderr
    config = tmp_path / "docker/config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert secure_registry.host in json.loads(config.read_text())["auths"]

    pulled = hyper(tmp_path, "pull", "-q", name)
    assert pulled.returncode == 0, pulled.stderr
    assert (
        json.loads(hyper(tmp_path, "image", "inspect", name).stdout)[0]["Metadata"]["ManifestDigest"]
        == digest
    )

    pushed_name = f"{secure_registry.host}/private/copy:v1"
    assert hyper(tmp_path, "tag", name, pushed_name).returncode == 0
    pushed = hyper(tmp_path, "push", pushed_name)
    assert pushed.returncode == 0, pushed.stderr

    out = hyper(tmp_path, "logout", secure_registry.host)
    assert out.stdout.strip() == f"Removing login credentials for {secure_registry.host}"
    assert json.loads(config.read_text())["auths"] == {}
    assert_store_consistent(tmp_path / "state/images")


def test_pull_with_wrong_credentials_stores_nothing(
    tmp_path: Path, secure_registry: RegistryServer, test_ca: CertificateAuthority, busybox_layer: bytes
) -> None:
    name = f"{secure_registry.host}/private/wrong:v1"
    skopeo_push(tmp_path, name, [busybox_layer], f"{USER}:{PASSWORD}")
    certs = tmp_path / "certs.d" / secure_registry.host
    certs.mkdir(parents=True)
    shutil.copy(test_ca.ca_cert, certs / "ca.crt")
    CredentialStore(tmp_path / "docker" / "config.json").store(
        secure_registry.host, Credentials(USER, "wrong")
    )
    store = ImageStore(tmp_path / "images")
    with pytest.raises(PermissionDenied, match="rejected the credentials") as caught:
        pull_image(store, name, options=options(tmp_path))
    assert "hyper login" in (caught.value.hint or "")
    assert store.images() == [] and list(store.blobs.digests()) == []
    assert_store_consistent(tmp_path / "images")
