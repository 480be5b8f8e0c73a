"""The pure parts of the guest's container set-up: users, environment, safe paths, errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hyper.agent.guest_container import (
    DEFAULT_PATH,
    Identity,
    StartError,
    _describe,
    _ensure_dir,
    _ensure_file,
    _no_symlinks_under,
    _report,
    complete_env,
    parse_start_error,
    resolve_identity,
)

PASSWD = """\
# a comment
root:x:0:0:root:/root:/bin/sh

alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:100:,,,::/bin/sh
1234:x:5000:5000:numeric name:/srv/n:/bin/sh
short:x:7
"""

GROUP = """\
root:x:0:
users:x:100:alice,bob
wheel:x:10:alice
staff:x:50:carol
alice:x:1000:alice
broken:x:abc:alice
tiny:x
"""


@pytest.fixture
def etc(tmp_path: Path) -> tuple[str, str]:
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text(PASSWD)
    group.write_text(GROUP)
    return str(passwd), str(group)


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("alice", Identity(1000, 1000, (100, 10), "/home/alice")),
        ("1000", Identity(1000, 1000, (100, 10), "/home/alice")),
        ("root", Identity(0, 0, (), "/root")),
        ("", Identity(0, 0, (), "/root")),
        ("bob", Identity(1001, 100, (), "/")),
        ("alice:wheel", Identity(1000, 10, (100, 1000), "/home/alice")),
        ("alice:77", Identity(1000, 77, (100, 10, 1000), "/home/alice")),
        ("1000:50", Identity(1000, 50, (100, 10, 1000), "/home/alice")),
        ("4242", Identity(4242, 0, (), "/")),
        ("4242:4343", Identity(4242, 4343, (), "/")),
        ("4242:staff", Identity(4242, 50, (), "/")),
        ("1234", Identity(5000, 5000, (), "/srv/n")),
    ],
)
def test_resolve_identity(etc: tuple[str, str], user: str, expected: Identity) -> None:
    assert resolve_identity(user, *etc) == expected


@pytest.mark.parametrize("user", ["mallory", "short", "alice:nogroup", "4242:nogroup"])
def test_unknown_user_or_group_is_a_user_stage_error(etc: tuple[str, str], user: str) -> None:
    with pytest.raises(StartError) as caught:
        resolve_identity(user, *etc)
    assert caught.value.stage == "user"
    assert caught.value.errno == errno.EINVAL
    assert user.rpartition(":")[2] in caught.value.message


def test_missing_files_allow_only_numeric_users(tmp_path: Path) -> None:
    passwd, group = str(tmp_path / "no-passwd"), str(tmp_path / "no-group")
    assert resolve_identity("0", passwd, group) == Identity(0, 0, (), "/")
    assert resolve_identity("", passwd, group) == Identity(0, 0, (), "/")
    assert resolve_identity("33:44", passwd, group) == Identity(33, 44, (), "/")
    with pytest.raises(StartError):
        resolve_identity("root", passwd, group)


def test_complete_env_adds_dockers_defaults() -> None:
    identity = Identity(1000, 1000, (), "/home/alice")
    assert complete_env(["A=1"], identity, "box", tty=False) == [
        f"PATH={DEFAULT_PATH}",
        "A=1",
        "HOSTNAME=box",
        "HOME=/home/alice",
    ]
    assert complete_env([], identity, "box", tty=True)[-1] == "TERM=xterm"


def test_complete_env_keeps_what_is_set() -> None:
    env = ["PATH=/opt/bin", "HOSTNAME=mine", "HOME=/h", "TERM=dumb"]
    assert complete_env(env, Identity(0, 0, (), "/root"), "box", tty=True) == env


def test_complete_env_counts_an_empty_value_as_set() -> None:
    result = complete_env(["HOME="], Identity(0, 0, (), "/root"), "box", tty=False)
    assert "HOME=" in result
    assert "HOME=/root" not in result


def test_no_symlinks_under_joins_plain_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    assert _no_symlinks_under(str(tmp_path), "/etc/./hosts") == str(tmp_path / "etc" / "hosts")
    assert _no_symlinks_under(str(tmp_path), "missing/deeper") == str(tmp_path / "missing" / "deeper")
    assert _no_symlinks_under(str(tmp_path), "") == str(tmp_path)


@pytest.mark.parametrize("relative", ["dev", "dev/pts", "etc/hosts", "/etc/hosts"])
def test_no_symlinks_under_refuses_a_symlink_component(tmp_path: Path, relative: str) -> None:
    (tmp_path / "dev").symlink_to("/")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").symlink_to("/etc/hosts")
    with pytest.raises(StartError) as caught:
        _no_symlinks_under(str(tmp_path), relative)
    assert (caught.value.stage, caught.value.errno) == ("mount", errno.ELOOP)


def test_no_symlinks_under_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "proc").symlink_to("/nonexistent-target")
    with pytest.raises(StartError):
        _no_symlinks_under(str(tmp_path), "proc")


@pytest.mark.parametrize("relative", ["..", "../etc", "etc/../../x", "a/.."])
def test_no_symlinks_under_refuses_dot_dot(tmp_path: Path, relative: str) -> None:
    (tmp_path / "etc").mkdir()
    with pytest.raises(StartError) as caught:
        _no_symlinks_under(str(tmp_path), relative)
    assert (caught.value.stage, caught.value.errno) == ("mount", errno.EINVAL)


def test_ensure_dir_and_file_create_what_is_missing(tmp_path: Path) -> None:
    assert Path(_ensure_dir(str(tmp_path), "dev/shm")).is_dir()
    created = Path(_ensure_file(str(tmp_path), "etc/resolv.conf"))
    assert created.is_file()
    created.write_text("kept")
    _ensure_file(str(tmp_path), "etc/resolv.conf")
    assert created.read_text() == "kept"


def test_ensure_file_never_writes_through_a_symlinked_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").symlink_to(outside)
    with pytest.raises(StartError):
        _ensure_file(str(root), "etc/hosts")
    assert list(outside.iterdir()) == []


def test_parse_start_error() -> None:
    error = parse_start_error(b'exec\x002\x00exec: "nope": executable file not found in $PATH')
    assert (error.stage, error.errno) == ("exec", 2)
    assert error.message == 'exec: "nope": executable file not found in $PATH'
    assert str(error) == error.message


@pytest.mark.parametrize(
    ("data", "stage", "code", "message"),
    [
        (b"garbage", "garbage", 0, ""),
        (b"user\x00-1\x00neg", "user", 0, "neg"),
        (b"cwd\x00x\x00m\x00more", "cwd", 0, "m\x00more"),
        (b"\xff\x0013\x00bad bytes", "\ufffd", 13, "bad bytes"),
        (b"", "", 0, ""),
    ],
)
def test_parse_start_error_tolerates_junk(data: bytes, stage: str, code: int, message: str) -> None:
    error = parse_start_error(data)
    assert (error.stage, error.errno, error.message) == (stage, code, message)


def test_report_round_trips_through_a_pipe_and_is_bounded() -> None:
    read_end, write_end = os.pipe()
    try:
        _report(write_end, "exec", 13, "x" * 10_000)
        os.close(write_end)
        data = os.read(read_end, 100_000)
    finally:
        os.close(read_end)
    assert len(data) == 4000
    error = parse_start_error(data)
    assert (error.stage, error.errno) == ("exec", 13)


def test_describe_exec_failures_like_docker() -> None:
    missing = OSError(errno.ENOENT, "No such file or directory")
    assert _describe("exec", ["nope"], missing) == 'exec: "nope": executable file not found in $PATH'
    assert _describe("exec", ["/bin/nope"], missing) == 'exec: "/bin/nope": no such file or directory'
    denied = OSError(errno.EACCES, "Permission denied")
    assert _describe("exec", ["x"], denied) == 'exec: "x": permission denied'
    assert _describe("cwd", ["x"], denied) == "cwd: permission denied"


def test_group_add_joins_the_users_groups_by_name_or_number(etc: tuple[str, str]) -> None:
    # As runc: the image user's groups first, then the added ones, each once.
    assert resolve_identity("alice", *etc, ["staff", "4000", "10"]) == Identity(
        1000, 1000, (100, 10, 50, 4000), "/home/alice"
    )
    assert resolve_identity("4242", *etc, ["wheel"]) == Identity(4242, 0, (10,), "/")
    with pytest.raises(StartError, match="unable to find group nogroup: no matching entries in group file"):
        resolve_identity("alice", *etc, ["nogroup"])
