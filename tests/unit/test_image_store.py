"""Loading, importing, finding and removing images, and the store's integrity rules."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from hyper.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from hyper.image import ImageConfig, ImageStore
from hyper.image.blobs import BlobStore
from tests.support.images import (
    ArchiveImage,
    directory,
    docker_archive,
    docker_archive_multi,
    file,
    image_config,
    layer_tar,
    make_busybox_image,
    oci_layout_archive,
    sha256,
)

BASE = layer_tar([directory("etc"), file("etc/hostname", b"base\n"), file("bin/tool", b"x")])
TOP = layer_tar([file("etc/hostname", b"top\n"), file("etc/.wh.motd")])


def snapshot(root: Path) -> dict[str, str]:
    """Every file in the store with its content digest (the lock files aside: the
    index's, and the one each writer holds while it lives)."""
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "lock" and path.parent.name != "ingest.owners"
    }


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def test_stage_with_wrong_digest_commits_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    with pytest.raises(DataLoss, match="expected sha256:"):
        blobs.stage(io.BytesIO(b"hello"), expected_digest=sha256(b"other"))
    with pytest.raises(DataLoss, match="declared size 3"):
        blobs.stage(io.BytesIO(b"hello"), expected_size=3)
    with pytest.raises(DataLoss, match="expected 9"):
        blobs.stage(io.BytesIO(b"hello"), expected_size=9)
    assert list(blobs.digests()) == []
    assert list((tmp_path / "ingest").iterdir()) == []


def test_stage_and_commit_is_content_addressed(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    staged = blobs.stage(io.BytesIO(b"hello"), expected_digest=sha256(b"hello"), expected_size=5)
    assert not blobs.exists(staged.digest)
    path = blobs.commit(staged)
    assert path == tmp_path / "blobs/sha256" / sha256(b"hello").split(":")[1]
    assert path.read_bytes() == b"hello"
    again = blobs.commit(blobs.stage_bytes(b"hello"))
    assert again == path and list(blobs.digests()) == [sha256(b"hello")]
    assert list((tmp_path / "ingest").iterdir()) == []


def test_load_docker_archive(store: ImageStore, tmp_path: Path) -> None:
    config = image_config([BASE, TOP], {"Cmd": ["sh"], "Env": ["A=1"], "WorkingDir": "/w"})
    archive = docker_archive(tmp_path / "a.tar", [BASE, TOP], config, "busybox:1.0")
    [image] = store.load(archive)
    assert image.repo_tags == ("docker.io/library/busybox:1.0",)
    assert image.id == sha256(json.dumps(config).encode())
    assert image.layers == (sha256(BASE), sha256(TOP))
    assert image.diff_ids == (sha256(BASE), sha256(TOP))
    assert image.config == ImageConfig(env=("A=1",), cmd=("sh",), working_dir="/w")
    assert image.size == len(BASE) + len(TOP)
    assert (image.architecture, image.os) == ("amd64", "linux")
    assert store.get("busybox:1.0") == image
    assert store.get(image.id) == image
    assert store.get(image.id.split(":")[1][:12]) == image
    assert store.images() == [image]
    assert image.manifest_digest is not None
    assert store.get(f"busybox@{image.manifest_digest}") == image
    assert list((store.root / "ingest").iterdir()) == []


def test_loading_twice_is_idempotent(store: ImageStore, tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "a.tar", [BASE], image_config([BASE]), "app:v1")
    first = store.load(archive)
    before = snapshot(store.root)
    assert store.load(archive) == first
    assert snapshot(store.root) == before


def test_load_multi_image_docker_archive_with_gzip_layer(store: ImageStore, tmp_path: Path) -> None:
    gz = gzip.compress(TOP, mtime=0)
    one = ArchiveImage([BASE], image_config([BASE], {"Cmd": ["one"]}), ["one:latest"])
    two = ArchiveImage(
        [BASE, gz], image_config([BASE, gz], {"Cmd": ["two"]}), ["two:latest", "localhost/two:x"]
    )
    archive = docker_archive_multi(tmp_path / "multi.tar", [one, two])
    loaded = store.load(archive)
    assert [i.config.cmd for i in loaded] == [("one",), ("two",)]
    assert loaded[1].repo_tags == ("docker.io/library/two:latest", "localhost/two:x")
    assert loaded[1].layers == (sha256(BASE), sha256(gz))
    assert loaded[1].diff_ids == (sha256(BASE), sha256(TOP))
    manifest = json.loads(store._blobs.read_bytes(loaded[1].manifest_digest or ""))
    assert manifest["layers"][1]["mediaType"].endswith("tar+gzip")
    assert store.get("two") == store.get("localhost/two:x") == loaded[1]


def test_load_gzip_compressed_archive(store: ImageStore, tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "a.tar", [BASE], image_config([BASE]), "app:v1")
    compressed = tmp_path / "a.tar.gz"
    compressed.write_bytes(gzip.compress(archive.read_bytes()))
    [image] = store.load(compressed)
    assert image.repo_tags == ("docker.io/library/app:v1",)


def test_load_oci_layout(store: ImageStore, tmp_path: Path) -> None:
    config = image_config([BASE, TOP], {"Entrypoint": ["/bin/tool"]})
    archive = oci_layout_archive(tmp_path / "o.tar", [BASE, TOP], config, "localhost/tool:2")
    [image] = store.load(archive)
    assert image.repo_tags == ("localhost/tool:2",)
    assert image.config.entrypoint == ("/bin/tool",)
    assert image.diff_ids == (sha256(BASE), sha256(TOP))
    assert image.layers[0] == sha256(gzip.compress(BASE, mtime=0))
    assert store.get("localhost/tool:2") == image


def test_oci_layout_with_bare_tag_loads_untagged(store: ImageStore, tmp_path: Path) -> None:
    archive = oci_layout_archive(tmp_path / "o.tar", [BASE], image_config([BASE]), "latest")
    [image] = store.load(archive)
    assert image.repo_tags == ()
    assert store.get(image.id) == image


def test_diff_id_mismatch_is_data_loss(store: ImageStore, tmp_path: Path) -> None:
    config = image_config([TOP])  # claims TOP, ships BASE
    archive = docker_archive(tmp_path / "a.tar", [BASE], config, "app:v1")
    with pytest.raises(DataLoss, match="uncompressed digest"):
        store.load(archive)
    assert snapshot(store.root) == {}


def _archive_variants(tmp_path: Path) -> dict[str, Path]:
    good = docker_archive(tmp_path / "good.tar", [BASE], image_config([BASE]), "app:v1")
    data = good.read_bytes()
    variants = {
        "not a tar": b"this is not an archive at all" * 40,
        "truncated": data[: len(data) // 2],
        "bad gzip": gzip.compress(data)[:200],
        "empty": b"",
    }
    paths = {}
    for name, content in variants.items():
        path = tmp_path / (name.replace(" ", "_") + ".tar")
        path.write_bytes(content)
        paths[name] = path

    def rewrite(name: str, drop: str | None = None, replace: tuple[str, bytes] | None = None) -> None:
        out = tmp_path / (name.replace(" ", "_") + ".tar")
        with tarfile.open(good) as source, tarfile.open(out, "w") as target:
            for member in source.getmembers():
                if member.name == drop:
                    continue
                content = source.extractfile(member)
                payload = content.read() if content else b""
                if replace and member.name == replace[0]:
                    payload = replace[1]
                member.size = len(payload)
                target.addfile(member, io.BytesIO(payload))
        paths[name] = out

    rewrite("no manifest.json", drop="manifest.json")
    layer_name = sha256(BASE).split(":")[1] + "/layer.tar"
    rewrite("missing layer", drop=layer_name)
    rewrite("layer not a tar", replace=(layer_name, b"garbage" * 100))
    rewrite("manifest not json", replace=("manifest.json", b"{nope"))
    return paths


def test_corrupt_archives_leave_store_unchanged(store: ImageStore, tmp_path: Path) -> None:
    make_busybox_image(store)
    before = snapshot(store.root)
    for name, path in _archive_variants(tmp_path).items():
        with pytest.raises((DataLoss, NotFound)) as info:
            store.load(path)
        assert "\n" not in str(info.value), name
        assert info.value.hint, name
        assert snapshot(store.root) == before, name
        assert list((store.root / "ingest").iterdir()) == [], name


def test_oci_missing_blob_leaves_store_unchanged(store: ImageStore, tmp_path: Path) -> None:
    good = oci_layout_archive(tmp_path / "o.tar", [BASE], image_config([BASE]), "localhost/a:1")
    broken = tmp_path / "broken.tar"
    missing = sha256(gzip.compress(BASE, mtime=0)).split(":")[1]
    with tarfile.open(good) as source, tarfile.open(broken, "w") as target:
        for member in source.getmembers():
            if not member.name.endswith(missing):
                target.addfile(member, source.extractfile(member))
    with pytest.raises(DataLoss, match=missing):
        store.load(broken)
    assert snapshot(store.root) == {}


def test_missing_archive_is_not_found(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        store.load(tmp_path / "nope.tar")


def test_import_rootfs(store: ImageStore, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.tar.gz"
    rootfs.write_bytes(gzip.compress(BASE))
    config = ImageConfig(cmd=("sh",), volumes=("/data",), exposed_ports=("80/tcp",))
    image = store.import_rootfs(rootfs, "localhost/mine", config)
    assert image.repo_tags == ("localhost/mine:latest",)
    assert (image.config.volumes, image.config.exposed_ports) == (("/data",), ("80/tcp",))  # VOLUME, EXPOSE
    assert image.diff_ids == (sha256(BASE),)
    assert image.layers == (sha256(rootfs.read_bytes()),)
    assert image.config.cmd == ("sh",)
    assert store.get("mine") == image  # a short name finds localhost/ too
    with pytest.raises(InvalidArgument):
        store.import_rootfs(rootfs, "Bad Name")
    not_tar = tmp_path / "x.tar"
    not_tar.write_bytes(b"\0garbage" * 1000)
    before = snapshot(store.root)
    with pytest.raises(DataLoss):
        store.import_rootfs(not_tar, "localhost/broken")
    assert snapshot(store.root) == before


def test_get_not_found_says_how_to_get_one(store: ImageStore) -> None:
    with pytest.raises(NotFound) as info:
        store.get("busybox")
    assert "hyper load -i FILE" in str(info.value.hint)
    with pytest.raises(NotFound):
        store.get("0123456789ab")


def test_docker_hub_name_is_preferred_over_localhost(store: ImageStore) -> None:
    local = make_busybox_image(store, "localhost/busybox", ImageConfig(cmd=("local",)))
    hub = make_busybox_image(store, "busybox", ImageConfig(cmd=("hub",)))
    assert store.get("busybox") == hub
    assert store.get("localhost/busybox") == local
    assert store.get("docker.io/library/busybox:latest") == hub


def test_rmi_untags_then_deletes_and_collects(store: ImageStore, tmp_path: Path) -> None:
    shared = ArchiveImage([BASE], image_config([BASE], {"Cmd": ["a"]}), ["a:1", "a:2"])
    other = ArchiveImage([BASE, TOP], image_config([BASE, TOP], {"Cmd": ["b"]}), ["b:1"])
    [a, b] = store.load(docker_archive_multi(tmp_path / "m.tar", [shared, other]))
    if _can_build_disks():
        assert len(store.layer_disks(b)) == 2

    assert store.remove("a:1") == ["Untagged: a:1"]
    assert store.get("a:2") == store.get(a.id)
    assert store.remove("a:2") == ["Untagged: a:2", f"Deleted: {a.id}"]
    with pytest.raises(NotFound):
        store.get(a.id)
    blobs = {p.name for p in (store.root / "blobs/sha256").iterdir()}
    assert a.id.split(":")[1] not in blobs
    assert sha256(BASE).split(":")[1] in blobs  # still used by b

    assert store.remove(b.id) == ["Untagged: b:1", f"Deleted: {b.id}"]
    assert list((store.root / "blobs/sha256").iterdir()) == []
    layers = store.root / "layers"
    assert not layers.exists() or [p for p in layers.iterdir() if not p.name.startswith(".")] == []
    assert store.images() == []


def test_rmi_by_id_with_several_tags_needs_force(store: ImageStore, tmp_path: Path) -> None:
    image = ArchiveImage([BASE], image_config([BASE]), ["a:1", "a:2"])
    [a] = store.load(docker_archive_multi(tmp_path / "m.tar", [image]))
    with pytest.raises(FailedPrecondition):
        store.remove(a.id)
    assert store.remove(a.id, force=True) == ["Untagged: a:1", "Untagged: a:2", f"Deleted: {a.id}"]


def test_retagging_leaves_old_image_dangling(store: ImageStore) -> None:
    old = make_busybox_image(store, "localhost/app", ImageConfig(cmd=("old",)))
    new = make_busybox_image(store, "localhost/app", ImageConfig(cmd=("new",)))
    assert store.get("localhost/app") == new
    assert store.get(old.id).repo_tags == ()
    assert store.remove(old.id) == [f"Deleted: {old.id}"]


def _can_build_disks() -> bool:
    import os
    import shutil

    return os.geteuid() == 0 and shutil.which("mkfs.erofs") is not None
