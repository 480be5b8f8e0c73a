"""`hyper cp`'s extraction of a container's archive on the host
(hyper.archive.extract): the rules about the host's own files, and undoing a
failed copy. Archives are crafted byte by byte (tests/support/tars.py)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from hyper import errors
from hyper.archive.extract import extract_archive
from hyper.archive.guest_tar import ArchiveRefused
from tests.support import tars
from tests.support.tars import archive, device, directory, fifo, file, hardlink, symlink

PRECIOUS = b"precious"


def extract(data: bytes, dest: Path, rename: tuple[str, str] | None = None) -> int:
    return extract_archive(io.BytesIO(data), dest, rename=rename)


def snapshot(root: Path) -> dict[str, tuple[int, float | None, bytes | str | None]]:
    """Every path under `root` with its mode, mtime and content (or link target).
    A directory's mtime is left out: adding and removing entries moves it."""
    seen: dict[str, tuple[int, float | None, bytes | str | None]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            content: bytes | str | None = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            content = path.read_bytes()
        else:
            content = None
        mtime = None if stat.S_ISDIR(info.st_mode) else info.st_mtime
        seen[str(path.relative_to(root))] = (info.st_mode, mtime, content)
    return seen


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host tree: `dest` (the copy's directory) beside files that must not change."""
    (tmp_path / "outside").write_bytes(PRECIOUS)
    (tmp_path / "outside-dir").mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "existing.txt").write_bytes(PRECIOUS)
    (dest / "existing-dir").mkdir(mode=0o750)
    (dest / "existing-dir" / "inner").write_bytes(PRECIOUS)
    os.utime(dest / "existing-dir", (1_000_000, 1_000_000))
    return tmp_path


def test_extract_renames_the_top_entry_and_keeps_modes_links_and_times(tmp_path: Path) -> None:
    data = archive(
        directory("d", mode=0o750),
        file("d/f", b"data", mode=0o4755),
        symlink("d/abs", "/etc/passwd"),  # Docker keeps absolute links: they are never followed here
        symlink("d/rel", "f"),
        hardlink("d/hard", "d/f"),
        fifo("d/fifo"),
        device("d/dev", major=1, minor=3),
    )
    assert extract(data, tmp_path, rename=("d", "copy")) == 6  # the device never reaches the extractor
    copy = tmp_path / "copy"
    assert (copy / "f").read_bytes() == b"data"
    assert stat.S_IMODE((copy / "f").stat().st_mode) == 0o755  # no set-user-ID from a container
    assert stat.S_IMODE(copy.stat().st_mode) == 0o750
    assert copy.stat().st_mtime == tars.MTIME
    assert os.readlink(copy / "abs") == "/etc/passwd"
    assert (copy / "rel").read_bytes() == b"data"
    assert (copy / "hard").stat().st_ino == (copy / "f").stat().st_ino
    assert not (copy / "fifo").exists() and not (copy / "dev").exists()
    assert not (tmp_path / "d").exists()


def test_a_directorys_contents_land_in_the_destination_which_is_left_as_it_was(host: Path) -> None:
    dest = host / "dest"
    before = dest.stat()
    extract(archive(directory(".", mode=0o777, mtime=5), file("./new", b"n")), dest, rename=(".", "."))
    after = dest.stat()
    assert after.st_mode == before.st_mode and after.st_mtime != 5
    assert (dest / "new").read_bytes() == b"n"


def test_an_existing_directory_is_merged_into_but_never_changed(host: Path) -> None:
    dest = host / "dest"
    target = dest / "existing-dir"
    before = snapshot(target)
    extract(
        archive(
            directory("d", mode=0o777, mtime=5), directory("d/sub", mode=0o711, mtime=7), file("d/sub/f")
        ),
        dest,
        rename=("d", "existing-dir"),
    )
    after = snapshot(target)
    assert after["."] == before["."]  # the host directory's mode untouched,
    assert target.stat().st_mtime != 5  # nor its time set from the archive
    assert after["inner"] == before["inner"]
    made = (target / "sub").stat()
    assert (stat.S_IMODE(made.st_mode), made.st_mtime) == (0o711, 7)  # made by the copy: the archive's


def test_an_existing_file_is_replaced_without_following_its_symlink(host: Path) -> None:
    dest = host / "dest"
    (dest / "f").symlink_to(host / "outside")
    extract(archive(file("f", b"new")), dest, rename=("f", "f"))
    assert (host / "outside").read_bytes() == PRECIOUS
    assert not (dest / "f").is_symlink() and (dest / "f").read_bytes() == b"new"
    assert not [p for p in dest.iterdir() if p.name.startswith(".hyper-cp-")]  # the old one is gone


@pytest.mark.parametrize(
    "entries",
    [
        [file("/abs", b"x")],
        [file("../escape", b"x")],
        [file("a/../../escape", b"x")],
        [symlink("link", "../.."), file("link/escape", b"x")],
        [symlink("link", "/tmp"), file("link/escape", b"x")],
        [hardlink("h", "../outside")],
        [hardlink("h", "/etc/passwd")],
        [hardlink("h", "existing.txt")],  # a host file beside the copy, not a member
        [symlink("rel", "../../outside")],  # Docker's client refuses links above the copy
        [file("d/x"), file("other")],  # beside the requested name
    ],
    ids=[
        "absolute",
        "dotdot",
        "inner-dotdot",
        "relative-link",
        "absolute-link-parent",
        "hard-dotdot",
        "hard-abs",
        "hard-to-host-file",
        "link-above",
        "beside-the-name",
    ],
)
def test_hostile_archives_are_refused_and_leave_the_host_as_it_was(host: Path, entries: list[bytes]) -> None:
    before = snapshot(host)
    rename = ("d", "d") if entries[0].startswith(b"d/x") else None
    with pytest.raises(errors.DataLoss):
        extract(archive(*entries), host / "dest", rename=rename)
    assert snapshot(host) == before
    assert not list(Path("/tmp").glob("escape"))


def test_nothing_is_written_through_a_symlink_that_was_on_the_host(host: Path) -> None:
    dest = host / "dest"
    (dest / "d").symlink_to(host / "outside-dir")
    before = snapshot(host)
    with pytest.raises(errors.DataLoss, match="through the symbolic link"):
        extract(archive(file("x/f", b"x")), dest, rename=("x", "d"))
    with pytest.raises(errors.InvalidArgument, match="cannot overwrite non-directory"):
        extract(archive(directory("x"), file("x/f", b"x")), dest, rename=("x", "d"))
    assert snapshot(host) == before


class Trickle(io.RawIOBase):
    """A stream that gives a block at a time, as a slow connection does: the
    filter then sees (and passes on) the members one by one."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self.data.read(min(len(buffer), tars.BLOCK))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize(
    ("last", "error"),
    [
        (file("./evil/../../escape", b"x"), ArchiveRefused),  # refused by the filter
        (file("./host-link/escape", b"x"), errors.DataLoss),  # refused by the extractor
        (file("./existing-dir/inner/x", b"x"), errors.InvalidArgument),  # below a host file
    ],
    ids=["filter", "extractor", "below-a-file"],
)
def test_a_failed_copy_removes_what_it_made_and_restores_what_it_replaced(
    host: Path, last: bytes, error: type[Exception]
) -> None:
    dest = host / "dest"
    (dest / "host-link").symlink_to(host / "outside-dir")
    before = snapshot(host)
    data = archive(
        directory("."),
        file("./existing.txt", b"replaced"),
        directory("./new-dir"),
        file("./new-dir/a", b"a"),
        directory("./existing-dir/deep/deeper"),
        file("./existing-dir/deep/deeper/b", b"b"),
        symlink("./new-link", "/etc"),
        hardlink("./new-hard", "./new-dir/a"),
        last,
    )
    with pytest.raises(error):
        extract_archive(Trickle(data), dest, rename=(".", "."))  # type: ignore[arg-type]
    assert snapshot(host) == before
    extract_archive(Trickle(data[: -len(last) - len(tars.END)] + tars.END), dest, rename=(".", "."))  # type: ignore[arg-type]
    assert (dest / "existing.txt").read_bytes() == b"replaced"
    assert (dest / "new-hard").stat().st_ino == (dest / "new-dir" / "a").stat().st_ino


def test_a_stream_cut_mid_file_leaves_no_partial_file(host: Path) -> None:
    dest = host / "dest"
    before = snapshot(host)
    whole = archive(directory("d"), file("d/big", b"x" * 100_000))

    class CutStream(io.RawIOBase):
        """What the CLI's HTTP reader does when hyperd cuts the stream: it raises."""

        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            if self.sent > 50_000:
                raise errors.DataLoss("the copy was cut short")
            count = min(len(buffer), 4096)
            buffer[:count] = whole[self.sent : self.sent + count]
            self.sent += count
            return count

    with pytest.raises(errors.DataLoss, match="cut short"):
        extract_archive(io.BufferedReader(CutStream()), dest, rename=("d", "copy"))
    assert snapshot(host) == before


def test_an_interrupted_copy_is_undone_too(host: Path) -> None:
    dest = host / "dest"
    before = snapshot(host)

    class Interrupted(io.RawIOBase):
        def __init__(self) -> None:
            self.data = io.BytesIO(archive(directory("d"), file("d/a", b"a" * 10_000)))

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            if self.data.tell() > 2048:
                raise KeyboardInterrupt
            chunk = self.data.read(min(len(buffer), 1024))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    with pytest.raises(KeyboardInterrupt):
        extract_archive(io.BufferedReader(Interrupted(), 1024), dest, rename=("d", "d"))
    assert snapshot(host) == before


def test_a_directory_and_a_file_never_replace_each_other(host: Path) -> None:
    dest = host / "dest"
    before = snapshot(host)
    with pytest.raises(errors.InvalidArgument, match="cannot overwrite directory"):
        extract(archive(file("existing-dir", b"x")), dest, rename=("existing-dir", "existing-dir"))
    with pytest.raises(errors.InvalidArgument, match="cannot overwrite non-directory"):
        extract(archive(directory("existing.txt")), dest, rename=("existing.txt", "existing.txt"))
    with pytest.raises(errors.InvalidArgument, match="not a directory"):
        extract(archive(file("existing.txt/x")), dest, rename=("existing.txt", "existing.txt"))
    assert snapshot(host) == before


def test_what_is_not_a_tar_is_refused(host: Path) -> None:
    before = snapshot(host)
    with pytest.raises(errors.DataLoss):
        extract(b"\x00garbage" * 100, host / "dest")
    with pytest.raises(errors.DataLoss, match="refusing the archive"):
        extract(b"garbage" * 100, host / "dest")
    assert snapshot(host) == before
