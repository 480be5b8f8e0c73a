"""The guest agent's top, stats and archive helpers, on the host: /proc parsers,
path lookup inside a root full of hostile symlinks, and tar out and back in."""

from __future__ import annotations

import errno
import io
import os
import pwd
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from hyper.agent import guest_archive as archive
from hyper.agent import guest_stats as stats
from hyper.agent.guest_container import Container, StartError
from hyper.agent.guest_process import ContainerRoot, Process, spawn_call
from tests.support.images import directory, file, hardlink, layer_tar, symlink

# -- /proc parsers ------------------------------------------------------------------
PROC_STAT = """\
cpu  100 20 30 400 50 6 7 8 9 10
cpu0 60 10 20 200 25 3 4 5 9 10
cpu1 40 10 10 200 25 3 3 3 0 0
intr 12345 0 0
ctxt 999
btime 1700000000
"""


def test_parse_proc_stat_counts_busy_and_all_time_in_ns() -> None:
    cpu = stats.parse_proc_stat(PROC_STAT, hz=100)
    tick = 10_000_000
    assert cpu["total_ns"] == (100 + 20 + 30 + 6 + 7 + 8) * tick  # not idle, iowait, guest
    assert cpu["system_ns"] == (100 + 20 + 30 + 400 + 50 + 6 + 7 + 8) * tick
    assert cpu["per_cpu_ns"] == [(60 + 10 + 20 + 3 + 4 + 5) * tick, (40 + 10 + 10 + 3 + 3 + 3) * tick]
    assert cpu["online_cpus"] == 2


def test_parse_proc_stat_of_an_old_kernel_and_of_nothing() -> None:
    cpu = stats.parse_proc_stat("cpu 1 2 3 4\ncpu0 1 2 3 4\n", hz=100)  # no iowait and later fields
    assert (cpu["total_ns"], cpu["system_ns"], cpu["online_cpus"]) == (60_000_000, 100_000_000, 1)
    assert stats.parse_proc_stat("") == {"total_ns": 0, "per_cpu_ns": [], "system_ns": 0, "online_cpus": 0}


def test_parse_meminfo() -> None:
    text = (
        "MemTotal:         246000 kB\nMemFree:          100000 kB\nMemAvailable:     150000 kB\n"
        "Buffers:            1000 kB\nCached:            20000 kB\nHugePages_Total:       0\n"
    )
    assert stats.parse_meminfo(text) == {
        "total": 246000 * 1024,
        "available": 150000 * 1024,
        "used": (246000 - 150000) * 1024,
        "cache": 21000 * 1024,
    }
    old = stats.parse_meminfo("MemTotal: 10 kB\nMemFree: 4 kB\n")  # before MemAvailable existed
    assert (old["available"], old["used"]) == (4096, 6144)


def test_parse_diskstats_keeps_whole_virtio_disks() -> None:
    text = """\
 254       0 vda 27 0 3400 12 0 0 0 0 0 20 12 0 0 0 0 0 0
 254       1 vda1 5 0 40 1 0 0 0 0 0 2 1 0 0 0 0 0 0
 254      16 vdb 16 2 130 5 1 0 8 1 0 9 6
   8       0 sda 100 0 800 0 50 0 400 0 0 0 0
   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0
 254      32 vdaa 1 0 1 0 1 0 1 0 0 0 0
"""
    assert stats.parse_diskstats(text) == {
        "vda": {"read_bytes": 3400 * 512, "write_bytes": 0, "reads": 27, "writes": 0},
        "vdb": {"read_bytes": 130 * 512, "write_bytes": 8 * 512, "reads": 16, "writes": 1},
        "vdaa": {"read_bytes": 512, "write_bytes": 512, "reads": 1, "writes": 1},
    }


def test_parse_net_dev_leaves_out_the_loopback() -> None:
    text = (
        "Inter-|   Receive                            |  Transmit\n"
        " face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop ...\n"
        "    lo:  1000    10  0 0 0 0 0 0   1000   10 0 0 0 0 0 0\n"
        "  eth0:12345678 9000 1 2 0 0 0 3 7654321 8000 4 5 0 0 0 0\n"
    )
    assert stats.parse_net_dev(text) == {
        "eth0": {
            "rx_bytes": 12345678,
            "rx_packets": 9000,
            "rx_errors": 1,
            "rx_dropped": 2,
            "tx_bytes": 7654321,
            "tx_packets": 8000,
            "tx_errors": 4,
            "tx_dropped": 5,
        }
    }


def test_parse_stat_line_with_a_hostile_comm() -> None:
    line = "42 (a) b (c) d) S 7 42 42 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 1 0 50 1000 100\n"
    assert stats.parse_stat_line(line) == ("a) b (c) d", "S", 7, 380)


def test_namespace_pid_is_the_last_nspid_field() -> None:
    status = stats.parse_status(
        "Name:\tsleep\nPid:\t1234\nPPid:\t1200\nUid:\t1000\t1001\t1002\t1003\nNSpid:\t1234\t1\n"
    )
    assert stats.namespace_pid(status) == 1
    assert stats.real_uid(status) == 1000
    assert stats.namespace_pid(stats.parse_status("Pid:\t77\n")) == 77  # kernels without NSpid


@pytest.mark.parametrize(
    ("ticks", "shown"),
    [
        (0, "00:00:00"),
        (99, "00:00:00"),
        (5900, "00:00:59"),
        (6100, "00:01:01"),
        (359_900, "00:59:59"),
        (366_100, "01:01:01"),
        (100 * 86399, "23:59:59"),
        (100 * (3 * 86400 + 3661), "3-01:01:01"),
    ],
)
def test_format_cpu_time(ticks: int, shown: str) -> None:
    assert stats.format_cpu_time(ticks, 100) == shown


def test_command_line_or_the_bracketed_comm() -> None:
    assert stats.command_line(b"sh\0-c\0echo hi\0", "sh") == "sh -c echo hi"
    assert stats.command_line(b"", "kworker/0:1") == "[kworker/0:1]"
    assert stats.command_line(b"bad\xff\0", "x") == "bad\ufffd"


def entry(pid: int, nspid: int, ppid: int, pid_ns: int, cmd: str = "x") -> stats.ProcEntry:
    return stats.ProcEntry(
        pid=pid, nspid=nspid, ppid=ppid, uid=0, state="S", ticks=150, cmd=cmd, pid_ns=pid_ns
    )


def test_top_lists_one_namespace_with_its_own_pids() -> None:
    entries = [
        entry(300, 2, 200, 7, "sh"),
        entry(200, 1, 150, 7, "sleep 1000"),  # its parent, the shim, is outside
        entry(150, 150, 1, 5, "shim"),
        entry(400, 1, 150, 9, "another container"),
        entry(310, 3, 305, 7, "exec'd"),  # parent 305: an exec's shim, outside too
    ]
    listing = stats.top(7, entries, hz=100, users={0: "root"})
    assert listing["titles"] == ["UID", "PID", "PPID", "STAT", "TIME", "CMD"]
    assert listing["processes"] == [
        ["root", "1", "0", "S", "00:00:01", "sleep 1000"],
        ["root", "2", "1", "S", "00:00:01", "sh"],
        ["root", "3", "0", "S", "00:00:01", "exec'd"],
    ]
    assert stats.top(7, entries[:1], users={})["processes"][0][0] == "0"  # a UID without a name


def test_user_names_come_from_the_containers_passwd() -> None:
    text = "root:x:0:0:root:/root:/bin/sh\nbin:x:1:1::/:/bin/false\nalias:x:0:0::/:/bin/sh\nbroken\n"
    assert stats.parse_passwd(text) == {0: "root", 1: "bin"}


def test_top_of_this_hosts_own_namespace_finds_this_process() -> None:
    own = os.stat("/proc/self/ns/pid").st_ino
    assert {e.pid_ns for e in stats.all_processes(pid_ns=own)} == {own}
    listing = stats.top(own, stats.all_processes(), stats.clock_ticks())
    mine = [row for row in listing["processes"] if row[1] == str(os.getpid())]
    assert len(mine) == 1
    assert mine[0][0] == pwd.getpwuid(os.getuid()).pw_name  # this host's /etc/passwd: our root
    assert "pytest" in mine[0][5] or "python" in mine[0][5]


# -- paths inside a root ------------------------------------------------------------
@pytest.fixture
def root(tmp_path: Path) -> str:
    """A container root whose symlinks all try to lead out of it."""
    base = tmp_path / "root"
    (base / "etc").mkdir(parents=True)
    (base / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\n")
    (base / "data/sub").mkdir(parents=True)
    (base / "data/sub/f").write_text("one\n")
    (base / "data/link").symlink_to("sub/f")
    (base / "data/abs").symlink_to("/etc")  # absolute: the container's /etc
    (base / "data/up").symlink_to("../../../../../../..")
    (base / "data/host").symlink_to(str(tmp_path))  # a real host path, absent in the root
    (base / "data/escape").symlink_to("../../../../../../etc")
    (base / "data/dangling").symlink_to("/nowhere/at/all")
    (base / "data/chain1").symlink_to("chain2")
    (base / "data/chain2").symlink_to("../data/chain3/")
    (base / "data/chain3").symlink_to("/data/sub")
    (base / "data/loop1").symlink_to("loop2")
    (base / "data/loop2").symlink_to("loop1")
    (tmp_path / "outside").write_text("secret\n")
    return str(base)


@pytest.mark.parametrize(
    ("path", "follow", "expected"),
    [
        ("/data/sub/f", False, "/data/sub/f"),
        ("data/sub/f", False, "/data/sub/f"),
        ("/data/link", False, "/data/link"),
        ("/data/link", True, "/data/sub/f"),
        ("/data/abs/passwd", False, "/etc/passwd"),
        ("/data/up/etc/passwd", False, "/etc/passwd"),
        ("/../../../etc/./passwd", False, "/etc/passwd"),
        ("/data/escape/passwd", False, "/etc/passwd"),
        ("/data/dangling", True, "/nowhere/at/all"),
        ("/data/chain1/f", False, "/data/sub/f"),
        ("/data/chain1", True, "/data/sub"),
        ("/data/link/", False, "/data/sub/f"),  # a trailing slash follows, as for the kernel
        ("/data/sub/..", False, "/data"),
        ("/", False, "/"),
        ("", False, "/"),
    ],
)
def test_resolve_in_root_never_leaves_it(root: str, path: str, follow: bool, expected: str) -> None:
    assert archive.resolve_in_root(root, path, follow_final=follow) == expected


def test_a_host_path_is_only_a_name_inside_the_root(root: str, tmp_path: Path) -> None:
    resolved = archive.resolve_in_root(root, "/data/host/outside", follow_final=False)
    assert resolved == f"{tmp_path}/outside"
    assert archive.in_root(root, resolved) == f"{root}{tmp_path}/outside"
    assert not os.path.lexists(archive.in_root(root, resolved))


def test_resolve_in_root_stops_a_symlink_loop(root: str) -> None:
    with pytest.raises(OSError) as caught:
        archive.resolve_in_root(root, "/data/loop1/x", follow_final=False)
    assert caught.value.errno == errno.ELOOP


def test_stat_path_lstats_the_last_component_and_names_its_target(root: str) -> None:
    link = archive.stat_path(root, "/data/link")
    assert stat.S_ISLNK(link["mode"])
    assert (link["name"], link["size"], link["link_target"]) == ("link", len("sub/f"), "/data/sub/f")
    plain = archive.stat_path(root, "/data/up/data/sub/f")
    assert stat.S_ISREG(plain["mode"])
    assert (plain["name"], plain["size"], plain["link_target"]) == ("f", 4, "")
    assert plain["mtime"] == os.lstat(f"{root}/data/sub/f").st_mtime
    assert archive.stat_path(root, "/data/dangling")["link_target"] == "/nowhere/at/all"
    assert archive.stat_path(root, "/data/chain1")["link_target"] == "/data/sub"
    assert stat.S_ISDIR(archive.stat_path(root, "/")["mode"])


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/data/missing", errno.ENOENT),
        ("/data/host/outside", errno.ENOENT),  # exists on the host, not in the root
        ("/data/escape/../outside", errno.ENOENT),
        ("/data/sub/f/x", errno.ENOTDIR),
        ("/data/loop1/x", errno.ELOOP),
    ],
)
def test_stat_path_refusals_carry_the_errno(root: str, path: str, code: int) -> None:
    with pytest.raises(StartError) as caught:
        archive.stat_path(root, path)
    assert (caught.value.stage, caught.value.errno) == ("archive", code)
    assert path in caught.value.message


def test_existing_directory_follows_symlinks_and_refuses_files(root: str) -> None:
    assert archive.existing_directory(root, "/data/chain1") == "/data/sub"
    assert archive.existing_directory(root, "/data/abs") == "/etc"
    with pytest.raises(StartError) as caught:
        archive.existing_directory(root, "/data/link")
    assert caught.value.errno == errno.ENOTDIR
    with pytest.raises(StartError) as caught:
        archive.existing_directory(root, "/data/dangling")
    assert caught.value.errno == errno.ENOENT
    assert archive.existing_path(root, "/data/up/data/link") == "/data/link"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/a/b", "b"),
        ("/a/b/", "b"),
        ("a/b//", "b"),
        ("/a/.", "."),
        ("/a/./", "."),
        (".", "."),
        ("/", "/"),
        ("", "/"),
        ("/a/../c", "c"),
    ],
)
def test_archive_name_is_dockers(path: str, name: str) -> None:
    assert archive.archive_name(path) == name
    assert archive.tar_name(path) == ("." if name == "/" else name)


# -- tar out and in -----------------------------------------------------------------
def make_tree(base: Path) -> None:
    (base / "tree/sub").mkdir(parents=True)
    (base / "tree/sub/f").write_bytes(b"data\n" * 1000)
    os.chmod(base / "tree/sub/f", 0o640)
    os.link(base / "tree/sub/f", base / "tree/hard")
    (base / "tree/ln").symlink_to("sub/f")
    os.mkfifo(base / "tree/fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(base / "tree/sock"))
    os.utime(base / "tree/sub/f", (1_000_000_000, 1_000_000_000))
    os.utime(base / "tree/sub", (1_100_000_000, 1_100_000_000))


def test_write_archive_keeps_links_and_owners_and_skips_sockets(tmp_path: Path) -> None:
    make_tree(tmp_path)
    out = io.BytesIO()
    archive.write_archive(out, str(tmp_path / "tree"), "top")
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"top", "top/sub", "top/sub/f", "top/hard", "top/ln", "top/fifo"}
        f, hard = members["top/sub/f"], members["top/hard"]
        # The first of the two names in walk order holds the data, the other links to it.
        first, second = (hard, f) if hard.isreg() else (f, hard)
        assert first.isreg() and first.size == 5000
        assert second.islnk() and second.linkname == first.name
        assert members["top/ln"].issym() and members["top/ln"].linkname == "sub/f"
        assert members["top/fifo"].isfifo()
        assert f.mode == 0o640 or hard.mode == 0o640
        assert members["top/sub"].mtime == 1_100_000_000
        assert all(m.uid == os.getuid() and m.uname == "" for m in members.values())
        data = tar.extractfile(first)
        assert data is not None and data.read() == b"data\n" * 1000


def test_write_archive_of_a_symlink_is_the_symlink(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("x")
    (tmp_path / "link").symlink_to("target")
    out = io.BytesIO()
    archive.write_archive(out, str(tmp_path / "link"), "link")
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        [member] = tar.getmembers()
    assert (member.name, member.issym(), member.linkname) == ("link", True, "target")


def test_archive_round_trip(tmp_path: Path) -> None:
    make_tree(tmp_path)
    out = io.BytesIO()
    archive.write_archive(out, str(tmp_path / "tree"), "tree")
    dest = tmp_path / "dest"
    dest.mkdir()
    archive.extract_archive(io.BytesIO(out.getvalue()), str(dest))
    assert (dest / "tree/sub/f").read_bytes() == b"data\n" * 1000
    assert os.stat(dest / "tree/sub/f").st_ino == os.stat(dest / "tree/hard").st_ino
    assert stat.S_IMODE(os.stat(dest / "tree/sub/f").st_mode) == 0o640
    assert os.stat(dest / "tree/sub/f").st_mtime == 1_000_000_000
    assert os.stat(dest / "tree/sub").st_mtime == 1_100_000_000  # set after its contents
    assert os.readlink(dest / "tree/ln") == "sub/f"
    assert stat.S_ISFIFO(os.lstat(dest / "tree/fifo").st_mode)


def test_extract_strips_leading_slashes_and_refuses_dot_dot(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    archive.extract_archive(io.BytesIO(layer_tar([file("/abs/file", b"in"), file("./rel", b"r")])), str(dest))
    assert (dest / "abs/file").read_bytes() == b"in"
    assert (dest / "rel").read_bytes() == b"r"
    for hostile in (file("../evil", b"x"), file("a/../../evil", b"x"), hardlink("h", "../../etc/passwd")):
        with pytest.raises(archive.ArchiveError, match="outside the destination"):
            archive.extract_archive(io.BytesIO(layer_tar([hostile])), str(dest))
    assert not (tmp_path / "evil").exists()


def test_extract_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "outside").write_text("untouched")
    (dest / "f").symlink_to(tmp_path / "outside")
    archive.extract_archive(io.BytesIO(layer_tar([file("f", b"new")])), str(dest))
    assert (tmp_path / "outside").read_text() == "untouched"
    assert not (dest / "f").is_symlink()
    assert (dest / "f").read_bytes() == b"new"


def test_extract_merges_directories_and_can_refuse_kind_changes(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "d").mkdir(parents=True)
    (dest / "d/kept").write_text("kept")
    (dest / "plain").write_text("file")
    tar = layer_tar([directory("d", 0o700), file("d/added", b"a")])
    archive.extract_archive(io.BytesIO(tar), str(dest))
    assert sorted(os.listdir(dest / "d")) == ["added", "kept"]
    assert stat.S_IMODE(os.stat(dest / "d").st_mode) == 0o700
    with pytest.raises(archive.ArchiveError, match="cannot overwrite directory"):
        archive.extract_archive(io.BytesIO(layer_tar([file("d")])), str(dest), no_overwrite_dir_non_dir=True)
    with pytest.raises(archive.ArchiveError, match="cannot overwrite non-directory"):
        archive.extract_archive(
            io.BytesIO(layer_tar([directory("plain")])), str(dest), no_overwrite_dir_non_dir=True
        )
    archive.extract_archive(io.BytesIO(layer_tar([file("d", b"now a file")])), str(dest))
    assert (dest / "d").read_bytes() == b"now a file"


def test_extract_into_a_read_only_directory_of_the_archive(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    tar = layer_tar([directory("ro", 0o555), file("ro/f", b"x"), symlink("ro/l", "f")])
    archive.extract_archive(io.BytesIO(tar), str(dest))
    assert (dest / "ro/f").read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(dest / "ro").st_mode) == 0o555
    os.chmod(dest / "ro", 0o755)  # so that tmp_path can be removed


def test_member_path() -> None:
    assert archive.member_path("/a//b/./c/") == "a/b/c"
    assert archive.member_path("./") == ""
    with pytest.raises(archive.ArchiveError):
        archive.member_path("a/..")


# -- the agent's children and container handles ------------------------------------
def _collect(process: Process) -> tuple[int, bytes, bytes]:
    chunks: dict[int, bytearray] = {fd: bytearray() for fd in process.outputs}
    for fd in process.outputs:
        os.set_blocking(fd, True)
        while data := os.read(fd, 4096):
            chunks[fd] += data
        os.close(fd)
    _, status = os.waitpid(process.shim_pid, 0)
    out, err = (bytes(chunks[fd]) for fd in process.outputs)
    return os.waitstatus_to_exitcode(status), out, err


def test_spawn_call_reports_stdio_and_status() -> None:
    def child() -> int:
        os.write(1, os.read(0, 100).upper())
        os.write(2, b"note")
        return 3

    process = spawn_call(5, child, stdin=True, keep=[])
    assert process.stdin_fd is not None
    os.set_blocking(process.stdin_fd, True)
    os.write(process.stdin_fd, b"hello")
    os.close(process.stdin_fd)
    assert (process.stream, process.shim_pid) == (5, process.init_pid)
    assert _collect(process) == (3, b"HELLO", b"note")


def test_spawn_call_writes_an_exception_to_stderr_and_exits_1() -> None:
    def child() -> int:
        raise archive.ArchiveError("archive member '../x' points outside the destination")

    process = spawn_call(6, child, stdin=False, keep=[])
    assert process.stdin_fd is None
    status, out, err = _collect(process)
    assert (status, out) == (1, b"")
    assert b"outside the destination" in err


def test_container_root_of_a_container_that_never_started(tmp_path: Path) -> None:
    container = Container("c1", str(tmp_path))
    assert container.running_main() is None
    with pytest.raises(StartError) as caught:
        ContainerRoot.open(container, need_running=True)
    assert (caught.value.stage, caught.value.errno) == ("container", errno.ESRCH)
    assert "container c1 is not running" in caught.value.message
    root = ContainerRoot.open(container, need_running=False)
    try:
        assert (root.mnt_fd, root.pid_fd) == (None, None)
        assert os.path.samestat(os.fstat(root.root_fd), os.stat(tmp_path))
    finally:
        root.close()
    assert root.fds == []


def test_container_root_refuses_a_recycled_pid(tmp_path: Path) -> None:
    container = Container("c1", str(tmp_path))
    # This very process stands in for a main process whose PID now belongs to another namespace.
    container.main = Process(1, os.getpid(), os.getpid())
    container.pid_ns = os.stat("/proc/self/ns/pid").st_ino + 1
    assert container.running_main() is container.main
    with pytest.raises(StartError) as caught:
        ContainerRoot.open(container, need_running=True)
    assert caught.value.errno == errno.ESRCH
    container.main.status = 0
    assert container.running_main() is None
