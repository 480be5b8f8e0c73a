"""The CRI front end's pure parts: every RPC answers, errors map once, images and auth translate."""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from hyper.cri import images, runtime
from hyper.cri.errors import GRPC_STATUS, grpc_status
from hyper.cri.service import IMAGE_SERVICE, RUNTIME_SERVICE, method_name, rpcs, unanswered
from hyper.errors import Category, FailedPrecondition, InvalidArgument, NotFound
from hyper.image import Image, ImageConfig
from hyper.paths import HyperPaths


def test_every_rpc_of_both_services_is_served_or_says_what_is_missing(tmp_path: Path) -> None:
    assert unanswered(RUNTIME_SERVICE, runtime.RuntimeService, runtime.MISSING) == []
    paths = HyperPaths(state=tmp_path, cache=tmp_path, runtime=tmp_path)
    assert unanswered(IMAGE_SERVICE, images.ImageService(paths), {}) == []
    # A reason for an RPC that is served, or for one the API lacks, is a stale entry.
    names = {m.name for m in rpcs(RUNTIME_SERVICE)}
    served = {m.name for m in rpcs(RUNTIME_SERVICE) if hasattr(runtime.RuntimeService, method_name(m.name))}
    assert set(runtime.MISSING) <= names - served


def test_method_names_are_snake_case() -> None:
    assert method_name("RunPodSandbox") == "run_pod_sandbox"
    assert method_name("ExecSync") == "exec_sync"
    assert method_name("ImageFsInfo") == "image_fs_info"


def test_every_category_has_one_grpc_status() -> None:
    assert set(GRPC_STATUS) == set(Category)
    assert grpc_status(NotFound("x")) is grpc.StatusCode.NOT_FOUND
    assert grpc_status(InvalidArgument("x")) is grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_status(FailedPrecondition("x")) is grpc.StatusCode.FAILED_PRECONDITION


def _image(user: str | None) -> Image:
    return Image(
        id="sha256:" + "a" * 64,
        repo_tags=("docker.io/library/busybox:latest", "docker.io/library/busybox:1", "localhost/b:v1"),
        manifest_digest="sha256:" + "b" * 64,
        layers=(),
        diff_ids=(),
        config=ImageConfig(user=user or ""),
        created=None,
        architecture="amd64",
        os="linux",
        size=42,
    )


def test_images_are_described_with_full_names_digests_and_user() -> None:
    described = images.cri_image(_image("1000:1000"))
    assert list(described.repo_tags) == [
        "docker.io/library/busybox:latest", "docker.io/library/busybox:1", "localhost/b:v1",
    ]  # fmt: skip
    assert list(described.repo_digests) == [
        f"docker.io/library/busybox@sha256:{'b' * 64}", f"localhost/b@sha256:{'b' * 64}",
    ]  # fmt: skip
    assert described.uid.value == 1000 and described.HasField("uid") and described.username == ""
    named = images.cri_image(_image("nobody"))
    assert named.username == "nobody" and not named.HasField("uid")
    assert not images.cri_image(_image(None)).HasField("uid")


def test_pull_credentials_come_from_user_and_password_or_auth() -> None:
    assert images.credentials(api_pb2.AuthConfig()) is None
    given = images.credentials(api_pb2.AuthConfig(username="u", password="p"))
    assert given is not None and (given.username, given.password) == ("u", "p")
    encoded = base64.b64encode(b"user:pa:ss").decode()
    decoded = images.credentials(api_pb2.AuthConfig(auth=encoded))
    assert decoded is not None and (decoded.username, decoded.password) == ("user", "pa:ss")
    with pytest.raises(InvalidArgument, match="token"):
        images.credentials(api_pb2.AuthConfig(registry_token="t"))
    with pytest.raises(InvalidArgument, match="base64"):
        images.credentials(api_pb2.AuthConfig(auth="***"))
