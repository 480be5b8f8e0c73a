"""The real jailer, run on ordinary programs instead of QEMU (no VM needed).

MINIMAL mode needs nothing; the PRIVILEGED jail (namespaces, pivot_root, a uid
of its own) needs root and is skipped without it.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hyper.vm import confine
from hyper.vm.jail import JailMode, JailMount, JailSpec, jail_symlinks, jailer_document

UID = 0x50000000 + 4242
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the privileged jail needs root")


def _status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _plan(
    tmp_path: Path, argv: list[str], *, mode: JailMode, fds: list[tuple[int, int]], report: int, **jail: Any
) -> list[str]:
    host = confine.host_layout()
    mounts = [
        JailMount("/usr", "/usr", "dir"),
        JailMount("/etc/ld.so.cache", "/etc/ld.so.cache", "file"),
        JailMount("/dev/null", "/dev/null", "device", writable=True),
    ]
    root = tmp_path / "root"
    root.mkdir()
    document = jailer_document(
        jail=JailSpec(mode, **jail),
        argv=argv,
        binary=argv[0],
        fds=fds,
        root=str(root),
        mounts=mounts,
        symlinks=jail_symlinks(host),
        report_fd=report,
        lease_fd=None,
        detach=False,
        die_with_parent=True,
        host_uid=os.getuid(),
        host_gid=os.getgid(),
    )
    return confine.jailer_command(document)


def test_minimal_mode_sets_no_new_privs_drops_capabilities_and_places_descriptors(tmp_path: Path) -> None:
    passed = tmp_path / "passed.txt"
    passed.write_text("hello\n")
    fd = os.open(passed, os.O_RDONLY)
    read, write = os.pipe()
    try:
        command = _plan(
            tmp_path,
            ["/bin/sh", "-c", "cat /proc/self/status; cat <&7; ls /proc/self/fd; env"],
            mode=JailMode.MINIMAL,
            fds=[(fd, 7)],
            report=write,
        )
        result = subprocess.run(
            command, capture_output=True, text=True, pass_fds=(fd, write), timeout=60, check=False
        )
    finally:
        os.close(fd)
        os.close(write)
    with os.fdopen(read) as report:
        assert report.read() == "mode minimal\n"
    assert result.returncode == 0, result.stderr
    status = _status(result.stdout)
    assert status["NoNewPrivs"] == "1"
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == int(status["CapAmb"], 16) == 0
    lines = result.stdout.splitlines()
    assert "hello" in lines
    assert not [line for line in lines if "=" in line and not line.startswith(("PWD=", "SHLVL=", "_="))]
    # Only stdio, the passed descriptor (and ls's own directory handle) remain.
    numbers = {int(line) for line in lines if line.isdigit()}
    assert {0, 1, 2, 7} <= numbers and len(numbers - {0, 1, 2, 7}) <= 1


@needs_root
def test_privileged_jail_has_its_uid_its_own_root_and_no_network(tmp_path: Path) -> None:
    read, write = os.pipe()
    try:
        command = _plan(
            tmp_path,
            ["/usr/bin/find", "/", "-xdev", "-maxdepth", "2", "-not", "-path", "/usr/*"],
            mode=JailMode.PRIVILEGED,
            fds=[],
            report=write,
            uid=UID,
            gid=UID,
            groups=(UID + 1,),
        )
        listed = subprocess.run(
            command, capture_output=True, text=True, pass_fds=(write,), timeout=60, check=False
        )
    finally:
        os.close(write)
    os.close(read)
    assert listed.returncode == 0, listed.stderr
    entries = set(listed.stdout.split())
    assert entries <= {
        "/",
        "/usr",
        "/etc",
        "/etc/ld.so.cache",
        "/dev",
        "/dev/null",
        "/lib",
        "/lib64",
        "/lib32",
        "/libx32",
        "/bin",
        "/sbin",
    }
    assert not [e for e in entries if e.startswith(("/tmp", "/var", "/run", "/proc", "/home", "/root"))]


@needs_root
def test_privileged_jail_process_as_seen_from_the_host(tmp_path: Path) -> None:
    read, write = os.pipe()
    try:
        command = _plan(
            tmp_path,
            ["/usr/bin/sleep", "60"],
            mode=JailMode.PRIVILEGED,
            fds=[],
            report=write,
            uid=UID,
            gid=UID,
            groups=(UID + 1,),
        )
        process = subprocess.Popen(command, pass_fds=(write,))
    finally:
        os.close(write)
    try:
        with os.fdopen(read) as report:
            assert report.read() == "mode privileged\n"  # EOF: the jailer executed sleep
        status = _status(Path(f"/proc/{process.pid}/status").read_text())
        assert status["Uid"].split() == [str(UID)] * 4
        assert status["Gid"].split() == [str(UID)] * 4
        assert status["Groups"].split() == [str(UID + 1)]
        assert status["NoNewPrivs"] == "1"
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[caps], 16) == 0, caps
        for namespace in ("mnt", "net", "ipc"):
            assert os.readlink(f"/proc/{process.pid}/ns/{namespace}") != os.readlink(
                f"/proc/self/ns/{namespace}"
            )
        assert os.readlink(f"/proc/{process.pid}/ns/user") == os.readlink("/proc/self/ns/user")
    finally:
        process.kill()
        process.wait()


@needs_root
def test_the_jailed_process_dies_with_its_parent(tmp_path: Path) -> None:
    """The parent-death signal survives the uid change (the jailer sets it after)."""
    pid_file = tmp_path / "pid"
    command = _plan(
        tmp_path, ["/usr/bin/sleep", "60"], mode=JailMode.PRIVILEGED, fds=[], report=9, uid=UID, gid=UID
    )
    # A parent that starts the jail, waits until it runs sleep, and is then killed.
    script = (
        f'exec 9>/dev/null; "$@" & echo $! > {pid_file}; '
        'until [ "$(cat /proc/$!/comm)" = sleep ]; do sleep 0.01; done; kill -9 $$'
    )
    subprocess.run(["/bin/sh", "-c", script, "sh", *command], check=False, timeout=60)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while _state(pid) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _state(pid) in ("gone", "Z")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def test_a_failing_jail_says_why_on_stderr(tmp_path: Path) -> None:
    read, write = os.pipe()
    try:
        command = _plan(tmp_path, ["/nonexistent/qemu"], mode=JailMode.MINIMAL, fds=[], report=write)
        result = subprocess.run(
            command, capture_output=True, text=True, pass_fds=(write,), timeout=60, check=False
        )
    finally:
        os.close(write)
        os.close(read)
    assert result.returncode == 1
    assert result.stderr.startswith("hyper-jailer: ")
