"""The real `hyper` CLI against an image store in a temporary directory.

skopeo writes the docker-archive, so the reader is checked against an independent
writer rather than only against our own test helpers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.images import busybox_rootfs_tar, image_config, oci_layout_archive


def hyper(tmp_path: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        HYPER_STATE_DIR=str(tmp_path / "state"),
        HYPER_CACHE_DIR=str(tmp_path / "cache"),
        HYPER_RUNTIME_DIR=str(tmp_path / "run"),
    )
    return subprocess.run(
        [sys.executable, "-m", "hyper.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_rootfs_tar(tmp_path_factory.mktemp("rootfs") / "rootfs.tar")


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is not installed")
def test_load_archive_written_by_skopeo(tmp_path: Path, rootfs: Path) -> None:
    layer = rootfs.read_bytes()
    config = image_config([layer], {"Cmd": ["sh"], "Env": ["PATH=/bin"]})
    layout_tar = oci_layout_archive(tmp_path / "layout.tar", [layer], config, "latest")
    layout = tmp_path / "layout"
    with tarfile.open(layout_tar) as archive:
        for member in archive.getmembers():  # our own regular files only
            content = archive.extractfile(member)
            assert content is not None
            (layout / member.name).parent.mkdir(parents=True, exist_ok=True)
            (layout / member.name).write_bytes(content.read())
    archive_path = tmp_path / "busybox-docker.tar"
    copy = subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            f"oci:{layout}:latest",
            f"docker-archive:{archive_path}:localhost/busybox:skopeo",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert copy.returncode == 0, copy.stderr

    loaded = hyper(tmp_path, "load", "-i", str(archive_path))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "Loaded image: localhost/busybox:skopeo"

    listed = hyper(tmp_path, "images", "--format", "json")
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["Repository"], row["Tag"]) == ("localhost/busybox", "skopeo")

    again = hyper(tmp_path, "load", "-i", str(archive_path))
    assert again.returncode == 0 and again.stdout == loaded.stdout


def test_import_images_rmi(tmp_path: Path, rootfs: Path) -> None:
    imported = hyper(tmp_path, "import", "--change", 'CMD ["sh"]', str(rootfs), "localhost/bb:v1")
    assert imported.returncode == 0, imported.stderr
    image_id = imported.stdout.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71

    table = hyper(tmp_path, "images").stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert table[1].split()[:3] == ["localhost/bb", "v1", image_id[7:19]]
    assert hyper(tmp_path, "images", "-q").stdout.split() == [image_id[7:19]]

    removed = hyper(tmp_path, "rmi", "bb:v1")  # a short name finds localhost/
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines() == ["Untagged: localhost/bb:v1", f"Deleted: {image_id}"]
    assert hyper(tmp_path, "images", "-q").stdout == ""
    blobs = tmp_path / "state/images/blobs/sha256"
    assert not blobs.exists() or list(blobs.iterdir()) == []


def test_errors_are_one_line_with_a_hint(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not an archive" * 100)
    for args in (("load", "-i", str(garbage)), ("rmi", "nothere"), ("import", str(garbage), "x")):
        result = hyper(tmp_path, *args)
        assert result.returncode == 125, result
        [line] = result.stderr.splitlines()
        assert line.startswith("hyper: ") and "(" in line, line
