"""`docker cp` and `hyper cp` now that every tar from a guest is hostile by assumption.

Through a real hyperd, real VMs and the real docker CLI: ordinary copies still
work both ways (files, directories, symlinks, hard links within the copy, long
and non-ASCII names, a directory's contents, tar streams); a set-user-ID bit
and a device node made in the container do not reach the host; a copy whose
QEMU is killed part way leaves nothing behind and says that the VM stopped,
in both directions.

Then the hostile side, which the honest agent cannot produce: a
FakeArchiveGuest (tests/support/fake_guest.py) speaks the real agent protocol
behind hyperd's real API apps and answers copies with crafted tars (the
review's: a file beside the destination, a write through a symlink, hard
links to host files). The real docker CLI and the hyper CLI then extract
nothing outside their destination, and hyper cp leaves the destination as it
was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from hyper import errors
from hyper.cli.client import DaemonClient, PathStat
from hyper.cli.copy_commands import copy_from_container
from hyper.image import ImageStore
from tests.integration.conftest import BUSYBOX
from tests.support.docker_env import DOCKER_CLI, DockerHyperd, docker_cli_available
from tests.support.fake_guest import FakeArchiveGuest, FakeGuestHyperd
from tests.support.tars import archive, device, directory, fifo, file, hardlink, pax, symlink

pytestmark = pytest.mark.skipif(not docker_cli_available(), reason=f"the docker CLI is not at {DOCKER_CLI}")

WAIT_SECONDS = 120  # an upper bound for what should happen in seconds, never an assertion of speed
LONG_NAME = "long-" * 40 + "name"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stderr}"
    return result.stdout


def tree(root: Path) -> dict[str, tuple[int, int, str | None]]:
    """Every path under `root`, links not followed: mode, inode, content or link target."""
    found: dict[str, tuple[int, int, str | None]] = {}
    pending = [root]
    while pending:
        directory_ = pending.pop()
        for entry in os.scandir(directory_):
            path = Path(entry.path)
            info = path.lstat()
            content = None
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = path.read_bytes().decode(errors="replace")
            elif stat.S_ISDIR(info.st_mode):
                pending.append(path)
            found[str(path.relative_to(root))] = (info.st_mode, info.st_ino, content)
    return found


# ---- a real hyperd with real VMs ------------------------------------------------------------------


@pytest.fixture(scope="module")
def hyperd(image_state: Path, shared_cache: Path) -> Iterator[DockerHyperd]:
    with tempfile.TemporaryDirectory(prefix="cp-archives-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        ImageStore(state / "images").tag(BUSYBOX, "busybox:latest")
        daemon = DockerHyperd(state=state, cache=shared_cache)
        daemon.start()
        try:
            yield daemon
        finally:
            try:
                with daemon.http() as http:
                    for container in http.get("/containers/json", params={"all": "1"}).json():
                        http.delete(f"/containers/{container['Id']}", params={"force": "1"})
            finally:
                daemon.close()
            leftovers = qemu_of(daemon)
            for pid in leftovers:
                os.kill(pid, signal.SIGKILL)
            assert not leftovers, "QEMU left running after hyperd closed"


def qemu_of(hyperd: DockerHyperd, container_id: str = "") -> list[int]:
    """QEMU processes of this hyperd (of one container, given its ID)."""
    marker = f"{hyperd.runtime}/{container_id[:12]}"
    found = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True, check=False)
    return [int(line.split()[0]) for line in found.stdout.splitlines() if marker in line]


def hyper(hyperd: DockerHyperd, *args: str) -> subprocess.CompletedProcess[str]:
    """The hyper CLI, talking to this hyperd through its own socket."""
    env = dict(
        os.environ,
        HYPER_STATE_DIR=str(hyperd.state),
        HYPER_RUNTIME_DIR=str(hyperd.runtime),
        HYPER_CACHE_DIR=str(hyperd.cache),
    )
    return subprocess.run(
        [sys.executable, "-m", "hyper.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


def started(hyperd: DockerHyperd, name: str, script: str) -> str:
    """A running container `name` (running `script`), once /ready exists in it; its ID."""
    container = ok(hyperd.docker("run", "-d", "--name", name, "busybox", "sh", "-c", script)).strip()
    deadline = time.monotonic() + WAIT_SECONDS
    while hyperd.docker("exec", name, "test", "-f", "/ready").returncode != 0:
        assert time.monotonic() < deadline, f"{name} never got ready"
        time.sleep(0.2)
    return container


@pytest.mark.vm
def test_ordinary_copies_both_ways_with_both_clients(hyperd: DockerHyperd, tmp_path: Path) -> None:
    started(hyperd, "files", "touch /ready; exec sleep 100000")
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a").write_text("alpha\n")
    (source / "a").chmod(0o640)
    (source / "sub" / "b").write_text("beta\n")
    (source / "link").symlink_to("a")
    (source / "abs").symlink_to("/etc/hostname")
    os.link(source / "a", source / "hard")
    (source / LONG_NAME).write_text("long\n")
    (source / "café").write_text("non-ascii\n")

    ok(hyperd.docker("cp", str(source), "files:/d1"))
    ok(hyper(hyperd, "cp", str(source), "files:/d2"))
    for inside in ("/d1", "/d2"):
        listing = ok(
            hyperd.docker(
                "exec", "files", "sh", "-c",
                f"cd {inside} && cat a sub/b {LONG_NAME} café && readlink link && readlink abs "
                "&& stat -c '%a' a && [ $(stat -c %i a) = $(stat -c %i hard) ] && echo linked",
            )
        )  # fmt: skip
        assert listing == "alpha\nbeta\nlong\nnon-ascii\na\n/etc/hostname\n640\nlinked\n", inside

    # What the filter takes away on the way out: set-user-ID bits and devices.
    ok(hyperd.docker("exec", "files", "sh", "-c", "chmod 4755 /d1/a && mknod /d1/null c 1 3"))
    out = tmp_path / "out"
    out.mkdir()
    ok(hyperd.docker("cp", "files:/d1", str(out / "docker")))
    ok(hyper(hyperd, "cp", "files:/d1", str(out / "hyper")))
    for copy in (out / "docker", out / "hyper"):
        assert (copy / "a").read_text() == "alpha\n" and (copy / "sub" / "b").read_text() == "beta\n"
        assert stat.S_IMODE((copy / "a").stat().st_mode) == 0o755, copy  # no set-user-ID bit
        assert (copy / "hard").stat().st_ino == (copy / "a").stat().st_ino, copy
        assert os.readlink(copy / "link") == "a" and os.readlink(copy / "abs") == "/etc/hostname"
        assert (copy / LONG_NAME).read_text() == "long\n" and (copy / "café").read_text() == "non-ascii\n"
        assert not (copy / "null").exists() and not (copy / "null").is_symlink(), copy

    # A directory's contents into a new directory, and into one that exists.
    ok(hyperd.docker("cp", "files:/d2/.", str(out / "contents-docker")))
    (out / "contents-hyper").mkdir(mode=0o700)
    ok(hyper(hyperd, "cp", "files:/d2/.", str(out / "contents-hyper")))
    for copy in (out / "contents-docker", out / "contents-hyper"):
        assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in source.iterdir())
    assert (
        stat.S_IMODE((out / "contents-hyper").stat().st_mode) == 0o700
    )  # the host's directory kept its mode

    # Tar streams.
    for command in ([DOCKER_CLI, "cp", "files:/d1/sub", "-"],):
        streamed = subprocess.run(command, capture_output=True, env=hyperd.cli_environ(), check=True)
        with tarfile.open(fileobj=io.BytesIO(streamed.stdout)) as tar:
            assert tar.getnames() == ["sub", "sub/b"]
    streamed_hyper = hyper(hyperd, "cp", "files:/d1/sub/b", "-")
    assert streamed_hyper.returncode == 0, streamed_hyper.stderr


class QemuKillingClient(DaemonClient):
    """The real client, but the container's QEMU is killed once `after` bytes of
    the archive have been read: a VM that dies in the middle of a copy."""

    def __init__(self, socket_path: Path, kill: Callable[[], None], after: int) -> None:
        super().__init__(socket_path)
        self._kill = kill
        self._after = after

    @contextlib.contextmanager
    def archive(self, ref: str, path: str) -> Iterator[tuple[PathStat, BinaryIO]]:
        with super().archive(ref, path) as (found, stream):
            yield found, io.BufferedReader(_KillAfter(stream, self._kill, self._after))


class _KillAfter(io.RawIOBase):
    def __init__(self, stream: BinaryIO, kill: Callable[[], None], after: int) -> None:
        self._stream, self._kill, self._left = stream, kill, after

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(min(len(buffer), 64 * 1024))
        buffer[: len(data)] = data
        self._left -= len(data)
        if self._left <= 0 and self._kill is not None:
            kill, self._kill = self._kill, None  # type: ignore[assignment]
            kill()
        return len(data)


def _kill_qemu(hyperd: DockerHyperd, container: str) -> Callable[[], None]:
    def kill() -> None:
        pids = qemu_of(hyperd, container)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)

    return kill


@pytest.mark.vm
def test_a_copy_out_whose_vm_is_killed_leaves_nothing_and_says_the_vm_stopped(
    hyperd: DockerHyperd, tmp_path: Path
) -> None:
    container = started(
        hyperd, "victim-out", "dd if=/dev/zero of=/big bs=1M count=64 && touch /ready; sleep 100000"
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept").write_text("kept\n")
    client = QemuKillingClient(hyperd.socket, _kill_qemu(hyperd, container), after=1 << 20)
    try:
        with pytest.raises(errors.Unavailable, match="VM stopped during the copy") as raised:
            copy_from_container(
                client, "victim-out", "/big", str(out / "big"), argparse.Namespace(follow_link=False)
            )
    finally:
        client.close()
    assert "QEMU process exited" in str(raised.value)
    assert sorted(p.name for p in out.iterdir()) == ["kept"]  # no partial file
    assert "cut" in hyperd.log_tail() and "VM stopped" in hyperd.log_tail()


@pytest.mark.vm
def test_a_copy_in_whose_vm_is_killed_says_the_vm_stopped(hyperd: DockerHyperd, tmp_path: Path) -> None:
    container = started(hyperd, "victim-in", "touch /ready; exec sleep 100000")
    kill = _kill_qemu(hyperd, container)

    def chunks() -> Iterator[bytes]:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo("big")
            info.size = 32 << 20
            tar.addfile(info, io.BytesIO(bytes(info.size)))
        data = buffer.getvalue()
        yield data[: 1 << 20]
        kill()
        for start in range(1 << 20, len(data), 1 << 20):
            yield data[start : start + (1 << 20)]

    client = DaemonClient(hyperd.socket)
    try:
        with pytest.raises(
            errors.Unavailable, match="its VM stopped or hyperd lost the connection"
        ) as raised:
            client.put_archive("victim-in", "/tmp", chunks())
    finally:
        client.close()
    assert "copying into container victim-in failed" in str(raised.value)


# ---- the hostile side: a fake guest behind hyperd's real apps -------------------------------------

HONEST = archive(
    directory("data"),
    file("data/a", b"alpha\n", mode=0o4755),
    directory("data/sub"),
    file("data/sub/b", b"beta\n"),
    symlink("data/link", "a"),
    symlink("data/abs", "/etc/passwd"),
    hardlink("data/hard", "data/a"),
    pax([("path", f"data/{LONG_NAME}")]),
    file("placeholder", b"long\n"),
    fifo("data/pipe"),
    device("data/sda", kind=tarfile.BLKTYPE),
)
HOSTILE = {
    "beside": archive(directory("data"), file("data/a", b"a"), file("beside", b"owned")),
    "dotdot": archive(directory("data"), file("data/../escape", b"owned")),
    "through-symlink": archive(
        directory("data"), symlink("data/l", "../.."), file("data/l/escape", b"owned")
    ),
    "hardlink-to-host": archive(directory("data"), hardlink("data/h", "outside")),
    "hardlink-outside": archive(directory("data"), hardlink("data/h", "../outside")),
    "hardlink-through-symlink": archive(
        directory("data"), symlink("data/s", "/etc"), hardlink("data/h", "data/s/passwd")
    ),
    "absolute": archive(file("/data/escape", b"owned")),
}


def run_clis(
    guest: FakeArchiveGuest, root: Path, *commands: list[str]
) -> list[subprocess.CompletedProcess[bytes]]:
    """Serve `guest` behind hyperd's apps on this event loop, and run each command
    (the docker CLI and the hyper CLI) against it, one after the other."""

    async def main() -> list[subprocess.CompletedProcess[bytes]]:
        results = []
        async with FakeGuestHyperd(root / "hyperd", guest) as served:
            env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
            env.update(
                DOCKER_HOST=f"unix://{served.docker_socket}",
                DOCKER_CONFIG=str(root / "docker-config"),
                HYPER_RUNTIME_DIR=str(served.root),  # its own API's socket is hyperd.sock there
                HYPER_STATE_DIR=str(root / "hyper-state"),
            )
            for command in commands:
                process = await asyncio.create_subprocess_exec(
                    *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
                )
                stdout, stderr = await asyncio.wait_for(process.communicate(), WAIT_SECONDS)
                assert process.returncode is not None
                results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
        return results

    return asyncio.run(main())


def host_beside(root: Path) -> Path:
    """A destination with host files beside and inside it; the destination."""
    root.mkdir(exist_ok=True)
    (root / "outside").write_text("precious\n")
    dest = root / "dest"
    dest.mkdir()
    (dest / "outside").write_text("precious too\n")
    (dest / "existing-dir").mkdir(mode=0o750)
    return dest


HYPER_CLI = [sys.executable, "-m", "hyper.cli.main"]


def test_the_docker_cli_and_hyper_cli_take_a_filtered_honest_archive(tmp_path: Path) -> None:
    dest = host_beside(tmp_path / "host")
    docker, hyper_cp = run_clis(
        FakeArchiveGuest(HONEST),
        tmp_path,
        [DOCKER_CLI, "cp", "hostile:/srv/data", str(dest / "by-docker")],
        [*HYPER_CLI, "cp", "hostile:/srv/data", str(dest / "by-hyper")],
    )
    assert docker.returncode == 0, docker.stderr
    assert hyper_cp.returncode == 0, hyper_cp.stderr
    for copy in (dest / "by-docker", dest / "by-hyper"):
        assert (copy / "a").read_bytes() == b"alpha\n" and (copy / "sub" / "b").read_bytes() == b"beta\n"
        assert stat.S_IMODE((copy / "a").stat().st_mode) == 0o755, copy
        assert (copy / "hard").stat().st_ino == (copy / "a").stat().st_ino, copy
        assert os.readlink(copy / "abs") == "/etc/passwd" and (copy / LONG_NAME).read_bytes() == b"long\n"
        assert not (copy / "sda").exists(), copy
    assert stat.S_ISFIFO(
        (dest / "by-docker" / "pipe").lstat().st_mode
    )  # Docker keeps FIFOs; hyper cp skips them


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_archives_land_nothing_outside_the_destination(name: str, tmp_path: Path) -> None:
    host = tmp_path / "host"
    dest = host_beside(host)
    before = tree(host)
    docker, hyper_cp = run_clis(
        FakeArchiveGuest(HOSTILE[name]),
        tmp_path,
        [DOCKER_CLI, "cp", "hostile:/srv/data", str(dest / "by-docker")],
        [*HYPER_CLI, "cp", "hostile:/srv/data", str(dest / "by-hyper")],
    )
    assert docker.returncode != 0, docker.stdout
    assert hyper_cp.returncode != 0 and b"cut short" in hyper_cp.stderr, hyper_cp.stderr
    after = tree(host)
    # The docker CLI may leave what it extracted before the cut inside its
    # destination; nothing else anywhere changed, and hyper cp left nothing.
    changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)}
    assert all(path.startswith("dest/by-docker") for path in changed), changed
    assert not Path("/tmp/escape").exists() and not (tmp_path / "escape").exists()
