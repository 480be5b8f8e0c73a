"""Builders of test images: layer tars, docker-archive and OCI-layout archives.

The writers follow the formats `docker save` and `skopeo copy … oci-archive:`
produce, so that tests can make multi-layer images with whiteouts, gzip layers and
several images per archive without a registry or a Docker daemon.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyper.image import Image, ImageConfig, ImageStore
from hyper.image.busybox import write_busybox_rootfs_tar

LayerSource = bytes | Path


@dataclass(frozen=True)
class Entry:
    """One tar entry for `layer_tar`."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    uid: int = 0
    gid: int = 0
    devmajor: int = 0
    devminor: int = 0
    mtime: int = 1_600_000_000
    pax: dict[str, str] = field(default_factory=dict)


def file(name: str, data: bytes = b"", mode: int = 0o644, **kw: Any) -> Entry:
    return Entry(name, tarfile.REGTYPE, data, mode, **kw)


def directory(name: str, mode: int = 0o755, **kw: Any) -> Entry:
    return Entry(name, tarfile.DIRTYPE, b"", mode, **kw)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.SYMTYPE, b"", 0o777, target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, b"", 0o644, target)


def layer_tar(entries: Sequence[Entry]) -> bytes:
    """An uncompressed PAX layer tar holding `entries` in order, names kept verbatim."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.kind
            info.mode = entry.mode
            info.linkname = entry.linkname
            info.uid, info.gid = entry.uid, entry.gid
            info.devmajor, info.devminor = entry.devmajor, entry.devminor
            info.mtime = entry.mtime
            info.pax_headers = dict(entry.pax)
            info.size = len(entry.data) if entry.kind == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(entry.data) if info.size else None)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_bytes(layer: LayerSource) -> bytes:
    return layer.read_bytes() if isinstance(layer, Path) else layer


def diff_id(layer: bytes) -> str:
    return sha256(gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer)


def image_config(
    layers: Sequence[LayerSource], config: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """An OCI image config document whose diff_ids match `layers`."""
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": config or {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id(_layer_bytes(x)) for x in layers]},
        **extra,
    }


@dataclass(frozen=True)
class ArchiveImage:
    layers: Sequence[LayerSource]
    config: dict[str, Any]
    repo_tags: Sequence[str] = ()


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def docker_archive_multi(dest: Path, images: Sequence[ArchiveImage]) -> Path:
    """A `docker save` archive (legacy layout: <hex>.json, <hex>/layer.tar)."""
    manifest = []
    written: set[str] = set()
    with tarfile.open(dest, "w") as archive:
        for image in images:
            config_data = json.dumps(image.config).encode()
            config_name = sha256(config_data).split(":")[1] + ".json"
            if config_name not in written:
                _add_bytes(archive, config_name, config_data)
                written.add(config_name)
            layer_names = []
            for layer in image.layers:
                data = _layer_bytes(layer)
                name = sha256(data).split(":")[1] + "/layer.tar"
                if name not in written:
                    _add_bytes(archive, name, data)
                    written.add(name)
                layer_names.append(name)
            manifest.append({"Config": config_name, "RepoTags": list(image.repo_tags), "Layers": layer_names})
        _add_bytes(archive, "manifest.json", json.dumps(manifest).encode())
    return dest


def docker_archive(dest: Path, layers: Sequence[LayerSource], config: dict[str, Any], repo_tag: str) -> Path:
    return docker_archive_multi(dest, [ArchiveImage(layers, config, [repo_tag])])


def oci_layout_archive(
    dest: Path,
    layers: Sequence[LayerSource],
    config: dict[str, Any],
    ref_name: str | None,
    *,
    gzip_layers: bool = True,
) -> Path:
    """An OCI image layout in a tar, as `skopeo copy … oci-archive:` writes it."""
    blobs: dict[str, bytes] = {}
    descriptors = []
    for layer in layers:
        data = _layer_bytes(layer)
        if gzip_layers and data[:2] != b"\x1f\x8b":
            data = gzip.compress(data, mtime=0)
        blobs[sha256(data)] = data
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
        descriptors.append({"mediaType": media, "digest": sha256(data), "size": len(data)})
    config_data = json.dumps(config).encode()
    blobs[sha256(config_data)] = config_data
    manifest_data = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config_data),
                "size": len(config_data),
            },
            "layers": descriptors,
        }
    ).encode()
    blobs[sha256(manifest_data)] = manifest_data
    descriptor: dict[str, Any] = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha256(manifest_data),
        "size": len(manifest_data),
    }
    if ref_name is not None:
        descriptor["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    with tarfile.open(dest, "w") as archive:
        _add_bytes(archive, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        for digest, data in blobs.items():
            _add_bytes(archive, "blobs/sha256/" + digest.split(":")[1], data)
        _add_bytes(
            archive,
            "index.json",
            json.dumps({"schemaVersion": 2, "manifests": [descriptor]}).encode(),
        )
    return dest


def busybox_rootfs_tar(dest: Path) -> Path:
    """A busybox root filesystem tar (see `hyper.image.busybox`)."""
    return write_busybox_rootfs_tar(dest)


def make_busybox_image(
    store: ImageStore,
    reference: str = "localhost/busybox:latest",
    config: ImageConfig | None = None,
) -> Image:
    """Import a busybox image into `store` (default command `sh`)."""
    with tempfile.TemporaryDirectory() as scratch:
        rootfs = busybox_rootfs_tar(Path(scratch) / "rootfs.tar")
        return store.import_rootfs(rootfs, reference, config or ImageConfig(cmd=("sh",)))
