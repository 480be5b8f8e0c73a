"""Docker's JSON for images (hyper.api.docker.image_json): pure functions, no daemon."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest

from hyper.api.docker import image_json
from hyper.api.docker.image_json import ImageFilters
from hyper.errors import InvalidArgument
from hyper.image import Image, ImageConfig, parse_reference
from hyper.image.registry import Credentials, ProgressEvent

DIGEST = "sha256:" + "ab" * 32


def make_image(
    tags: tuple[str, ...] = ("docker.io/library/busybox:latest",),
    *,
    image_id: str = "sha256:" + "1" * 64,
    created: str | None = "2024-01-02T03:04:05Z",
    labels: tuple[tuple[str, str], ...] = (),
) -> Image:
    return Image(
        id=image_id,
        repo_tags=tags,
        manifest_digest=DIGEST,
        layers=("sha256:" + "2" * 64,),
        diff_ids=("sha256:" + "3" * 64,),
        config=ImageConfig(cmd=("sh",), labels=labels),
        created=created,
        architecture="amd64",
        os="linux",
        size=1234,
    )


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_image", "tag", "expected"),
    [
        ("docker.io/library/busybox", "latest", "docker.io/library/busybox:latest"),
        ("busybox", "1.36", "docker.io/library/busybox:1.36"),
        ("127.0.0.1:5000/app", "v1", "127.0.0.1:5000/app:v1"),
        ("127.0.0.1:5000/app:v1", "", "127.0.0.1:5000/app:v1"),
        ("busybox", DIGEST, f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox@{DIGEST}", "", f"docker.io/library/busybox@{DIGEST}"),
        ("busybox:old", "new", "docker.io/library/busybox:new"),
    ],
)
def test_pull_reference(from_image: str, tag: str, expected: str) -> None:
    assert str(image_json.pull_reference(from_image, tag)) == expected


def test_pull_reference_refuses_all_tags_and_bad_names() -> None:
    with pytest.raises(InvalidArgument, match="every tag"):
        image_json.pull_reference("127.0.0.1:5000/app", "")
    with pytest.raises(InvalidArgument):
        image_json.pull_reference("Upper/Case", "latest")
    with pytest.raises(InvalidArgument):
        image_json.pull_reference("", "latest")


def test_familiar_and_tag_target() -> None:
    assert image_json.familiar(parse_reference("busybox")) == "busybox:latest"
    assert image_json.familiar(parse_reference(f"busybox@{DIGEST}")) == f"busybox@{DIGEST}"
    assert image_json.familiar(parse_reference("localhost:5000/a/b:v2")) == "localhost:5000/a/b:v2"
    assert image_json.tag_target("mine", "v1") == "docker.io/library/mine:v1"
    assert image_json.tag_target("mine", "") == "docker.io/library/mine:latest"
    assert image_json.tag_target("host:5000/mine:old", "new") == "host:5000/mine:new"
    with pytest.raises(InvalidArgument, match="at least one component"):
        image_json.tag_target("", "v1")
    with pytest.raises(InvalidArgument):
        image_json.tag_target(f"mine@{DIGEST}", "")


# -- the list and its filters ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "tag", "matches"),
    [
        ("busybox", "docker.io/library/busybox:latest", True),
        ("busybox:latest", "docker.io/library/busybox:latest", True),
        ("busybox:1.36", "docker.io/library/busybox:latest", False),
        ("busy*", "docker.io/library/busybox:latest", True),
        ("*", "docker.io/library/busybox:latest", True),
        ("*", "127.0.0.1:5000/team/app:v1", False),  # `*` does not cross a slash
        ("127.0.0.1:5000/team/*", "127.0.0.1:5000/team/app:v1", True),
        ("*/*/app", "127.0.0.1:5000/team/app:v1", True),
        ("app:v?", "docker.io/library/app:v1", True),
        ("app:v[0-9]", "docker.io/library/app:v1", True),
        ("app:v[^0-9]", "docker.io/library/app:v1", False),
        ("library/busybox", "docker.io/library/busybox:latest", False),  # Docker compares familiar names
    ],
)
def test_reference_filter_is_a_glob_on_familiar_names(pattern: str, tag: str, matches: bool) -> None:
    assert image_json.reference_matches(pattern, tag) is matches


def test_summaries_shape_and_untagged_placeholders() -> None:
    tagged = make_image(labels=(("team", "a"),))
    untagged = make_image((), image_id="sha256:" + "9" * 64)
    [first, second] = image_json.image_summaries([tagged, untagged], ImageFilters())
    assert first == {
        "Id": tagged.id,
        "ParentId": "",
        "RepoTags": ["busybox:latest"],
        "RepoDigests": [f"busybox@{DIGEST}"],
        "Created": 1704164645,
        "Size": 1234,
        "SharedSize": -1,
        "VirtualSize": 1234,
        "Labels": {"team": "a"},
        "Containers": -1,
    }
    assert second["RepoTags"] == ["<none>:<none>"] and second["RepoDigests"] == ["<none>@<none>"]


def test_summary_filters() -> None:
    old = make_image(
        ("docker.io/library/old:1",), image_id="sha256:" + "4" * 64, created="2020-01-01T00:00:00Z"
    )
    new = make_image(
        ("docker.io/library/new:1", "localhost/new:2"),
        image_id="sha256:" + "5" * 64,
        labels=(("team", "a"),),
    )
    dangling = make_image((), image_id="sha256:" + "6" * 64)
    images = [new, old, dangling]

    def ids(wanted: ImageFilters) -> list[str]:
        return [entry["Id"] for entry in image_json.image_summaries(images, wanted)]

    assert ids(ImageFilters(references=("new",))) == [new.id]
    [only] = image_json.image_summaries(images, ImageFilters(references=("new:1",)))
    assert only["RepoTags"] == ["new:1"]  # only the names that matched
    assert ids(ImageFilters(dangling=True)) == [dangling.id]
    assert ids(ImageFilters(dangling=False)) == [new.id, old.id]
    assert ids(ImageFilters(labels=("team",))) == [new.id]
    assert ids(ImageFilters(labels=("team=b",))) == []
    created_new = image_json.created_time(new.created)
    assert ids(ImageFilters(before=created_new)) == [old.id]
    assert ids(ImageFilters(since=image_json.created_time(old.created))) == [new.id, dangling.id]


def test_filter_keys_are_checked() -> None:
    image_json.check_list_filters({"reference": ["a"], "dangling": ["true"], "label": ["x"]})
    with pytest.raises(InvalidArgument, match="invalid filter 'colour'"):
        image_json.check_list_filters({"colour": ["blue"]})
    with pytest.raises(InvalidArgument, match="dangling"):
        image_json.check_list_filters({"dangling": ["maybe"]})
    assert image_json.dangling_filter([]) is None
    assert image_json.dangling_filter(["1"]) is True
    assert image_json.dangling_filter(["false"]) is False


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2024-01-02T03:04:05Z", 1704164645),
        ("2024-01-02T03:04:05.123456789Z", 1704164645),
        ("2024-01-02T04:04:05+01:00", 1704164645),
        ("2024-01-02T03:04:05", 1704164645),
        ("", 0),
        (None, 0),
        ("yesterday", 0),
    ],
)
def test_created_seconds(text: str | None, seconds: int) -> None:
    assert image_json.created_seconds(text) == seconds


# -- inspect and history ----------------------------------------------------------------------------


def test_inspect_document() -> None:
    image = make_image()
    config = {
        "author": "someone",
        "comment": "made by hand",
        "variant": "v8",
        "config": {
            "Cmd": ["sh"],
            "Env": ["PATH=/bin"],
            "ExposedPorts": {"80/tcp": {}},
            "Volumes": {"/data": {}},
            "StopSignal": "SIGINT",
            "Unknown": "dropped",
        },
    }
    document = image_json.inspect_document(image, config)
    assert document["Id"] == image.id
    assert document["RepoTags"] == ["busybox:latest"]
    assert document["RepoDigests"] == [f"busybox@{DIGEST}"]
    assert (document["Author"], document["Comment"], document["Variant"]) == ("someone", "made by hand", "v8")
    assert document["Created"] == "2024-01-02T03:04:05Z"
    assert document["RootFS"] == {"Type": "layers", "Layers": list(image.diff_ids)}
    inner = document["Config"]
    assert inner["Cmd"] == ["sh"] and inner["Env"] == ["PATH=/bin"]
    assert inner["ExposedPorts"] == {"80/tcp": {}} and inner["Volumes"] == {"/data": {}}
    assert inner["StopSignal"] == "SIGINT"
    assert inner["Entrypoint"] is None and inner["Tty"] is False and inner["Hostname"] == ""
    assert "Unknown" not in inner
    json.dumps(document)  # all JSON


def test_inspect_of_a_bare_config() -> None:
    document = image_json.inspect_document(replace(make_image(()), created=None), {})
    assert document["RepoTags"] == [] and document["RepoDigests"] == []
    assert document["Created"] == image_json.ZERO_TIME
    assert document["Config"]["Cmd"] is None and "Variant" not in document


def test_history_entries_newest_first_with_layer_sizes() -> None:
    image = make_image()
    config = {
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": "ADD rootfs.tar /"},
            {
                "created": "2024-01-02T03:04:05Z",
                "created_by": 'CMD ["sh"]',
                "empty_layer": True,
                "comment": "c",
            },
        ]
    }
    rows = image_json.history_entries(image, config, [999])
    assert rows == [
        {
            "Id": image.id,
            "Created": 1704164645,
            "CreatedBy": 'CMD ["sh"]',
            "Tags": ["busybox:latest"],
            "Size": 0,
            "Comment": "c",
        },
        {
            "Id": "<missing>",
            "Created": 1704067200,
            "CreatedBy": "ADD rootfs.tar /",
            "Tags": None,
            "Size": 999,
            "Comment": "",
        },
    ]
    # A config without history still answers one entry per layer.
    [bare] = image_json.history_entries(make_image(()), {}, [5])
    assert (bare["Id"], bare["Size"], bare["Tags"]) == (image.id, 5, None)


# -- progress --------------------------------------------------------------------------------------------


def test_progress_messages() -> None:
    assert image_json.progress_message(ProgressEvent("", "The push refers to repository [x]")) == {
        "status": "The push refers to repository [x]"
    }
    assert image_json.progress_message(ProgressEvent("abc", "Pull complete")) == {
        "status": "Pull complete",
        "progressDetail": {},
        "id": "abc",
    }
    downloading = image_json.progress_message(ProgressEvent("abc", "Downloading", 500_000, 2_000_000))
    assert downloading["progressDetail"] == {"current": 500_000, "total": 2_000_000}
    assert downloading["progress"] == "[" + "=" * 12 + ">" + " " * 38 + "]    500kB/2MB"


def test_progress_bar_and_sizes() -> None:
    assert image_json.human_size(999) == "999B"
    assert image_json.human_size(1_234_567) == "1.235MB"
    assert image_json.progress_bar(0, None) == ""
    assert image_json.progress_bar(2048, None) == " 2.048kB"  # right-aligned in 8
    assert image_json.progress_bar(10, 10).startswith("[" + "=" * 50 + ">]")
    # A current past the total shows no counts.
    assert image_json.progress_bar(20, 10) == "[" + "=" * 50 + ">] "


def test_coalesce_keeps_the_last_transfer_update_per_layer() -> None:
    messages: list[dict[str, Any]] = [
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 1}},
        {"status": "Downloading", "id": "b", "progressDetail": {"current": 1}},
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 2}},
        {"status": "Download complete", "id": "b", "progressDetail": {}},
        {"status": "Digest: x"},
    ]
    assert image_json.coalesce(messages) == [messages[1], messages[2], messages[3], messages[4]]


def test_error_message() -> None:
    error = InvalidArgument("bad thing", hint="do this")
    assert image_json.error_message(error) == {
        "errorDetail": {"message": "bad thing (do this)"},
        "error": "bad thing (do this)",
    }
    assert image_json.error_text(OSError("disk")) == "OSError: disk"


# -- X-Registry-Auth --------------------------------------------------------------------------------------


def encode(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode()


def test_registry_auth_header() -> None:
    header = encode({"username": "u", "password": "p?>~", "serveraddress": "127.0.0.1:5000"})
    assert image_json.registry_auth(header) == Credentials("u", "p?>~")
    assert image_json.registry_auth(header.rstrip("=")) == Credentials("u", "p?>~")  # unpadded
    auth = base64.b64encode(b"x:y").decode()
    assert image_json.registry_auth(encode({"auth": auth})) == Credentials("x", "y")
    # What the docker CLI sends without a login, and what cannot be used, fall back to stored credentials.
    assert image_json.registry_auth(encode({"serveraddress": "127.0.0.1:5000"})) is None
    assert image_json.registry_auth(encode({"identitytoken": "refresh"})) is None
    assert image_json.registry_auth(encode({"auth": "not base64!"})) is None
    assert image_json.registry_auth("e30=") is None  # {}
    assert image_json.registry_auth("%%%") is None
    assert image_json.registry_auth(encode(["list"])) is None
    assert image_json.registry_auth(None) is None
