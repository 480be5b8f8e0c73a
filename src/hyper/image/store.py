"""The local image store: images loaded from archives or imported from root filesystems.

Layout under `root` (containerd-like, so registry pull/push can reuse it):

    blobs/sha256/<hex>        manifests, configs and layer blobs, by digest
    ingest/                   content being written and verified
    index.json, lock          tags → image IDs, replaced atomically under flock
    layers/<diff-hex>/disk.*  each layer converted once into a read-only disk

Writers stage and verify everything first and then commit blobs and the index
under the store lock; removing an image collects blobs and layer disks no image
references any more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyper.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from hyper.image.archive import StagedImage, read_archive
from hyper.image.blobs import BlobStore, StagedBlob, digest_hex
from hyper.image.index import ImageRecord, IndexFile, StoreIndex
from hyper.image.layerdisk import (
    DISK_FILE,
    available_fs_type,
    build_layer_disk,
    remove_tree,
)
from hyper.image.layers import HashingReader, inspect_layer, open_layer
from hyper.image.model import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP,
    Descriptor,
    Image,
    ImageConfig,
    LayerDisk,
    Manifest,
    build_config_blob,
    decode_json_object,
    manifest_blob,
    parse_config,
    parse_manifest,
)
from hyper.image.reference import lookup_candidates, parse_reference
from hyper.image.unpack import unpack_layer
from hyper.locks import exclusive_lock

NOT_FOUND_HINT = "load it with `hyper load -i FILE` or import it with `hyper import`"
_SHORT_ID = re.compile(r"(?:sha256:)?([a-f0-9]{12,64})")


@dataclass(frozen=True)
class PruneReport:
    deleted: tuple[str, ...]
    untagged: tuple[str, ...]
    reclaimed_bytes: int


@dataclass(frozen=True)
class RemoveReport:
    """What removing a name did: the tags taken away (fully qualified) and the images deleted."""

    image_id: str
    untagged: tuple[str, ...]
    deleted: tuple[str, ...]

    def lines(self) -> list[str]:
        """`hyper rmi`'s (and `docker rmi`'s) output."""
        return [
            *(f"Untagged: {familiar_name(tag)}" for tag in self.untagged),
            *(f"Deleted: {image_id}" for image_id in self.deleted),
        ]


def familiar_name(tag: str) -> str:
    """`docker.io/library/busybox:latest` → `busybox:latest`, as Docker prints it."""
    reference = parse_reference(tag)
    name = reference.familiar_repository
    return f"{name}:{reference.tag}" if reference.tag else name


def repo_digests(image: Image) -> list[str]:
    """`busybox@sha256:…` for each repository the image is tagged in, as Docker shows them."""
    if image.manifest_digest is None:
        return []
    repositories = dict.fromkeys(parse_reference(tag).familiar_repository for tag in image.repo_tags)
    return [f"{repository}@{image.manifest_digest}" for repository in repositories]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = BlobStore(root)
        self._index = IndexFile(root)
        self._layers_dir = root / "layers"

    # -- adding images -----------------------------------------------------------

    def load(self, archive: Path) -> list[Image]:
        """Load every image of a docker-archive or OCI-layout tar (`hyper load`).

        Each image is returned with the names the archive gave it (`repo_tags`),
        not with every name it has in the store: `load` reports what it loaded.
        """
        staged = read_archive(archive, self._blobs)
        try:
            index = self._commit(staged)
        finally:
            for image in staged:
                for blob in image.blobs:
                    self._blobs.discard(blob)
        carried: dict[str, list[str]] = {}
        for image in staged:
            names = carried.setdefault(image.config.digest, [])
            names.extend(tag for tag in image.repo_tags if tag not in names)
        return [
            dataclasses.replace(self._image(index, image_id), repo_tags=tuple(names))
            for image_id, names in carried.items()
        ]

    def import_rootfs(self, tar: Path, reference: str, config: ImageConfig | None = None) -> Image:
        """Make a single-layer image of a root filesystem tar (`hyper import`)."""
        parsed_reference = parse_reference(reference)
        if parsed_reference.digest is not None:
            raise InvalidArgument(
                f"cannot import as {reference!r}: a digest names existing content",
                hint="give NAME[:TAG]",
            )
        if not tar.is_file():
            raise NotFound(f"root filesystem tar {tar} does not exist", hint="check the path")
        staged_blobs: list[StagedBlob] = []
        try:
            with tar.open("rb") as source:
                layer = self._blobs.stage(source, what=str(tar))
            staged_blobs.append(layer)
            info = inspect_layer(layer.path, str(tar))
            created = _now()
            config_data = build_config_blob(
                config or ImageConfig(), [info.diff_id], created, f"hyper import {tar.name}"
            )
            config_blob = self._blobs.stage_bytes(config_data, what="image config")
            staged_blobs.append(config_blob)
            media = MEDIA_OCI_LAYER_GZIP if info.compressed else MEDIA_OCI_LAYER
            manifest = Manifest(
                Descriptor(MEDIA_OCI_CONFIG, config_blob.digest, config_blob.size),
                (Descriptor(media, layer.digest, layer.size),),
            )
            manifest_staged = self._blobs.stage_bytes(manifest_blob(manifest), what="manifest")
            staged_blobs.append(manifest_staged)
            image = StagedImage(
                config=config_blob,
                manifest=manifest_staged,
                layers=(layer,),
                parsed=parse_config(config_data, "image config"),
                repo_tags=(str(parsed_reference),),
            )
            index = self._commit([image])
        finally:
            for blob in staged_blobs:
                self._blobs.discard(blob)
        return self._image(index, config_blob.digest)

    def link_from(self, other: ImageStore, image: Image, reference: str) -> Image:
        """Add `image` of `other` (a store on the same file system) under `reference`,
        its blobs and built layer disks hard-linked, not copied: a tenant's copy of
        an image the admin made public shares the admin's files and page cache."""
        staged: list[StagedBlob] = []
        try:
            for digest in (image.id, image.manifest_digest or "", *image.layers):
                staged.append(self._blobs.link_in(other.blobs.path(digest), digest))
            config, manifest, *layers = staged
            parsed = parse_config(config.path.read_bytes(), f"config {image.id}")
            added = self.add_staged(
                [StagedImage(config, manifest, tuple(layers), parsed, (str(parse_reference(reference)),))]
            )
        finally:
            for blob in staged:
                self._blobs.discard(blob)
        for diff_id in image.diff_ids:
            source = _existing_disk(diff_id, other._layers_dir / digest_hex(diff_id))
            target = self._layers_dir / digest_hex(diff_id)
            if source is None or _existing_disk(diff_id, target) is not None:
                continue  # built here on first use, as for any image
            self._layers_dir.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".link-{target.name[:12]}-", dir=self._layers_dir))
            try:
                _link_or_copy(source.path, work / source.path.name)
                os.chmod(work, 0o755)
                os.rename(work, target)
            except OSError:
                remove_tree(work)  # another writer was first, or the disk is full: built on use
        return added[0]

    @property
    def blobs(self) -> BlobStore:
        """The blob store, for writers (pull) that stage content themselves."""
        return self._blobs

    def add_staged(self, staged: list[StagedImage]) -> list[Image]:
        """Commit images whose blobs are staged and verified; the staged files are used up."""
        try:
            index = self._commit(staged)
        finally:
            for image in staged:
                for blob in image.blobs:
                    self._blobs.discard(blob)
        return [self._image(index, image.config.digest) for image in staged]

    def _commit(self, staged: list[StagedImage]) -> StoreIndex:
        with self._index.locked():
            for image in staged:
                for blob in image.blobs:
                    self._blobs.commit(blob)
            index = self._index.read()
            for image in staged:
                record = ImageRecord(image.config.digest, image.manifest.digest, _now())
                index = index.with_image(record, image.repo_tags)
            self._index.write(index)
            return index

    # -- reading -------------------------------------------------------------------

    def images(self) -> list[Image]:
        index = self._index.read()
        found = [self._image(index, image_id) for image_id in index.images]
        return sorted(found, key=lambda image: (image.created or "", image.id), reverse=True)

    def get(self, reference_or_id: str) -> Image:
        index = self._index.read()
        image_id, _ = self._resolve(index, reference_or_id)
        return self._image(index, image_id)

    def _resolve(self, index: StoreIndex, text: str) -> tuple[str, str | None]:
        """The image ID `text` names, and the tag it named it by (None for an ID)."""
        by_reference: str | None = None
        try:
            candidates = lookup_candidates(text)
        except InvalidArgument:
            if not _SHORT_ID.fullmatch(text):
                raise
            candidates = ()
        for candidate in candidates:
            if candidate.digest is not None:
                for image_id, record in index.images.items():
                    if record.manifest_digest == candidate.digest:
                        return image_id, None
                continue
            by_reference = index.tags.get(str(candidate))
            if by_reference is not None:
                return by_reference, str(candidate)
        match = _SHORT_ID.fullmatch(text)
        if match:
            prefix = "sha256:" + match.group(1)
            ids = [image_id for image_id in index.images if image_id.startswith(prefix)]
            if len(ids) > 1:
                raise InvalidArgument(
                    f"image ID {text!r} is ambiguous: it matches {len(ids)} images",
                    hint="give more digits of the ID",
                )
            if ids:
                return ids[0], None
        raise NotFound(f"no such image: {text}", hint=NOT_FOUND_HINT)

    def _image(self, index: StoreIndex, image_id: str) -> Image:
        record = index.images[image_id]
        manifest = parse_manifest(
            self._blobs.read_bytes(record.manifest_digest), f"manifest {record.manifest_digest}"
        )
        parsed = parse_config(self._blobs.read_bytes(image_id), f"config {image_id}")
        return Image(
            id=image_id,
            repo_tags=index.tags_of(image_id),
            manifest_digest=record.manifest_digest,
            layers=tuple(layer.digest for layer in manifest.layers),
            diff_ids=parsed.diff_ids,
            config=parsed.config,
            created=parsed.created,
            architecture=parsed.architecture,
            os=parsed.os,
            size=sum(layer.size for layer in manifest.layers),
        )

    # -- removing --------------------------------------------------------------------

    def remove(
        self, reference_or_id: str, *, force: bool = False, in_use: Mapping[str, Sequence[str]] | None = None
    ) -> list[str]:
        """Untag, and delete the image when no tag is left (`hyper rmi`); returns the output lines."""
        return self.remove_report(reference_or_id, force=force, in_use=in_use).lines()

    def remove_report(
        self, reference_or_id: str, *, force: bool = False, in_use: Mapping[str, Sequence[str]] | None = None
    ) -> RemoveReport:
        """Untag, and delete the image when no tag is left.

        `in_use` maps image IDs to the containers using them: such an image is
        not deleted; without `force` removing its last tag is refused, with it
        the image is left untagged (Docker's behaviour).
        """
        users = in_use or {}
        with self._index.locked():
            index = self._index.read()
            image_id, tag = self._resolve(index, reference_or_id)
            containers = users.get(image_id, ())
            last_name = tag is None or index.tags_of(image_id) == (tag,)
            if containers and last_name and not force:
                raise FailedPrecondition(
                    f"image {reference_or_id} is in use by container {', '.join(c[:12] for c in containers)}",
                    hint="remove the container first, or untag the image anyway with `hyper rmi -f`",
                )
            deleted: tuple[str, ...] = ()
            untag: tuple[str, ...]
            if tag is not None:
                untag = (tag,)
            else:
                untag = index.tags_of(image_id)
                if len(untag) > 1 and not force:
                    raise FailedPrecondition(
                        f"image {reference_or_id} is referenced by {len(untag)} tags "
                        f"({', '.join(familiar_name(t) for t in untag)})",
                        hint="remove it by name, or force with `hyper rmi -f`",
                    )
            for name in untag:
                index = index.without_tag(name)
            if not index.tags_of(image_id) and not containers:
                index = index.without_image(image_id)
                deleted = (image_id,)
            self._index.write(index)
            self._collect_garbage(index)
        return RemoveReport(image_id, untag, deleted)

    def tag(self, source: str, target: str) -> str:
        """Give the image `source` names another name (`hyper tag`); returns the normalized name."""
        reference = parse_reference(target)
        if reference.digest is not None:
            raise InvalidArgument(
                f"cannot tag as {target!r}: a digest cannot be a tag", hint="give NAME[:TAG]"
            )
        with self._index.locked():
            index = self._index.read()
            image_id, _ = self._resolve(index, source)
            record = index.images[image_id]
            self._index.write(index.with_image(record, (str(reference),)))
        return str(reference)

    def prune(
        self, *, all_unused: bool = False, in_use: Mapping[str, Sequence[str]] | None = None
    ) -> PruneReport:
        """Delete untagged images (every unused one with `all_unused`), then unreferenced data."""
        users = in_use or {}
        deleted: list[str] = []
        untagged: list[str] = []
        with self._index.locked():
            index = self._index.read()
            before = self.disk_usage()
            for image_id in list(index.images):
                if users.get(image_id) or (index.tags_of(image_id) and not all_unused):
                    continue
                untagged.extend(familiar_name(tag) for tag in index.tags_of(image_id))
                index = index.without_image(image_id)
                deleted.append(image_id)
            self._index.write(index)
            self._collect_garbage(index)
            self._clean_ingest()
            reclaimed = max(0, before - self.disk_usage())
        return PruneReport(tuple(deleted), tuple(untagged), reclaimed)

    def collect_garbage(self) -> None:
        """Delete blobs and layer disks that no image references."""
        with self._index.locked():
            self._collect_garbage(self._index.read())

    def config_document(self, image: Image) -> dict[str, Any]:
        """The image's config blob as JSON (for `image inspect` and `history`)."""
        return decode_json_object(self._blobs.read_bytes(image.id), f"config {image.id}")

    def layer_sizes(self, image: Image) -> list[int]:
        """The stored (compressed) size of each layer blob, bottom → top."""
        return [self._blobs.path(digest).stat().st_size for digest in image.layers]

    def disk_usage(self) -> int:
        """Bytes the store's blobs and layer disks take on disk (allocated blocks:
        a layer disk is sparse, and its apparent size says nothing of its use)."""
        total = 0
        for directory in (self._blobs.blob_dir, self._layers_dir):
            if directory.is_dir():
                total += sum(allocated_bytes(p) for p in directory.rglob("*") if p.is_file())
        return total

    def image_usage(self, image: Image) -> dict[str, int]:
        """Each blob and built layer disk of `image` (by digest or diff ID) → its
        bytes on disk, for `system df`: images that share a layer share its bytes."""
        parts: dict[str, int] = {}
        for digest in (image.id, image.manifest_digest, *image.layers):
            if digest is not None:
                with contextlib.suppress(FileNotFoundError):
                    parts[digest] = allocated_bytes(self._blobs.path(digest))
        for diff_id in image.diff_ids:
            disk = _existing_disk(diff_id, self._layers_dir / digest_hex(diff_id))
            if disk is not None:
                with contextlib.suppress(FileNotFoundError):
                    parts[f"disk:{diff_id}"] = allocated_bytes(disk.path)
        return parts

    def _clean_ingest(self) -> None:
        """Remove ingest files writers that no longer run left behind (a killed pull)."""
        self._blobs.clean_ingest()

    def _collect_garbage(self, index: StoreIndex) -> None:
        """Delete blobs and layer disks no image references; hold the store lock."""
        blobs: set[str] = set()
        diff_ids: set[str] = set()
        for image_id, record in index.images.items():
            image = self._image(index, image_id)
            blobs.update((image_id, record.manifest_digest, *image.layers))
            diff_ids.update(image.diff_ids)
        for digest in list(self._blobs.digests()):
            if digest not in blobs:
                self._blobs.delete(digest)
        if self._layers_dir.is_dir():
            keep = {digest_hex(d) for d in diff_ids}
            for entry in self._layers_dir.iterdir():
                if entry.is_dir() and not entry.name.startswith(".") and entry.name not in keep:
                    remove_tree(entry)

    # -- layer disks -------------------------------------------------------------------

    def layer_disks(self, image: Image) -> list[LayerDisk]:
        """The image's layers as read-only disks, bottom → top, built once and shared."""
        if len(image.layers) != len(image.diff_ids):
            raise DataLoss(
                f"image {image.id} has {len(image.layers)} layers but {len(image.diff_ids)} diff IDs",
                hint="remove the image and load it again",
            )
        return [
            self._layer_disk(layer, diff_id)
            for layer, diff_id in zip(image.layers, image.diff_ids, strict=True)
        ]

    def _layer_disk(self, layer_digest: str, diff_id: str) -> LayerDisk:
        final = self._layers_dir / digest_hex(diff_id)
        existing = _existing_disk(diff_id, final)
        if existing is not None:
            return existing
        self._layers_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self._layers_dir / f".{final.name}.lock"):
            existing = _existing_disk(diff_id, final)
            if existing is not None:
                return existing
            fs_type = available_fs_type()
            blob = self._blobs.path(layer_digest)
            if not blob.is_file():
                raise DataLoss(
                    f"layer blob {layer_digest} is missing from the image store",
                    hint="remove the image with `hyper rmi` and load it again",
                )
            build_dir = Path(tempfile.mkdtemp(prefix=f".build-{final.name[:12]}-", dir=final.parent))
            try:
                rootfs = build_dir / "rootfs"
                rootfs.mkdir()
                with open_layer(blob) as stream:
                    reader = HashingReader(stream)
                    unpack_layer(reader, rootfs)  # type: ignore[arg-type]
                    reader.drain()
                actual = "sha256:" + reader.hasher.hexdigest()
                if actual != diff_id:
                    raise DataLoss(
                        f"layer blob {layer_digest} unpacks to {actual}, expected {diff_id}",
                        hint="the image store is damaged; remove the image and load it again",
                    )
                disk = build_dir / DISK_FILE[fs_type]
                build_layer_disk(rootfs, disk, fs_type, privileged=os.geteuid() == 0)
                remove_tree(rootfs)
                os.chmod(disk, 0o444)
                os.chmod(build_dir, 0o755)
                os.rename(build_dir, final)
            except BaseException:
                remove_tree(build_dir)
                raise
        return LayerDisk(diff_id, final / DISK_FILE[fs_type], fs_type)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copyfile(source, target)
        os.chmod(target, 0o444)


def allocated_bytes(path: Path) -> int:
    """What a file takes on disk: its allocated blocks, not its apparent size."""
    return path.lstat().st_blocks * 512


def _existing_disk(diff_id: str, directory: Path) -> LayerDisk | None:
    for fs_type, name in DISK_FILE.items():
        if (directory / name).is_file():
            return LayerDisk(diff_id, directory / name, fs_type)
    return None
