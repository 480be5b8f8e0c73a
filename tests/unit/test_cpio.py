"""The newc cpio writer, checked with an independent reader and with cpio(1)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from hyper.vm import cpio
from tests.support.cpio_reader import Archive, CpioFormatError, read_newc

IS_ROOT = os.geteuid() == 0
needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) is not installed")


def write(entries: list[cpio.Entry]) -> bytes:
    buffer = io.BytesIO()
    cpio.write_archive(buffer, entries)
    return buffer.getvalue()


def sample_entries(tmp_path: Path, *, device: bool = True) -> list[cpio.Entry]:
    tool = tmp_path / "tool-source"
    tool.write_bytes(b"#!/bin/sh\necho tool\n")
    entries = [
        cpio.directory("/etc"),
        cpio.regular("/etc/hosts", b"127.0.0.1 localhost\n", perms=0o600),
        cpio.regular("/usr/bin/tool", perms=0o755, source=tool),
        cpio.symlink("/bin", "usr/bin"),
        cpio.regular("/etc/hosts", b"a duplicate that must be dropped\n"),
        cpio.regular("/empty"),
    ]
    if device:
        entries.append(cpio.char_device("/dev/console", 5, 1))
    return entries


def test_members_parents_modes_and_contents(tmp_path: Path) -> None:
    archive = read_newc(write(sample_entries(tmp_path)))
    assert [m.path for m in archive.members] == [
        "/etc",
        "/etc/hosts",
        "/usr",
        "/usr/bin",
        "/usr/bin/tool",
        "/bin",
        "/empty",
        "/dev",
        "/dev/console",
    ]
    members = archive.by_path()
    assert members["/etc"].mode == stat.S_IFDIR | 0o755
    assert members["/usr/bin"].mode == stat.S_IFDIR | 0o755
    assert members["/etc/hosts"].mode == stat.S_IFREG | 0o600
    assert members["/etc/hosts"].data == b"127.0.0.1 localhost\n"
    assert members["/usr/bin/tool"].mode == stat.S_IFREG | 0o755
    assert members["/usr/bin/tool"].data == b"#!/bin/sh\necho tool\n"
    assert members["/bin"].mode == stat.S_IFLNK | 0o777
    assert members["/bin"].data == b"usr/bin"
    assert members["/empty"].data == b""
    console = members["/dev/console"]
    assert stat.S_ISCHR(console.mode)
    assert console.rdev == (5, 1)
    assert console.data == b""


def test_inodes_are_unique_and_metadata_is_fixed(tmp_path: Path) -> None:
    members = read_newc(write(sample_entries(tmp_path))).members
    assert len({m.ino for m in members}) == len(members)
    assert {(m.uid, m.gid, m.nlink, m.mtime) for m in members} == {(0, 0, 1, 0)}


def test_output_is_deterministic(tmp_path: Path) -> None:
    assert write(sample_entries(tmp_path)) == write(sample_entries(tmp_path))


def test_every_parent_comes_before_its_children() -> None:
    entries = [
        cpio.regular("/a/b/c/d.txt", b"d"),
        cpio.symlink("/x/y/link", "../../a"),
        cpio.directory("/a/b/e"),
        cpio.regular("/a/f", b"f"),
    ]
    paths = [m.path for m in read_newc(write(entries)).members]
    for index, path in enumerate(paths):
        parent = os.path.dirname(path)
        if parent != "/":
            assert parent in paths[:index], f"{parent} is not before {path}"


def test_the_first_entry_for_a_path_wins() -> None:
    archive = read_newc(
        write(
            [
                cpio.regular("/f", b"first", perms=0o600),
                cpio.regular("/f", b"second", perms=0o644),
                cpio.symlink("/f", "elsewhere"),
            ]
        )
    )
    [member] = archive.members
    assert (member.data, member.mode) == (b"first", stat.S_IFREG | 0o600)


@pytest.mark.parametrize("name_length", range(1, 9))
@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5])
def test_headers_and_data_are_four_byte_aligned(name_length: int, size: int) -> None:
    data = write([cpio.regular("/" + "n" * name_length, b"x" * size), cpio.regular("/z", b"zz")])
    archive = read_newc(data)  # the reader refuses any misaligned header
    assert [m.data for m in archive.members] == [b"x" * size, b"zz"]
    assert len(data) % 4 == 0
    assert archive.trailer_end == len(data)


def test_trailer_ends_an_empty_archive() -> None:
    data = write([])
    assert read_newc(data).members == []
    assert b"TRAILER!!!\0" in data
    assert read_newc(data).trailer_end == len(data)


def test_reader_refuses_a_truncated_archive(tmp_path: Path) -> None:
    data = write(sample_entries(tmp_path))
    with pytest.raises(CpioFormatError):
        read_newc(data[: len(data) - 20])


@needs_cpio
def test_system_cpio_lists_the_same_members(tmp_path: Path) -> None:
    data = write(sample_entries(tmp_path))
    listed = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True).stdout
    assert listed.decode().split() == [m.name for m in read_newc(data).members]


@needs_cpio
def test_system_cpio_extracts_it(tmp_path: Path) -> None:
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    data = write(sample_entries(source_dir, device=IS_ROOT))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
        input=data,
        cwd=out,
        capture_output=True,
        check=True,
    )
    assert (out / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert stat.S_IMODE((out / "etc/hosts").stat().st_mode) == 0o600
    assert (out / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    assert os.readlink(out / "bin") == "usr/bin"
    assert (out / "bin/tool").is_file()
    assert (out / "empty").stat().st_size == 0
    if IS_ROOT:
        console = (out / "dev/console").lstat()
        assert stat.S_ISCHR(console.st_mode)
        assert (os.major(console.st_rdev), os.minor(console.st_rdev)) == (5, 1)


def by_path(archive: Archive) -> dict[str, bytes]:
    return {m.path: m.data for m in archive.members}


def test_source_files_are_read_when_written(tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"old")
    entry = cpio.regular("/f", source=source)
    source.write_bytes(b"new contents")
    assert by_path(read_newc(write([entry])))["/f"] == b"new contents"
