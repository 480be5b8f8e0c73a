"""Reading layer blobs: detecting their compression and computing their diff ID.

A layer blob is a tar, plain or gzip-compressed (by magic bytes, whatever its media
type claims). Its diff ID is the sha256 of the uncompressed tar, which the image
config lists in `rootfs.diff_ids`; checking it catches a corrupt or swapped layer
before it is ever unpacked.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hyper.errors import DataLoss, FailedPrecondition

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LayerInfo:
    diff_id: str
    compressed: bool
    entries: int


class HashingReader:
    """A read-only file object that hashes everything read through it."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def is_gzip(path: Path) -> bool:
    with path.open("rb") as file:
        magic = file.read(4)
    if magic.startswith(ZSTD_MAGIC):
        raise FailedPrecondition(
            f"layer {path.name} is zstd-compressed, which Hyper cannot read yet",
            hint="re-export the image with gzip or uncompressed layers",
        )
    return magic.startswith(GZIP_MAGIC)


@contextlib.contextmanager
def open_layer(path: Path) -> Iterator[BinaryIO]:
    """The uncompressed tar stream of a layer blob."""
    if is_gzip(path):
        with gzip.open(path, "rb") as stream:
            yield stream  # type: ignore[misc]
    else:
        with path.open("rb") as stream:
            yield stream


def inspect_layer(path: Path, what: str) -> LayerInfo:
    """Check that a layer blob is a readable tar and compute its diff ID."""
    compressed = is_gzip(path)
    entries = 0
    try:
        with open_layer(path) as stream:
            reader = HashingReader(stream)
            with tarfile.open(fileobj=reader, mode="r|") as archive:  # type: ignore[call-overload]
                for _ in archive:
                    entries += 1
            reader.drain()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataLoss(
            f"{what} is not a readable tar archive: {exc}",
            hint="the image archive is corrupt; export it again",
        ) from exc
    return LayerInfo("sha256:" + reader.hasher.hexdigest(), compressed, entries)
