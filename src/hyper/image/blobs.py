"""Content-addressed blob storage (`blobs/sha256/<hex>`), containerd's way.

Content is streamed into `ingest/` while its digest and size are computed; only
after both match what was expected is it renamed into place. A caller that needs
several blobs to land together (one image) stages them all first and commits them
once everything has been verified, so a bad archive commits nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hyper.errors import DataLoss, InvalidArgument

CHUNK_SIZE = 1 << 20
_link_counter = itertools.count()
_SHA256_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


def validate_digest(digest: str) -> str:
    """Return `digest` if it is a sha256 digest in canonical form."""
    if not _SHA256_DIGEST.fullmatch(digest):
        raise InvalidArgument(
            f"unsupported digest {digest!r}", hint="only sha256:<64 lowercase hex> digests are used"
        )
    return digest


def digest_hex(digest: str) -> str:
    return validate_digest(digest).split(":", 1)[1]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class StagedBlob:
    """Verified content waiting in the ingest area to be committed."""

    digest: str
    size: int
    path: Path


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"

    def path(self, digest: str) -> Path:
        return self.blob_dir / digest_hex(digest)

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read_bytes(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise DataLoss(
                f"blob {digest} is missing from the image store at {self.root}",
                hint="remove the image with `hyper rmi` and load it again",
            ) from exc

    def digests(self) -> Iterator[str]:
        if not self.blob_dir.is_dir():
            return
        for entry in self.blob_dir.iterdir():
            if _SHA256_DIGEST.fullmatch("sha256:" + entry.name):
                yield "sha256:" + entry.name

    def stage(
        self,
        source: BinaryIO,
        *,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        what: str = "blob",
    ) -> StagedBlob:
        """Stream `source` into the ingest area, verifying digest and size on the way."""
        if expected_digest is not None:
            validate_digest(expected_digest)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="blob-", dir=self.ingest_dir)
        path = Path(name)
        hasher, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK_SIZE):
                    hasher.update(chunk)
                    size += len(chunk)
                    if expected_size is not None and size > expected_size:
                        raise DataLoss(
                            f"{what} is larger than its declared size {expected_size}",
                            hint="the content is corrupt or was tampered with; fetch it again",
                        )
                    out.write(chunk)
            digest = "sha256:" + hasher.hexdigest()
            if expected_size is not None and size != expected_size:
                raise DataLoss(
                    f"{what} has {size} bytes, expected {expected_size}",
                    hint="the content is truncated or corrupt; fetch it again",
                )
            if expected_digest is not None and digest != expected_digest:
                raise DataLoss(
                    f"{what} has digest {digest}, expected {expected_digest}",
                    hint="the content is corrupt or was tampered with; fetch it again",
                )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return StagedBlob(digest, size, path)

    def stage_existing(self, digest: str) -> StagedBlob | None:
        """Pin a committed blob for a new image by hard-linking it into the ingest area.

        Garbage collection may delete the blob before the new image is indexed;
        the link keeps the content, and committing it puts the blob back.
        """
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        path = self.ingest_dir / f"link-{digest_hex(digest)[:16]}-{os.getpid()}-{next(_link_counter)}"
        try:
            os.link(self.path(digest), path)
        except FileNotFoundError:
            return None
        return StagedBlob(digest, path.stat().st_size, path)

    def stage_bytes(self, data: bytes, *, what: str = "blob") -> StagedBlob:
        import io

        return self.stage(io.BytesIO(data), what=what)

    def commit(self, staged: StagedBlob) -> Path:
        """Move verified content into place; content already present is kept."""
        target = self.path(staged.digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            staged.path.unlink(missing_ok=True)
        else:
            os.chmod(staged.path, 0o444)
            os.replace(staged.path, target)
        return target

    def discard(self, staged: StagedBlob) -> None:
        staged.path.unlink(missing_ok=True)

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
