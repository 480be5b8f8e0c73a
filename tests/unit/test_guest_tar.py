"""The guest tar filter, rule by rule, with tars crafted byte by byte
(tests/support/tars.py) and with the guest agent's own archives."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from hyper.agent.guest_archive import write_archive
from hyper.archive.guest_tar import (
    END_MARKER,
    ArchiveRefused,
    GuestTarFilter,
    TarLimits,
    archive_name,
    parse_pax_records,
    top_name,
)
from tests.support import tars
from tests.support.tars import archive, device, directory, fifo, file, gnu_long, hardlink, pax, symlink


def run_filter(data: bytes, top: str, *, chunk: int = 4096, limits: TarLimits | None = None) -> bytes:
    tar_filter = GuestTarFilter(top, limits or TarLimits())
    out = [tar_filter.feed(data[start : start + chunk]) for start in range(0, len(data), chunk)]
    return b"".join(out) + tar_filter.close()


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def names(data: bytes) -> list[str]:
    return [m.name for m in members(data)]


def refused(data: bytes, top: str, match: str, *, limits: TarLimits | None = None) -> None:
    with pytest.raises(ArchiveRefused, match=match):
        run_filter(data, top, limits=limits)


# ---- what passes ------------------------------------------------------------------------


def _agent_archive(tmp_path: Path) -> bytes:
    source = tmp_path / "d"
    (source / "sub").mkdir(parents=True)
    (source / "a").write_bytes(b"alpha" * 1000)
    (source / "a").chmod(0o640)
    (source / "sub" / ("long-" * 40)).write_bytes(b"long name")
    (source / "link").symlink_to("a")
    (source / "abs").symlink_to("/etc/passwd")
    os.link(source / "a", source / "hard")
    os.mkfifo(source / "pipe")
    (source / "café").write_text("non-ascii")
    buffer = io.BytesIO()
    write_archive(buffer, str(source), "d")
    return buffer.getvalue()


@pytest.mark.parametrize("chunk", [1, 7, 512, 65536])
def test_the_agents_own_archive_passes_unchanged_in_meaning(tmp_path: Path, chunk: int) -> None:
    original = _agent_archive(tmp_path)
    out = run_filter(original, "d", chunk=chunk)
    before, after = members(original), members(out)
    assert [m.name for m in after] == [m.name for m in before]
    for old, new in zip(before, after, strict=True):
        assert (new.type, new.mode, new.size, new.linkname, new.mtime) == (
            old.type,
            old.mode,
            old.size,
            old.linkname,
            old.mtime,
        )
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        data = tar.extractfile("d/a")
        assert data is not None and data.read() == b"alpha" * 1000
    assert {m.name for m in after if m.islnk()} | {m.name for m in before if m.islnk()} <= {"d/a", "d/hard"}


def test_a_directorys_contents_keep_their_dot_prefix() -> None:
    out = run_filter(archive(directory("."), file("./a", b"x"), directory("./sub"), file("sub/b")), ".")
    assert names(out) == [".", "./a", "./sub", "./sub/b"]


def test_names_are_cleaned_and_the_end_marker_comes_only_at_close() -> None:
    tar_filter = GuestTarFilter("d")
    out = tar_filter.feed(archive(directory("./d/"), file("d//x/./y", b"1")))
    assert not out.endswith(END_MARKER)
    out += tar_filter.close()
    assert out.endswith(END_MARKER)
    assert names(out) == ["d", "d/x/y"]


def test_top_names_follow_docker() -> None:
    cases = {
        "/a/b": "b",
        "/a/b/": "b",
        "/a/.": ".",
        "/a/b/.": ".",
        "/": ".",
        "/..": ".",
        "/a/..": ".",
        "a": "a",
    }
    assert {path: top_name(path) for path in cases} == cases
    assert (archive_name("/"), archive_name("/x/."), archive_name("/x/y")) == ("/", ".", "y")
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            GuestTarFilter(bad)


def test_file_data_streams_through_without_being_held() -> None:
    size = 8 << 20
    tar_filter = GuestTarFilter("big")
    head = tars.header("big", size=size)
    assert len(tar_filter.feed(head)) >= 512  # the header goes out before any data came
    passed = [len(tar_filter.feed(bytes(1 << 20))) for _ in range(size >> 20)]
    assert passed == [1 << 20] * (size >> 20)
    tar_filter.feed(tars.END)
    assert tar_filter.close() == END_MARKER


# ---- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([file("/d/x")], "absolute"),
        ([file("d/../x")], r"'\.\.'"),
        ([file("d/a/../../x")], r"'\.\.'"),
        ([file("x")], "not under 'd'"),
        ([file("dx/y")], "not under 'd'"),
        ([directory("./")], "not under 'd'"),
        ([pax([("path", "d/a\x00b")]), file("d/placeholder")], "NUL"),
        ([pax([("path", "d/" + "a/" * 2100 + "x")]), file("d/placeholder")], "longer than 4096"),
        ([pax([("path", "d/" + "n" * 256)]), file("d/placeholder")], "component longer than 255"),
    ],
    ids=[
        "absolute",
        "dotdot",
        "inner-dotdot",
        "beside",
        "prefix-only",
        "empty",
        "nul",
        "long-path",
        "long-name",
    ],
)
def test_names_outside_or_malformed_are_refused(entries: list[bytes], match: str) -> None:
    refused(archive(*entries), "d", match)


def test_duplicates_and_replacing_a_directory_are_refused() -> None:
    refused(archive(file("d/x"), file("d/x")), "d", "appears twice")
    refused(archive(file("d/x"), directory("d/x/")), "d", "appears twice")
    refused(archive(file("d/sub/x"), directory("d/sub")), "d", "appears twice")  # implied, then made
    refused(archive(file("d/sub/x"), symlink("d/sub", "/etc")), "d", "appears twice")
    refused(archive(directory("d"), directory("d")), "d", "appears twice")


def test_nothing_goes_below_a_symlink_or_a_file() -> None:
    refused(archive(symlink("d/l", "/etc"), file("d/l/passwd")), "d", "through the symlink 'd/l'")
    refused(archive(symlink("d/l", "../.."), directory("d/l/x")), "d", "through the symlink")
    refused(archive(symlink("d/l", "/"), hardlink("d/l/h", "d/f")), "d", "through the symlink")
    refused(archive(symlink("d/Link", "/etc"), file("d/link/passwd")), "d", "case-insensitive")
    refused(archive(file("d/f"), file("d/f/x")), "d", "not a directory")
    refused(archive(fifo("d/p"), file("d/p/x")), "d", "not a directory")
    refused(archive(symlink(".", "/etc")), ".", "top of a directory's archive is a symlink")
    out = run_filter(archive(directory("d"), symlink("d/l", "/etc/passwd"), file("d/lx")), "d")
    assert [(m.name, m.linkname) for m in members(out)][1:] == [("d/l", "/etc/passwd"), ("d/lx", "")]


def test_hard_links_only_to_earlier_regular_files_of_the_archive() -> None:
    out = run_filter(archive(file("d/f", b"data"), hardlink("d/h1", "d/f"), hardlink("d/h2", "./d//h1")), "d")
    assert [(m.name, m.linkname) for m in members(out)] == [("d/f", ""), ("d/h1", "d/f"), ("d/h2", "d/h1")]
    for entries in (
        [hardlink("d/h", "d/later"), file("d/later")],
        [hardlink("d/h", "d/nowhere")],
        [directory("d/sub"), hardlink("d/h", "d/sub")],
        [symlink("d/s", "/etc/passwd"), hardlink("d/h", "d/s")],
        [fifo("d/p"), hardlink("d/h", "d/p")],
        [device("d/sda"), hardlink("d/h", "d/sda")],
    ):
        refused(archive(*entries), "d", "not a regular file earlier")
    refused(archive(hardlink("d/h", "/etc/passwd")), "d", "absolute")
    refused(archive(hardlink("d/h", "outside")), "d", "not under")
    refused(archive(hardlink("d/h", "../outside")), "d", r"'\.\.'")
    refused(archive(hardlink("d/h", "d/../../outside")), "d", r"'\.\.'")


def test_devices_are_dropped_and_fifos_kept() -> None:
    out = run_filter(
        archive(
            directory("d"),
            device("d/sda", kind=tarfile.BLKTYPE),
            device("d/mem", major=1, minor=1),
            fifo("d/p"),
        ),
        "d",
    )
    assert names(out) == ["d", "d/p"]
    refused(archive(device("d/sda"), file("d/sda")), "d", "appears twice")


def test_set_id_bits_and_owner_names_are_stripped() -> None:
    out = run_filter(
        archive(
            directory("d", mode=0o41777),
            file("d/suid", mode=0o106755, uid=1000, gid=1000),
            file("d/sgid", mode=0o2711),
        ),
        "d",
    )
    modes = {m.name: (m.mode, m.uid, m.gid, m.uname, m.gname) for m in members(out)}
    assert modes == {
        "d": (0o1777, 0, 0, "", ""),
        "d/suid": (0o755, 1000, 1000, "", ""),
        "d/sgid": (0o711, 0, 0, "", ""),
    }


def test_times_out_of_range_are_clamped() -> None:
    out = run_filter(
        archive(pax([("mtime", "-5.5")]), file("d/old"), pax([("mtime", "1700000000.25")]), file("d/new")),
        "d",
    )
    assert [m.mtime for m in members(out)] == [0, 1_700_000_000]
    refused(archive(pax([("mtime", "soon")]), file("d/x")), "d", "bad mtime")


# ---- sizes and headers --------------------------------------------------------------------


def test_bad_sizes_and_owners_are_refused() -> None:
    refused(archive(tars.header("d", size=-1)), "d", "size of -1")
    refused(archive(tars.header("d", size=1 << 64)), "d", "size of")
    refused(archive(tars.header("d", kind=tarfile.SYMTYPE, linkname="x", size=10)), "d", "claims 10 bytes")
    refused(archive(tars.header("d", kind=tarfile.DIRTYPE, size=512)), "d", "claims 512 bytes")
    refused(archive(tars.header("d", kind=tarfile.LNKTYPE, linkname="d", size=1)), "d", "claims 1 bytes")
    refused(archive(file("d", uid=-1)), "d", "owner -1:0")
    refused(archive(pax([("uid", str(1 << 40))]), file("d")), "d", "owner")
    refused(archive(pax([("size", "-3")]), file("d")), "d", "bad size")


def test_a_pax_size_overrides_the_header() -> None:
    out = run_filter(archive(pax([("size", "5")]), tars.header("d", size=0) + tars.padded(b"12345")), "d")
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        data = tar.extractfile("d")
        assert data is not None and data.read() == b"12345"


def test_pax_headers_are_bounded_checked_and_not_passed_on() -> None:
    big = pax([("comment", "x" * (1 << 20))])
    refused(archive(big, file("d")), "d", "extended header of")
    for broken in (b"abc", b"5 a=b\n", b"99 path=d\n", b"7 =x\n\n", b"6 path\n"):
        refused(archive(tars.member("pax", broken, kind=tarfile.XHDTYPE), file("d")), "d", "PAX header has")
    refused(archive(pax([("path", "d")]), pax([("path", "d")]), file("x")), "d", "two extended headers")
    refused(archive(pax([("a", "b")], kind=tarfile.XGLTYPE), file("d")), "d", "tar type b'g'")
    refused(archive(pax([("GNU.sparse.map", "0,1")]), file("d")), "d", "sparse")
    refused(archive(pax([("path", "d")])), "d", "ends right after an extended header")
    out = run_filter(
        archive(pax([("SCHILY.xattr.security.capability", "\x01\x02"), ("path", "d")]), file("x")), "d"
    )
    [only] = members(out)
    assert only.name == "d" and only.pax_headers == {}
    assert parse_pax_records(tars.pax_record("path", "a") + tars.pax_record("path", "b")) == {"path": b"b"}


def test_gnu_long_names_and_links() -> None:
    long_name = "d/" + "n" * 200
    out = run_filter(
        archive(
            gnu_long(long_name),
            file("ignored", b"x"),
            gnu_long(long_name, kind=b"K"),
            hardlink("d/h", "short"),
        ),
        "d",
    )
    assert [(m.name, m.linkname) for m in members(out)] == [(long_name, ""), ("d/h", long_name)]
    refused(archive(gnu_long("d/" + "n" * 9000), file("d")), "d", "extended header of")
    refused(archive(gnu_long("d/a"), gnu_long("d/b"), file("d")), "d", "two extended headers")
    refused(
        archive(gnu_long("d/a"), pax([("path", "d/b")]), file("d")),
        "d",
        "both a PAX header and a GNU long name",
    )


def test_headers_must_be_well_formed() -> None:
    refused(archive(tars.header("d", checksum_delta=1)), "d", "checksum")
    refused(archive(tars.header("d", magic=b"\0" * 8)), "d", "ustar magic")
    refused(archive(tars.patched(tars.header("d"), 100, b"0000999\0")), "d", "malformed number")
    # POSIX headers join their prefix; GNU ones keep theirs out of the name.
    out = run_filter(archive(tars.header("x", prefix="d/sub")), "d")
    assert names(out) == ["d/sub/x"]
    refused(archive(tars.header("x", prefix="d/sub", magic=tars.GNU_MAGIC)), "d", "not under 'd'")


@pytest.mark.parametrize("kind", [b"S", b"V", b"M", b"D", b"N", b"Z", b"X"])
def test_other_member_types_are_refused(kind: bytes) -> None:
    refused(archive(tars.header("d", kind=kind)), "d", "tar type")


def test_a_regular_file_named_like_a_directory_is_refused() -> None:
    refused(archive(file("d/x/")), "d", "named like a directory")


def test_the_member_count_is_bounded() -> None:
    limits = TarLimits(max_members=3)
    run_filter(archive(directory("d"), file("d/a"), file("d/b")), "d", limits=limits)
    refused(
        archive(directory("d"), file("d/a"), file("d/b"), file("d/c")),
        "d",
        "more than 3 members",
        limits=limits,
    )


# ---- the end ------------------------------------------------------------------------------


def test_an_archive_that_stops_early_is_refused_at_close() -> None:
    whole = archive(directory("d"), file("d/f", b"x" * 2000))
    for cut in (0, 100, 512, 700, len(whole) - len(tars.END)):
        tar_filter = GuestTarFilter("d")
        tar_filter.feed(whole[:cut])
        with pytest.raises(ArchiveRefused, match="stopped"):
            tar_filter.close()


def test_what_follows_the_end_is_ignored_and_a_refusal_sticks() -> None:
    out = run_filter(archive(file("d")) + b"garbage after the end" * 100, "d")
    assert names(out) == ["d"]
    tar_filter = GuestTarFilter("d")
    with pytest.raises(ArchiveRefused):
        tar_filter.feed(archive(file("x")))
    with pytest.raises(ArchiveRefused):
        tar_filter.feed(archive(file("d")))
    with pytest.raises(ArchiveRefused):
        tar_filter.close()
