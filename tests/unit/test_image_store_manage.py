"""Tagging, pruning, images in use, saving and garbage collection in the local store."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from hyper.errors import FailedPrecondition, InvalidArgument
from hyper.image import ImageStore
from hyper.image.save import save_images
from hyper.image.usage import images_in_use
from tests.support.images import docker_archive, file, image_config, layer_tar

LAYER = layer_tar([file("etc/hostname", b"x\n")])


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    archive = docker_archive(tmp_path / "a.tar", [LAYER], image_config([LAYER]), "localhost/app:v1")
    result = ImageStore(tmp_path / "images")
    result.load(archive)
    return result


def test_tag_and_remove_tags(store: ImageStore) -> None:
    assert store.tag("app:v1", "registry.example/team/app:v2") == "registry.example/team/app:v2"
    image = store.get("registry.example/team/app:v2")
    assert image.repo_tags == ("localhost/app:v1", "registry.example/team/app:v2")
    with pytest.raises(InvalidArgument, match="digest"):
        store.tag("app:v1", "x@sha256:" + "a" * 64)
    assert store.remove("registry.example/team/app:v2") == ["Untagged: registry.example/team/app:v2"]


def test_image_in_use_is_not_removed(store: ImageStore, tmp_path: Path) -> None:
    image = store.get("app:v1")
    record = tmp_path / "containers" / "c0ffee" / "config.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"image_id": image.id, "state": "exited"}))
    (tmp_path / "containers" / "broken").mkdir()
    (tmp_path / "containers" / "broken" / "config.json").write_text("{")
    in_use = images_in_use(tmp_path / "containers")
    assert in_use == {image.id: ["c0ffee"]}
    with pytest.raises(FailedPrecondition, match="in use by container c0ffee"):
        store.remove("app:v1", in_use=in_use)
    assert store.remove("app:v1", force=True, in_use=in_use) == ["Untagged: localhost/app:v1"]
    assert store.get(image.id).repo_tags == ()  # kept, untagged
    assert store.prune(in_use=in_use).deleted == ()
    report = store.prune()
    assert report.deleted == (image.id,) and report.reclaimed_bytes > 0
    assert list(store.blobs.digests()) == []


def test_prune_all_keeps_nothing_unused(store: ImageStore) -> None:
    assert store.prune().deleted == ()  # tagged images stay without --all
    report = store.prune(all_unused=True)
    assert report.untagged == ("localhost/app:v1",) and len(report.deleted) == 1
    assert store.images() == []


def test_save_docker_archive_layout(store: ImageStore, tmp_path: Path) -> None:
    output = tmp_path / "out" / "saved.tar"
    save_images(store, ["app:v1"], output)
    with tarfile.open(output) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        names = set(archive.getnames())
    [entry] = manifest
    assert entry["RepoTags"] == ["localhost/app:v1"]
    assert {entry["Config"], *entry["Layers"]} <= names
    assert list(output.parent.iterdir()) == [output]  # no temporary file left
    again = ImageStore(tmp_path / "again")
    [loaded] = again.load(output)
    assert loaded.id == store.get("app:v1").id
    with pytest.raises(InvalidArgument, match="format"):
        save_images(store, ["app:v1"], output, fmt="zip")
