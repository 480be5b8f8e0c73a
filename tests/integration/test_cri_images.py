"""The CRI's ImageService and runtime information against a real hyperd and a real registry.

A CRI client on the same v1 stubs (tests/support/cri.py) drives a hyperd
started with --cri-socket; images come from Debian's docker-registry on
127.0.0.1, one of them behind a login with TLS.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from hyper.image import ImageConfig, ImageStore
from hyper.image.registry import Credentials, CredentialStore, RegistryOptions, RegistrySettings, push_image
from tests.support.cri import CriClient, CriHyperd, status_of
from tests.support.images import make_busybox_image
from tests.support.registry import RegistryServer, make_test_ca, registry_available

pytestmark = pytest.mark.skipif(not registry_available(), reason="docker-registry or openssl is missing")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry")) as server:
        store = ImageStore(tmp_path_factory.mktemp("seed") / "images")
        reference = f"{server.host}/busybox:latest"
        make_busybox_image(store, reference, ImageConfig(cmd=("sh",), user="1000"))
        push_image(store, reference)
        yield server


@pytest.fixture
def hyperd(tmp_path: Path) -> Iterator[CriHyperd]:
    with CriHyperd(tmp_path / "state", tmp_path / "cache") as daemon:
        yield daemon


def _fails(call: object, code: grpc.StatusCode) -> str:
    assert isinstance(call, grpc.RpcError)
    got, details = status_of(call)
    assert got is code, (got, details)
    return details


def test_version_status_and_runtime_config(hyperd: CriHyperd) -> None:
    with hyperd.client() as client:
        version = client.call("Version", cri.VersionRequest(version="v1"), cri.VersionResponse)
        assert (version.runtime_name, version.runtime_api_version) == ("hyper", "v1")
        status = client.call("Status", cri.StatusRequest(), cri.StatusResponse)
        conditions = {c.type: c.status for c in status.status.conditions}
        assert conditions == {"RuntimeReady": True, "NetworkReady": True}
        assert {h.name for h in status.runtime_handlers} == {"", "hyper"}
        config = client.call("RuntimeConfig", cri.RuntimeConfigRequest(), cri.RuntimeConfigResponse)
        assert config.linux.cgroup_driver == cri.CGROUPFS


def test_unserved_rpcs_say_what_is_missing(hyperd: CriHyperd) -> None:
    with hyperd.client() as client:
        with pytest.raises(grpc.RpcError) as failure:
            client.call(
                "CheckpointContainer", cri.CheckpointContainerRequest(), cri.CheckpointContainerResponse
            )
        details = _fails(failure.value, grpc.StatusCode.UNIMPLEMENTED)
        assert "CheckpointContainer" in details and "checkpointing" in details, details


def test_pull_list_status_and_remove(hyperd: CriHyperd, registry: RegistryServer) -> None:
    reference = f"{registry.host}/busybox:latest"
    with hyperd.client() as client:
        absent = client.call("ImageStatus", _status(reference), cri.ImageStatusResponse)
        assert not absent.HasField("image")  # not present: no image and no error
        pulled = client.call(
            "PullImage", cri.PullImageRequest(image=cri.ImageSpec(image=reference)), cri.PullImageResponse
        )
        assert pulled.image_ref.startswith("sha256:")

        listed = client.call("ListImages", cri.ListImagesRequest(), cri.ListImagesResponse).images
        assert [(i.id, list(i.repo_tags)) for i in listed] == [(pulled.image_ref, [reference])]
        assert listed[0].uid.value == 1000 and listed[0].size > 0
        assert listed[0].repo_digests[0].startswith(f"{registry.host}/busybox@sha256:")

        # By ID, by digest, and with the verbose information.
        for name in (pulled.image_ref, listed[0].repo_digests[0]):
            found = client.call("ImageStatus", _status(name, verbose=True), cri.ImageStatusResponse)
            assert found.image.id == pulled.image_ref, name
            assert '"architecture": "amd64"' in found.info["info"]
        wanted = cri.ListImagesRequest(filter=cri.ImageFilter(image=cri.ImageSpec(image=reference)))
        assert [i.id for i in client.call("ListImages", wanted, cri.ListImagesResponse).images] == [
            pulled.image_ref
        ]
        other = cri.ListImagesRequest(filter=cri.ImageFilter(image=cri.ImageSpec(image="nothing:here")))
        assert list(client.call("ListImages", other, cri.ListImagesResponse).images) == []

        info = client.call("ImageFsInfo", cri.ImageFsInfoRequest(), cri.ImageFsInfoResponse)
        assert info.image_filesystems[0].used_bytes.value > 0
        assert info.image_filesystems[0].fs_id.mountpoint == str(hyperd.state / "images")

        removing = cri.RemoveImageRequest(image=cri.ImageSpec(image=reference))
        client.call("RemoveImage", removing, cri.RemoveImageResponse)
        client.call("RemoveImage", removing, cri.RemoveImageResponse)  # idempotent, as the CRI wants
        assert list(client.call("ListImages", cri.ListImagesRequest(), cri.ListImagesResponse).images) == []


def test_bad_pulls_get_the_right_codes(hyperd: CriHyperd, registry: RegistryServer) -> None:
    with hyperd.client() as client:
        for image, code in (
            ("", grpc.StatusCode.INVALID_ARGUMENT),
            ("Not A Reference", grpc.StatusCode.INVALID_ARGUMENT),
            (f"{registry.host}/nope:latest", grpc.StatusCode.NOT_FOUND),
        ):
            with pytest.raises(grpc.RpcError) as failure:
                client.call(
                    "PullImage", cri.PullImageRequest(image=cri.ImageSpec(image=image)), cri.PullImageResponse
                )
            _fails(failure.value, code)


def test_pull_uses_the_auth_the_kubelet_passes(tmp_path: Path) -> None:
    user, password = "hyper", "s3cret-pass"
    ca = make_test_ca(tmp_path / "ca")
    with RegistryServer(tmp_path / "registry", tls=ca, users=[(user, password)]) as secure:
        certs = tmp_path / "certs.d"
        (certs / secure.host).mkdir(parents=True)
        shutil.copy(ca.ca_cert, certs / secure.host / "ca.crt")
        reference = f"{secure.host}/private/busybox:latest"
        seed = ImageStore(tmp_path / "seed")
        make_busybox_image(seed, reference)
        stored = CredentialStore(tmp_path / "seed-docker" / "config.json")
        stored.store(secure.host, Credentials(user, password))
        push_image(
            seed,
            reference,
            options=RegistryOptions(settings=RegistrySettings(certs_dir=certs), credentials=stored),
        )

        environ = {"HYPER_CERTS_DIR": str(certs), "DOCKER_CONFIG": str(tmp_path / "no-docker-config")}
        with CriHyperd(tmp_path / "state", tmp_path / "cache", environ) as hyperd, hyperd.client() as client:
            spec = cri.ImageSpec(image=reference)
            with pytest.raises(grpc.RpcError) as anonymous:
                client.call("PullImage", cri.PullImageRequest(image=spec), cri.PullImageResponse)
            _fails(anonymous.value, grpc.StatusCode.PERMISSION_DENIED)
            with pytest.raises(grpc.RpcError) as wrong:
                _pull(client, spec, cri.AuthConfig(username=user, password="wrong"))
            _fails(wrong.value, grpc.StatusCode.PERMISSION_DENIED)
            pulled = _pull(client, spec, cri.AuthConfig(username=user, password=password))
            assert pulled.image_ref == seed.get(reference).id


def _pull(client: CriClient, spec: cri.ImageSpec, auth: cri.AuthConfig) -> cri.PullImageResponse:
    return client.call("PullImage", cri.PullImageRequest(image=spec, auth=auth), cri.PullImageResponse)


def _status(image: str, *, verbose: bool = False) -> cri.ImageStatusRequest:
    return cri.ImageStatusRequest(image=cri.ImageSpec(image=image), verbose=verbose)
