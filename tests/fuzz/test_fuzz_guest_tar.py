"""Fuzzing the guest tar filter (hyperd's and the CLI's) and the hyper CLI's
extractor with hostile tars: whatever comes in, the filter either refuses it
(ArchiveRefused and nothing else) or passes a tar that keeps every rule, in
the same way however the stream is cut into pieces; the extractor writes
nothing outside its destination, never changes what was there before except
by replacing a file of the same name, and undoes a failed copy entirely."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyper.archive.extract import extract_archive
from hyper.archive.guest_tar import ArchiveRefused, GuestTarFilter
from hyper.errors import HyperError
from tests.fuzz.conftest import all_paths, corpus, fuzz_settings
from tests.fuzz.strategies import TOP, chunked, hostile_tars

_EMITTED_PAX_KEYS = {"path", "linkpath", "size", "uid", "gid", "hdrcharset"}


def filtered(data: bytes, top: str, sizes: list[int]) -> bytes | None:
    """The filter's output for `data` fed in pieces; None when it refused."""
    tar_filter = GuestTarFilter(top)
    out = []
    try:
        for piece in chunked(data, sizes):
            out.append(tar_filter.feed(piece))
        out.append(tar_filter.close())
    except ArchiveRefused:
        return None
    return b"".join(out)


def check_rules(out: bytes, top: str) -> None:
    """What the filter passed keeps every rule (read back with Python's tarfile)."""
    with tarfile.open(fileobj=io.BytesIO(out), mode="r:") as tar:
        members = tar.getmembers()
    seen: dict[str, tarfile.TarInfo] = {}
    for member in members:
        name = member.name
        assert name == top or name.startswith(f"{top}/"), name
        assert "\x00" not in name and not name.startswith("/")
        assert ".." not in name.split("/")
        assert name not in seen, f"duplicate {name!r}"
        assert member.type in (
            tarfile.REGTYPE,
            tarfile.DIRTYPE,
            tarfile.SYMTYPE,
            tarfile.LNKTYPE,
            tarfile.FIFOTYPE,
        )
        assert member.mode & 0o6000 == 0 and member.uname == member.gname == ""
        assert set(member.pax_headers) <= _EMITTED_PAX_KEYS, member.pax_headers
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = seen.get("/".join(parts[:depth]))
            assert parent is None or parent.isdir(), f"{name!r} below {parent.name!r}"
        if member.islnk():
            target = seen.get(member.linkname)
            assert target is not None and (target.isreg() or target.islnk()), member.linkname
        seen[name] = member


def run_filter_case(data: bytes, sizes: list[int]) -> None:
    whole = filtered(data, TOP, [])
    assert filtered(data, TOP, sizes) == whole  # the same verdict however the stream is cut
    if whole is not None:
        check_rules(whole, TOP)
    for top in (".", "other"):
        out = filtered(data, top, sizes)
        if out is not None:
            check_rules(out, top)


@pytest.mark.parametrize("seed", corpus("guest_tar"), ids=lambda path: path.name)
def test_corpus_through_the_filter(seed: Path) -> None:
    run_filter_case(seed.read_bytes(), [1, 511, 513, 4096])


@fuzz_settings(300)
@given(hostile_tars() | hostile_tars(hostile=False), st.lists(st.integers(1, 2000), max_size=4))
def test_filter_passes_only_what_keeps_the_rules(data: bytes, sizes: list[int]) -> None:
    run_filter_case(data, sizes)


# ---- the CLI's extractor ------------------------------------------------------------------


Snapshot = dict[str, tuple[int, int, float | None, str | None]]


def snapshot(root: Path) -> Snapshot:
    """Every path under `root`: mode, inode, mtime (not a directory's: entries move it), content."""
    seen: Snapshot = {}
    for path in all_paths(root):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            content: str | None = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = None
        mtime = None if stat.S_ISDIR(info.st_mode) else info.st_mtime
        seen[str(path.relative_to(root))] = (info.st_mode, info.st_ino, mtime, content)
    return seen


def make_host(root: Path, *, existing_copy: bool) -> Path:
    """Files outside the destination, and inside it: a file, a directory, a
    symlink to the outside, and (when `existing_copy`) the copy's own name."""
    (root / "outside").write_bytes(b"precious")
    (root / "outside-dir").mkdir()
    dest = root / "dest"
    dest.mkdir()
    (dest / "existing.txt").write_bytes(b"precious")
    (dest / "existing-dir").mkdir(mode=0o750)
    (dest / "existing-dir" / "inner").write_bytes(b"precious")
    (dest / "host-link").symlink_to(root / "outside-dir")
    if existing_copy:
        copy = dest / "copy"
        copy.mkdir(mode=0o700)
        (copy / "a").write_bytes(b"precious")
        (copy / "link").symlink_to(root / "outside")
        (copy / "existing.txt").write_bytes(b"precious")
        (copy / "existing-dir").mkdir(mode=0o700)
        (copy / "existing-dir" / "inner").write_bytes(b"precious")
        (copy / "host-link").symlink_to(root / "outside-dir")
        os.link(root / "outside", copy / "hard-to-outside")
    return dest


class Trickle(io.RawIOBase):
    """A stream read in pieces of the given sizes: the CLI filters as data comes,
    so members are extracted before a later one is refused."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._pieces = chunked(data, sizes)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._pieces:
            return 0
        piece = self._pieces.pop(0)
        count = min(len(buffer), len(piece))
        buffer[:count] = piece[:count]
        if count < len(piece):
            self._pieces.insert(0, piece[count:])
        return count


def run_extract_case(data: bytes, rename: tuple[str, str], existing_copy: bool, sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-extract-") as scratch:
        root = Path(scratch)
        dest = make_host(root, existing_copy=existing_copy)
        before = snapshot(root)
        try:
            extract_archive(Trickle(data, sizes), dest, rename=rename)  # type: ignore[arg-type]
            succeeded = True
        except HyperError:
            succeeded = False
        after = snapshot(root)
        outside = {path: value for path, value in before.items() if not path.startswith("dest")}
        assert {path: after.get(path) for path in outside} == outside  # nothing outside changed
        assert set(after) - set(before) <= {p for p in after if p.startswith("dest")}
        if not succeeded:
            assert after == before  # a failed copy is undone entirely
            return
        old_inodes = {value[1] for path, value in before.items() if stat.S_ISREG(value[0])}
        for path, (mode, inode, mtime, content) in before.items():
            now = after.get(path)
            if stat.S_ISDIR(mode):
                assert now is not None and now[0] == mode, path  # host directories never changed
            elif now is not None and now[1] == inode:
                assert now == (mode, inode, mtime, content), path  # a file is replaced, never written into
        for path, (mode, inode, _, _) in after.items():
            if path not in before and stat.S_ISREG(mode):
                assert inode not in old_inodes, f"{path} is a hard link to a host file"
                assert mode & 0o6000 == 0


RENAMES = [
    (TOP, "copy"),
    (TOP, TOP),
    (".", "."),
    (".", "copy"),
    (TOP, "existing-dir"),
    (TOP, "existing.txt"),
    (TOP, "host-link"),
]


@pytest.mark.parametrize("seed", corpus("guest_tar"), ids=lambda path: path.name)
@pytest.mark.parametrize("rename", RENAMES, ids="-".join)
def test_corpus_through_the_extractor(seed: Path, rename: tuple[str, str]) -> None:
    run_extract_case(seed.read_bytes(), rename, existing_copy=True, sizes=[512])


@st.composite
def extractions(draw: st.DrawFn) -> tuple[bytes, tuple[str, str]]:
    """A rename and a tar whose benign members are under its top name."""
    rename = draw(st.sampled_from(RENAMES))
    hostile = draw(st.booleans())
    return draw(hostile_tars(hostile=hostile, root=rename[0])), rename


@fuzz_settings(250)
@given(extractions(), st.booleans(), st.lists(st.integers(1, 3000), min_size=1, max_size=3))
def test_extractor_writes_nothing_outside_and_undoes_failures(
    case: tuple[bytes, tuple[str, str]], existing_copy: bool, sizes: list[int]
) -> None:
    data, rename = case
    run_extract_case(data, rename, existing_copy, sizes)
