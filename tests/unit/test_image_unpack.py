"""Safe layer extraction: hostile paths, links and whiteouts, fuzzed with random tars."""

from __future__ import annotations

import io
import os
import random
import stat
import tarfile
from pathlib import Path

import pytest

from hyper.errors import FailedPrecondition, HyperError, InvalidArgument
from hyper.image.unpack import OPAQUE_XATTR, clean_path, unpack_layer
from tests.support.images import Entry, directory, file, hardlink, layer_tar, symlink

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="whiteouts, devices and ownership need root")


def unpack(tmp_path: Path, entries: list[Entry], *, privileged: bool | None = None) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    unpack_layer(io.BytesIO(layer_tar(entries)), root, privileged=privileged)
    return root


def outside_files(tmp_path: Path, root: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if root not in p.parents and p != root]


def is_whiteout(path: Path) -> bool:
    info = os.lstat(path)
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("a/b", ("a", "b")),
        ("./a//b/", ("a", "b")),
        ("/etc/passwd", ("etc", "passwd")),
        ("a/../b", ("b",)),
        (".", ()),
    ],
)
def test_clean_path(name: str, parts: tuple[str, ...]) -> None:
    assert clean_path(name) == parts


@pytest.mark.parametrize("name", ["../x", "../../x", "a/../../x", "/../x", "a/b/../../../x"])
def test_clean_path_refuses_escapes(name: str) -> None:
    with pytest.raises(InvalidArgument, match="outside the layer root"):
        clean_path(name)


def test_regular_layer(tmp_path: Path) -> None:
    root = unpack(
        tmp_path,
        [
            directory("etc", mode=0o750),
            file("etc/hosts", b"127.0.0.1 localhost\n", mode=0o600),
            file("usr/bin/tool", b"#!", mode=0o755),
            symlink("bin", "usr/bin"),
            hardlink("usr/bin/tool2", "usr/bin/tool"),
            Entry("run/fifo", tarfile.FIFOTYPE, mode=0o644),
        ],
        privileged=False,
    )
    assert (root / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert stat.S_IMODE((root / "etc/hosts").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o750
    assert (root / "etc").stat().st_mtime == 1_600_000_000
    assert os.readlink(root / "bin") == "usr/bin"
    assert (root / "usr/bin/tool2").stat().st_ino == (root / "usr/bin/tool").stat().st_ino
    assert stat.S_ISFIFO((root / "run/fifo").lstat().st_mode)
    assert (root / "usr").is_dir()  # implicit parent


def test_absolute_paths_land_inside(tmp_path: Path) -> None:
    root = unpack(tmp_path, [file("/abs/file", b"x")], privileged=False)
    assert (root / "abs/file").read_bytes() == b"x"


@pytest.mark.parametrize("name", ["../../x", "../x", "a/../../x"])
def test_path_traversal_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument):
        unpack(tmp_path, [file(name, b"evil")], privileged=False)
    assert outside_files(tmp_path, tmp_path / "root") == []


@pytest.mark.parametrize(
    ("target", "lands_in"),
    [("/", ""), ("..", ""), ("../..", ""), ("/etc/../..", ""), ("/tmp", "tmp"), ("../tmp", "tmp")],
)
def test_write_through_symlink_stays_inside(tmp_path: Path, target: str, lands_in: str) -> None:
    root = unpack(
        tmp_path,
        [symlink("escape", target), file("escape/pwned", b"evil"), file("escape/a/b", b"evil")],
        privileged=False,
    )
    assert outside_files(tmp_path, root) == []
    assert (root / lands_in / "pwned").read_bytes() == b"evil"  # resolved in the root's scope
    assert (root / lands_in / "a/b").read_bytes() == b"evil"


def test_symlink_chain_and_final_component_not_followed(tmp_path: Path) -> None:
    root = unpack(
        tmp_path,
        [
            symlink("a", "b"),
            symlink("b", "../../c"),
            file("a/x", b"1"),
            symlink("final", "/outside-file"),
            file("final", b"2"),  # replaces the link, never writes through it
        ],
        privileged=False,
    )
    assert (root / "c/x").read_bytes() == b"1"
    assert not (root / "final").is_symlink()
    assert (root / "final").read_bytes() == b"2"
    assert outside_files(tmp_path, root) == []


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="symbolic links"):
        unpack(tmp_path, [symlink("a", "b"), symlink("b", "a"), file("a/x")], privileged=False)


@pytest.mark.parametrize(
    "entries",
    [
        [hardlink("link", "../../etc/passwd")],
        [hardlink("link", "/etc/passwd")],  # absolute: means <root>/etc/passwd, not there
        [hardlink("link", "missing")],
        [directory("d"), hardlink("link", "d")],
        [symlink("out", "/"), hardlink("link", "out/etc/passwd")],
    ],
)
def test_bad_hardlinks_are_refused(tmp_path: Path, entries: list[Entry]) -> None:
    with pytest.raises(InvalidArgument):
        unpack(tmp_path, entries, privileged=False)
    assert outside_files(tmp_path, tmp_path / "root") == []


def test_long_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="255"):
        unpack(tmp_path, [file("a" * 256)], privileged=False)
    with pytest.raises(InvalidArgument, match="4096"):
        clean_path("a/" * 2100)


def test_xattrs_are_kept_but_overlay_ones_are_not_forged(tmp_path: Path) -> None:
    pax = {"SCHILY.xattr.user.note": "hello", "SCHILY.xattr.trusted.overlay.opaque": "y"}
    root = unpack(tmp_path, [directory("d", pax=pax)], privileged=IS_ROOT)
    try:
        assert os.getxattr(root / "d", "user.note") == b"hello"
    except OSError:
        pytest.skip("this filesystem has no user xattrs")
    assert OPAQUE_XATTR not in os.listxattr(root / "d")


@needs_root
def test_whiteouts_become_overlay_char_devices(tmp_path: Path) -> None:
    root = unpack(
        tmp_path,
        [
            file("etc/.wh.motd"),
            directory("var/lib"),
            file("var/lib/.wh..wh..opq"),
            file("var/lib/new"),
        ],
    )
    assert is_whiteout(root / "etc/motd")
    assert not (root / "etc/.wh.motd").exists()
    assert os.getxattr(root / "var/lib", OPAQUE_XATTR) == b"y"
    assert (root / "var/lib/new").exists()
    assert not (root / "var/lib/.wh..wh..opq").exists()


@needs_root
@pytest.mark.parametrize("whiteout_first", [True, False])
def test_whiteout_never_deletes_what_the_layer_wrote(tmp_path: Path, whiteout_first: bool) -> None:
    whiteouts = [file(".wh.keep"), file("dir/.wh.sub")]
    written = [file("keep", b"mine"), file("dir/sub/inner", b"x")]
    root = unpack(tmp_path, whiteouts + written if whiteout_first else written + whiteouts)
    assert (root / "keep").read_bytes() == b"mine"
    assert (root / "dir/sub/inner").read_bytes() == b"x"
    # The lower layers' dir/sub is deleted, this layer's stays: opaque.
    assert os.getxattr(root / "dir/sub", OPAQUE_XATTR) == b"y"


@needs_root
def test_whiteout_escape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        unpack(tmp_path, [file("../.wh.x")])
    assert not (tmp_path / "x").exists()
    (tmp_path / "second").mkdir()
    with pytest.raises(InvalidArgument, match="invalid whiteout"):
        unpack(tmp_path / "second", [file("a/.wh..")])


@needs_root
def test_ownership_devices_and_setuid_as_root(tmp_path: Path) -> None:
    root = unpack(
        tmp_path,
        [
            file("bin/su", b"x", mode=0o4755, uid=0, gid=0),
            file("home/app/f", b"x", uid=1000, gid=1000),
            symlink("home/app/l", "f"),
            Entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
            Entry("dev/loop0", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=0, gid=6),
        ],
    )
    assert stat.S_IMODE((root / "bin/su").stat().st_mode) == 0o4755
    info = (root / "home/app/f").stat()
    assert (info.st_uid, info.st_gid) == (1000, 1000)
    null = (root / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    loop = (root / "dev/loop0").lstat()
    assert stat.S_ISBLK(loop.st_mode) and loop.st_gid == 6


def test_without_root_devices_are_skipped(tmp_path: Path) -> None:
    root = unpack(
        tmp_path,
        [Entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), file("ok")],
        privileged=False,
    )
    assert not (root / "dev/null").exists()
    assert (root / "ok").exists()


@pytest.mark.skipif(IS_ROOT, reason="checks the unprivileged path; root may do anything")
def test_without_root_whiteouts_work_or_need_root(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    try:
        os.mknod(probe, stat.S_IFCHR | 0o600, os.makedev(0, 0))  # allowed since Linux 5.8
        mknod_allowed = True
    except PermissionError:
        mknod_allowed = False
    if mknod_allowed:
        root = unpack(tmp_path, [file(".wh.gone")], privileged=False)
        assert is_whiteout(root / "gone")
    else:
        with pytest.raises(FailedPrecondition, match="needs root"):
            unpack(tmp_path, [file(".wh.gone")], privileged=False)
    (tmp_path / "opaque").mkdir()
    with pytest.raises(FailedPrecondition, match="needs root"):  # trusted.* xattrs
        unpack(tmp_path / "opaque", [file("d/.wh..wh..opq")], privileged=False)


def test_corrupt_layer_is_data_loss(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = layer_tar([file("a", b"x" * 5000)])
    with pytest.raises(HyperError):
        unpack_layer(io.BytesIO(data[:1000]), root, privileged=False)


# -- fuzzing ------------------------------------------------------------------

_NAMES = ["a", "b", "..", ".", "", "c", ".wh.a", ".wh..wh..opq", "/", "etc", "x" * 10]
_TARGETS = ["/", "..", "../..", "a", "/etc", "a/b", "../../../tmp", ".", "c/../.."]


def _random_entry(rng: random.Random) -> Entry:
    name = "/".join(rng.choice(_NAMES) for _ in range(rng.randint(1, 4))) or "a"
    kind = rng.choice([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE])
    if kind == tarfile.REGTYPE:
        return file(name, b"fuzz")
    if kind == tarfile.DIRTYPE:
        return directory(name)
    target = rng.choice(_TARGETS) + "/" + rng.choice(_NAMES)
    return symlink(name, target) if kind == tarfile.SYMTYPE else hardlink(name, target)


def test_random_layers_never_write_outside_the_root(tmp_path: Path) -> None:
    rng = random.Random(20240601)
    sentinel = tmp_path / "sentinel"
    sentinel.write_bytes(b"untouched")
    outcomes = {"ok": 0, "refused": 0}
    for round_number in range(300):
        case = tmp_path / f"case{round_number}"
        root = case / "root"
        root.mkdir(parents=True)
        entries = [_random_entry(rng) for _ in range(rng.randint(1, 12))]
        try:
            unpack_layer(io.BytesIO(layer_tar(entries)), root, privileged=IS_ROOT)
            outcomes["ok"] += 1
        except HyperError:
            outcomes["refused"] += 1
        assert [p for p in case.iterdir() if p != root] == [], entries
        for path in root.rglob("*"):
            resolved_parent = path.parent.resolve()
            assert resolved_parent == root.resolve() or root.resolve() in resolved_parent.parents
    assert sentinel.read_bytes() == b"untouched"
    assert outcomes["ok"] > 30 and outcomes["refused"] > 30, outcomes


def test_a_layer_that_expands_past_its_bound_is_refused_before_it_fills_the_disk(tmp_path: Path) -> None:
    """A small sparse tar declaring a huge file: refused from its header, not after writing it."""
    from hyper.errors import ResourceExhausted
    from hyper.image.unpack import UnpackLimits

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        small = tarfile.TarInfo("small")
        small.size = 10
        tar.addfile(small, io.BytesIO(b"0123456789"))
        bomb = tarfile.TarInfo("bomb")
        bomb.size = 3 << 20
        tar.addfile(bomb, io.BytesIO(bytes(3 << 20)))
    root = tmp_path / "root"
    root.mkdir()
    buffer.seek(0)
    with pytest.raises(ResourceExhausted) as caught:
        unpack_layer(buffer, root, limits=UnpackLimits(max_bytes=2 << 20))
    assert "bomb" in caught.value.message
    assert not (root / "bomb").exists()
    buffer.seek(0)
    root2 = tmp_path / "root2"
    root2.mkdir()
    with pytest.raises(ResourceExhausted) as full:
        unpack_layer(buffer, root2, limits=UnpackLimits(reserve_bytes=1 << 60))  # no disk has that free
    assert "free" in full.value.message
