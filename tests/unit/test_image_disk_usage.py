"""What the image store takes on disk (allocated blocks, not the apparent size of
sparse layer disks), what `load` reports, and the ingest area's clean-up of
what killed writers left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from hyper.api.docker.system import image_usage_documents
from hyper.image import ImageStore
from hyper.image.blobs import BlobStore, clean_ingest
from hyper.image.store import allocated_bytes
from tests.support.images import (
    ArchiveImage,
    docker_archive,
    docker_archive_multi,
    file,
    image_config,
    layer_tar,
)

LAYER = layer_tar([file("etc/hostname", b"x\n")])
OTHER = layer_tar([file("etc/motd", b"hello\n")])


def loaded(tmp_path: Path) -> ImageStore:
    store = ImageStore(tmp_path / "images")
    store.load(docker_archive(tmp_path / "a.tar", [LAYER], image_config([LAYER]), "localhost/app:v1"))
    return store


def test_a_sparse_file_counts_its_blocks_not_its_length(tmp_path: Path) -> None:
    sparse = tmp_path / "disk"
    with sparse.open("wb") as f:
        f.truncate(10 << 30)
        f.write(b"x" * 8192)
    assert sparse.stat().st_size == 10 << 30
    assert 8192 <= allocated_bytes(sparse) < 1 << 20


def test_store_usage_counts_a_sparse_layer_disk_by_what_it_holds(tmp_path: Path) -> None:
    store = loaded(tmp_path)
    image = store.get("app:v1")
    before = store.disk_usage()
    disk_dir = tmp_path / "images" / "layers" / image.diff_ids[0].split(":")[1]
    disk_dir.mkdir(parents=True)
    with (disk_dir / "disk.ext4").open("wb") as f:  # as a layer disk: 2 GiB, nearly all holes
        f.truncate(2 << 30)
        f.write(b"y" * 4096)
    grown = store.disk_usage() - before
    assert 4096 <= grown < 1 << 20
    parts = store.image_usage(image)
    assert f"disk:{image.diff_ids[0]}" in parts and sum(parts.values()) < 1 << 20
    report = store.prune(all_unused=True)
    assert report.deleted == (image.id,) and 0 < report.reclaimed_bytes < 1 << 20


def test_df_sizes_share_what_images_share(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    images = [
        ArchiveImage([LAYER], image_config([LAYER], author="a"), ["localhost/a:1"]),
        ArchiveImage([LAYER, OTHER], image_config([LAYER, OTHER], author="b"), ["localhost/b:1"]),
    ]
    store.load(docker_archive_multi(tmp_path / "two.tar", images))
    listed = store.images()
    usage = {image.id: store.image_usage(image) for image in listed}
    a, b = store.get("localhost/a:1"), store.get("localhost/b:1")
    documents = {d["Id"]: d for d in image_usage_documents(listed, usage, {a.id: 2})}
    layer_bytes = usage[a.id][a.layers[0]]
    assert documents[a.id]["SharedSize"] == documents[b.id]["SharedSize"] == layer_bytes  # the layer both use
    assert documents[a.id]["Size"] == sum(usage[a.id].values()) < documents[b.id]["Size"]
    assert (documents[a.id]["Containers"], documents[b.id]["Containers"]) == (2, 0)


def test_load_reports_the_names_the_archive_carried(tmp_path: Path) -> None:
    store = loaded(tmp_path)
    store.tag("app:v1", "localhost/other:v2")
    [again] = store.load(tmp_path / "a.tar")
    assert again.repo_tags == ("localhost/app:v1",)
    assert store.get("app:v1").repo_tags == ("localhost/app:v1", "localhost/other:v2")


WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from hyper.image.blobs import BlobStore
    fd, path = BlobStore(Path(sys.argv[1])).new_ingest_file("pull-")
    os.write(fd, b"partial download")
    print(path, flush=True)
    sys.stdin.read()
    """
)


def test_what_a_killed_writer_left_is_cleaned_and_a_live_ones_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "images"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        paths = [Path(w.stdout.readline().strip()) for w in writers if w.stdout is not None]
        assert all(p.is_file() for p in paths)
        os.kill(writers[0].pid, signal.SIGKILL)  # a `hyper pull` killed mid-download
        writers[0].wait()
        mine = BlobStore(root)
        _, own = mine.new_ingest_file("blob-")
        removed = mine.clean_ingest()
        assert removed == [paths[0].name]
        assert not paths[0].exists() and paths[1].exists() and own.exists()
        assert len(list((tmp_path / "images" / "ingest.owners").iterdir())) == 2  # the live ones' locks
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    assert clean_ingest(root / "ingest") == [paths[1].name]  # its writer has gone now too


def test_files_without_an_owner_go_when_old(tmp_path: Path) -> None:
    ingest = tmp_path / "ingest"
    ingest.mkdir()
    (ingest / "blob-legacy").write_bytes(b"x")
    assert clean_ingest(ingest) == []
    old = 1_000_000_000
    os.utime(ingest / "blob-legacy", (old, old))
    assert clean_ingest(ingest) == ["blob-legacy"]
