"""Pulls that go wrong: each fault gives one clear error and leaves the store consistent.

A real `docker-registry` holds the images; a `FaultyProxy` in front of it
corrupts blobs, drops connections, fails with 503, or serves broken and
foreign-platform manifests.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from hyper.errors import DataLoss, NotFound, ResourceExhausted, Unavailable
from hyper.image import ImageStore
from hyper.image.registry import CredentialStore, RegistryOptions, RegistrySettings, pull_image
from hyper.image.registry import download as download_module
from tests.support.faulty_proxy import FaultyProxy
from tests.support.images import file, image_config, layer_tar, oci_layout_archive
from tests.support.registry import RegistryServer, extract_layout, free_port, registry_available, skopeo

pytestmark = [
    pytest.mark.skipif(not registry_available(), reason="docker-registry or openssl is not installed"),
    pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is not installed"),
]

# 2 MiB that gzip cannot shrink (skopeo compresses layers on push)
BIG = layer_tar([file("data/big", random.Random(3).randbytes(2 << 20))])
SMALL = layer_tar([file("etc/motd", b"faults\n")])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    directory = tmp_path_factory.mktemp("registry")
    with RegistryServer(directory) as server:
        document = image_config([SMALL, BIG], {"Cmd": ["sh"]})
        tar = oci_layout_archive(directory / "layout.tar", [SMALL, BIG], document, "v1", gzip_layers=False)
        layout = extract_layout(tar, directory / "oci")
        copied = skopeo(
            "copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{server.host}/f/app:v1"
        )
        assert copied.returncode == 0, copied.stderr
        yield server


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultyProxy]:
    with FaultyProxy(registry.url) as running:
        yield running


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def options(tmp_path: Path) -> RegistryOptions:
    return RegistryOptions(
        settings=RegistrySettings(certs_dir=tmp_path / "certs.d"),
        credentials=CredentialStore(tmp_path / "docker.json"),
        backoff=0.01,
        attempts=3,
        verify_diff_ids=True,  # also exercises inflating a resumed download
    )


def assert_consistent(store: ImageStore) -> None:
    for image in store.images():
        assert image.manifest_digest is not None
        for digest in (image.id, image.manifest_digest, *image.layers):
            data = store.blobs.path(digest).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    ingest = store.blobs.ingest_dir
    assert not ingest.exists() or list(ingest.iterdir()) == []


def assert_empty(store: ImageStore) -> None:
    assert_consistent(store)
    assert store.images() == []
    assert list(store.blobs.digests()) == []


def big_layer_digest(registry: RegistryServer) -> str:
    """The digest of the 2 MiB layer, read from the manifest by skopeo."""
    manifest = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/f/app:v1")
    assert manifest.returncode == 0, manifest.stderr
    return str(json.loads(manifest.stdout)["layers"][1]["digest"])


def test_nonexistent_repository_and_tag(store: ImageStore, proxy: FaultyProxy, tmp_path: Path) -> None:
    for name in (f"{proxy.host}/no/such:v1", f"{proxy.host}/f/app:nope"):
        with pytest.raises(NotFound, match="not found") as caught:
            pull_image(store, name, options=options(tmp_path))
        assert caught.value.hint
    assert_empty(store)


def test_corrupt_blob_is_rejected(
    store: ImageStore, registry: RegistryServer, proxy: FaultyProxy, tmp_path: Path
) -> None:
    proxy.faults.corrupt.add(big_layer_digest(registry))
    with pytest.raises(DataLoss, match="arrived with digest"):
        pull_image(store, f"{proxy.host}/f/app:v1", options=options(tmp_path))
    assert_empty(store)


def test_dropped_connection_resumes_with_range(
    store: ImageStore, registry: RegistryServer, proxy: FaultyProxy, tmp_path: Path
) -> None:
    digest = big_layer_digest(registry)
    proxy.faults.drop_after[digest] = 700_000
    image = pull_image(store, f"{proxy.host}/f/app:v1", options=options(tmp_path))
    assert proxy.faults.ranges == ["bytes=700000-"]
    assert digest in image.layers
    assert_consistent(store)


def test_server_errors_are_retried(store: ImageStore, proxy: FaultyProxy, tmp_path: Path) -> None:
    proxy.faults.statuses.extend([503, 502])
    pull_image(store, f"{proxy.host}/f/app:v1", options=options(tmp_path))
    assert_consistent(store)
    proxy.faults.statuses.extend([503] * 10)
    with pytest.raises(Unavailable, match="HTTP 503"):
        pull_image(store, f"{proxy.host}/f/app:v1", options=options(tmp_path))
    assert_consistent(store)


def test_registry_down(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot reach registry") as caught:
        pull_image(store, f"127.0.0.1:{free_port()}/f/app:v1", options=options(tmp_path))
    assert "running" in (caught.value.hint or "")
    assert_empty(store)


def test_index_of_another_platform_only(store: ImageStore, proxy: FaultyProxy, tmp_path: Path) -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "ab" * 32,
                "size": 500,
                "platform": {"os": "linux", "architecture": "s390x"},
            }
        ],
    }
    proxy.faults.manifests["multi"] = (json.dumps(index).encode(), "application/vnd.oci.image.index.v1+json")
    with pytest.raises(NotFound, match="it offers linux/s390x") as caught:
        pull_image(store, f"{proxy.host}/f/app:multi", options=options(tmp_path))
    assert "--platform" in (caught.value.hint or "")
    assert_empty(store)


def test_malformed_manifest(store: ImageStore, proxy: FaultyProxy, tmp_path: Path) -> None:
    proxy.faults.manifests["broken"] = (b'{"schemaVersion": 2, "layers": [', "application/json")
    with pytest.raises(DataLoss, match="malformed"):
        pull_image(store, f"{proxy.host}/f/app:broken", options=options(tmp_path))
    proxy.faults.manifests["nolayers"] = (
        b'{"schemaVersion": 2}',
        "application/vnd.oci.image.manifest.v1+json",
    )
    with pytest.raises(DataLoss, match="malformed manifest"):
        pull_image(store, f"{proxy.host}/f/app:nolayers", options=options(tmp_path))
    assert_empty(store)


def test_disk_full(
    store: ImageStore, proxy: FaultyProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(out: IO[bytes], chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download_module, "write_chunk", full)
    with pytest.raises(ResourceExhausted, match="no space left") as caught:
        pull_image(store, f"{proxy.host}/f/app:v1", options=options(tmp_path))
    assert "free disk space" in (caught.value.hint or "")
    assert_empty(store)
