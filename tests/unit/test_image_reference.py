"""Image reference parsing and normalization, Docker's rules."""

from __future__ import annotations

import pytest

from hyper.errors import InvalidArgument
from hyper.image import Reference, parse_reference
from hyper.image.reference import lookup_candidates

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "normalized", "domain", "path", "tag"),
    [
        ("busybox", "docker.io/library/busybox:latest", "docker.io", "library/busybox", "latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "docker.io", "library/busybox", "1.36"),
        (
            "library/busybox",
            "docker.io/library/busybox:latest",
            "docker.io",
            "library/busybox",
            "latest",
        ),
        (
            "docker.io/busybox",
            "docker.io/library/busybox:latest",
            "docker.io",
            "library/busybox",
            "latest",
        ),
        (
            "index.docker.io/library/busybox",
            "docker.io/library/busybox:latest",
            "docker.io",
            "library/busybox",
            "latest",
        ),
        ("team/app", "docker.io/team/app:latest", "docker.io", "team/app", "latest"),
        ("localhost/busybox", "localhost/busybox:latest", "localhost", "busybox", "latest"),
        (
            "localhost:5000/busybox:v1",
            "localhost:5000/busybox:v1",
            "localhost:5000",
            "busybox",
            "v1",
        ),
        (
            "127.0.0.1:5000/team/app:v2",
            "127.0.0.1:5000/team/app:v2",
            "127.0.0.1:5000",
            "team/app",
            "v2",
        ),
        ("quay.io/a/b/c:x_y.z-1", "quay.io/a/b/c:x_y.z-1", "quay.io", "a/b/c", "x_y.z-1"),
        ("Registry/app", "Registry/app:latest", "Registry", "app", "latest"),
        ("[::1]:5000/app", "[::1]:5000/app:latest", "[::1]:5000", "app", "latest"),
        (
            "my-app__x.y",
            "docker.io/library/my-app__x.y:latest",
            "docker.io",
            "library/my-app__x.y",
            "latest",
        ),
    ],
)
def test_parse_reference_normalizes(text: str, normalized: str, domain: str, path: str, tag: str) -> None:
    reference = parse_reference(text)
    assert str(reference) == normalized
    assert (reference.domain, reference.path, reference.tag) == (domain, path, tag)


def test_digest_reference_has_no_default_tag() -> None:
    reference = parse_reference(f"busybox@{DIGEST}")
    assert reference == Reference("docker.io", "library/busybox", None, DIGEST)
    assert str(reference) == f"docker.io/library/busybox@{DIGEST}"


def test_tag_and_digest_together() -> None:
    reference = parse_reference(f"localhost/app:v1@{DIGEST}")
    assert (reference.tag, reference.digest) == ("v1", DIGEST)
    assert str(reference) == f"localhost/app:v1@{DIGEST}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " busybox",
        "BusyBox",
        "busybox:",
        "busybox:-bad",
        "busybox::tag",
        "a//b",
        "/busybox",
        "busybox/",
        "-app",
        "app-",
        "app@sha256:short",
        "app@sha256:" + "AB" * 32,
        "app@" + DIGEST + "x",
        "a" * 256,
        "busybox:" + "t" * 129,
        "exa_mple.com/app",
    ],
)
def test_parse_reference_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_reference(text)
    assert info.value.hint


def test_familiar_repository() -> None:
    assert parse_reference("busybox").familiar_repository == "busybox"
    assert parse_reference("team/app").familiar_repository == "team/app"
    assert parse_reference("localhost/app").familiar_repository == "localhost/app"


def test_short_names_also_look_in_localhost() -> None:
    assert [str(r) for r in lookup_candidates("busybox:1")] == [
        "docker.io/library/busybox:1",
        "localhost/busybox:1",
    ]
    assert [str(r) for r in lookup_candidates("localhost/busybox")] == ["localhost/busybox:latest"]
    assert [str(r) for r in lookup_candidates("docker.io/busybox")] == ["docker.io/library/busybox:latest"]
