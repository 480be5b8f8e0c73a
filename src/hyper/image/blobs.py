"""Content-addressed blob storage (`blobs/sha256/<hex>`), containerd's way.

Content is streamed into `ingest/` while its digest and size are computed; only
after both match what was expected is it renamed into place. A caller that needs
several blobs to land together (one image) stages them all first and commits them
once everything has been verified, so a bad archive commits nothing.

Every file in `ingest/` is named for the process writing it, which holds a lock
file in `ingest.owners/` for as long as it lives; what a killed writer left (an interrupted
`hyper pull`) is recognised by its lock being free and is removed by the next
`clean_ingest` (each pull and each garbage collection runs one).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hyper.errors import DataLoss, InvalidArgument

CHUNK_SIZE = 1 << 20
_link_counter = itertools.count()
_SHA256_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_OWNER = re.compile(r"([0-9]+-[0-9a-f]{8})\.")
_LOCK_SUFFIX = ".lock"
UNOWNED_STALE_SECONDS = 3600  # files from before owners were recorded: removed when this old
# ingest directory → (this process's token there, the open lock file it holds)
_owners: dict[Path, tuple[str, int]] = {}


def ingest_owner(ingest_dir: Path) -> str:
    """This process's token in `ingest_dir`, whose lock file it holds until it exits."""
    key = ingest_dir.resolve()
    known = _owners.get(key)
    if known is not None and known[0].startswith(f"{os.getpid()}-"):
        return known[0]
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    owners = _owners_dir(ingest_dir)
    owners.mkdir(parents=True, exist_ok=True)
    fd = os.open(owners / f"{token}{_LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _owners[key] = (token, fd)
    return token


def _owners_dir(ingest_dir: Path) -> Path:
    return ingest_dir.with_name(f"{ingest_dir.name}.owners")


def _owner_gone(lock: Path) -> bool:
    """Whether the process that holds (held) `lock` has exited: its lock is free."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also releases the lock taken to test it
    return True


def clean_ingest(ingest_dir: Path, *, unowned_after: float = UNOWNED_STALE_SECONDS) -> list[str]:
    """Remove what writers that no longer run left in `ingest_dir`; the names removed.

    A file whose owner's lock is free goes at once; a file with no owner in its
    name (left by an older Hyper) once it is `unowned_after` seconds old.
    """
    if not ingest_dir.is_dir():
        return []
    removed = []
    gone: dict[str, bool] = {}
    owners = _owners_dir(ingest_dir)
    for entry in ingest_dir.iterdir():
        owner = _OWNER.match(entry.name)
        with contextlib.suppress(FileNotFoundError):
            if owner is None:
                if entry.lstat().st_mtime > time.time() - unowned_after:
                    continue
            else:
                token = owner.group(1)
                if token not in gone:
                    gone[token] = _owner_gone(owners / f"{token}{_LOCK_SUFFIX}")
                if not gone[token]:
                    continue
            if entry.is_dir() and not entry.is_symlink():
                continue
            entry.unlink()
            removed.append(entry.name)
    if owners.is_dir():
        for lock in owners.iterdir():
            token = lock.name.removesuffix(_LOCK_SUFFIX)
            if gone.get(token, False) or (token not in gone and _owner_gone(lock)):
                lock.unlink(missing_ok=True)
    return removed


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

    def new_ingest_file(self, prefix: str) -> tuple[int, Path]:
        """A new file in the ingest area, named for this process; its descriptor and path."""
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{ingest_owner(self.ingest_dir)}.{prefix}", dir=self.ingest_dir)
        return fd, Path(name)

    def clean_ingest(self) -> list[str]:
        """Remove what killed writers left in the ingest area (see `clean_ingest`)."""
        return clean_ingest(self.ingest_dir)

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
        fd, path = self.new_ingest_file("blob-")
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
        owner = ingest_owner(self.ingest_dir)
        path = self.ingest_dir / f"{owner}.link-{digest_hex(digest)[:16]}-{next(_link_counter)}"
        try:
            os.link(self.path(digest), path)
        except FileNotFoundError:
            return None
        return StagedBlob(digest, path.stat().st_size, path)

    def link_in(self, source: Path, digest: str) -> StagedBlob:
        """Stage the committed blob `source` of another store (same file system: a
        hard link; else a copy), checked by digest when it is copied."""
        validate_digest(digest)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        owner = ingest_owner(self.ingest_dir)
        path = self.ingest_dir / f"{owner}.link-{digest_hex(digest)[:16]}-{next(_link_counter)}"
        try:
            os.link(source, path)
        except FileNotFoundError:
            raise DataLoss(f"blob {digest} is missing from the image store at {source.parent}") from None
        except OSError:
            with source.open("rb") as f:
                return self.stage(f, expected_digest=digest, what=f"blob {digest}")
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
