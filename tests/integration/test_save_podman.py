"""`hyper save` output is loaded by podman, an independent reader, as the same image.

A two-layer image (busybox plus a layer with one file) goes into a Hyper
store with `hyper load`; `hyper save` writes it as a docker-archive and as an
OCI archive; podman, confined to a temporary directory by
`tests.support.podman`, loads each and must report the tag, the image ID
(the config digest), the layers' diff IDs and the command Hyper reports. An
OCI archive keeps the manifest, so podman must also know Hyper's manifest
digest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_image_cli import hyper
from tests.support.images import busybox_rootfs_tar, file, image_config, layer_tar, oci_layout_archive
from tests.support.podman import Podman, podman_available

pytestmark = pytest.mark.skipif(not podman_available(), reason="podman is not installed")

NAME = "localhost/podman/app:v1"


@pytest.fixture(scope="module")
def hyper_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hyper state with NAME in it (built from our own OCI layout, loaded by `hyper load`)."""
    home = tmp_path_factory.mktemp("hyper")
    layers = [
        busybox_rootfs_tar(home / "rootfs.tar").read_bytes(),
        layer_tar([file("etc/motd", b"saved for podman\n")]),
    ]
    document = image_config(layers, {"Cmd": ["sh", "-c", "cat /etc/motd"], "Env": ["PATH=/bin"]})
    layout = oci_layout_archive(home / "layout.tar", layers, document, "v1")
    loaded = hyper(home, "load", "-i", str(layout))
    assert loaded.returncode == 0, loaded.stderr
    if NAME not in loaded.stdout:  # an OCI layout names only the tag; give it the full name
        tagged = hyper(home, "tag", loaded.stdout.split()[-1], NAME)
        assert tagged.returncode == 0, tagged.stderr
    return home


def hyper_image(home: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`hyper images --format json` row, `hyper image inspect` document) of NAME."""
    listed = hyper(home, "images", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    [row] = [r for r in rows if f"{r['Repository']}:{r['Tag']}" == NAME]
    [inspected] = json.loads(hyper(home, "image", "inspect", NAME).stdout)
    return row, inspected


@pytest.mark.parametrize("fmt", ["docker-archive", "oci"])
def test_podman_loads_what_hyper_saves(tmp_path: Path, hyper_home: Path, fmt: str) -> None:
    archive = tmp_path / f"{fmt}.tar"
    saved = hyper(hyper_home, "save", "--format", fmt, "-o", str(archive), NAME)
    assert saved.returncode == 0, saved.stderr
    row, inspected = hyper_image(hyper_home)

    with Podman(tmp_path / "podman") as podman:
        loaded = podman("load", "-i", str(archive))
        assert loaded.returncode == 0, loaded.stderr
        assert f"Loaded image: {NAME}" in loaded.stdout, loaded.stdout
        [image] = podman.json("images", "--format", "json")
        [details] = podman.json("image", "inspect", NAME)

    assert image["Names"] == [NAME]
    assert "sha256:" + image["Id"] == inspected["Id"]
    assert image["Id"][:12] == row["ID"]
    assert details["RootFS"]["Layers"] == inspected["RootFS"]["Layers"]
    assert len(details["RootFS"]["Layers"]) == 2
    assert details["Config"]["Cmd"] == inspected["Config"]["Cmd"] == ["sh", "-c", "cat /etc/motd"]
    if fmt == "oci":
        assert f"localhost/podman/app@{row['Digest']}" in image["RepoDigests"]


def test_podman_loads_the_default_format_of_hyper_save(tmp_path: Path, hyper_home: Path) -> None:
    """`hyper save -o FILE` without --format writes what `docker save` would (a docker-archive)."""
    archive = tmp_path / "default.tar"
    saved = hyper(hyper_home, "save", "-o", str(archive), NAME)
    assert saved.returncode == 0, saved.stderr
    with Podman(tmp_path / "podman") as podman:
        loaded = podman("load", "-i", str(archive))
        assert loaded.returncode == 0, loaded.stderr
        [image] = podman.json("images", "--format", "json")
    assert (image["Names"], "sha256:" + image["Id"]) == ([NAME], hyper_image(hyper_home)[1]["Id"])
