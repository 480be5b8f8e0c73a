"""Volumes in real VMs: host directories, named volumes, tmpfs and read-only roots, through `hyper run`.

What a program expects of a directory is checked inside the VM by a small
static program (tests/support/fscheck.c: fsync, rename over a file, hard
links, shared mmap, a unix socket), and on the host: owners and modes as the
container set them, files kept across containers, nothing outside what the
user named reachable from the guest.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyper.image import ImageConfig, ImageStore
from tests.integration.conftest import HyperEnv, stop_hyperd
from tests.support.images import busybox_rootfs_tar

FSCHECK = Path(__file__).resolve().parents[1] / "support" / "fscheck.c"
IMAGE = "localhost/fscheck:latest"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the 9p share gives files their owners as root")


@pytest.fixture(scope="module")
def env(
    image_state: Path, shared_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HyperEnv]:
    """One state for the module, with busybox plus /bin/fscheck (built here, static)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the in-VM file system check")
    scratch = tmp_path_factory.mktemp("fscheck")
    binary = scratch / "fscheck"
    subprocess.run(["gcc", "-O1", "-static", "-o", str(binary), str(FSCHECK)], check=True)
    state = Path(tempfile.mkdtemp(prefix="hyper-state-"))
    shutil.copytree(image_state, state, dirs_exist_ok=True, symlinks=True)
    rootfs = busybox_rootfs_tar(scratch / "rootfs.tar")
    with tarfile.open(rootfs, "a") as archive:
        info = archive.gettarinfo(str(binary), "bin/fscheck")
        info.uid = info.gid = 0
        with binary.open("rb") as f:
            archive.addfile(info, f)
    store = ImageStore(state / "images")
    store.import_rootfs(rootfs, IMAGE, ImageConfig(cmd=("sh",)))
    store.layer_disks(store.get(IMAGE))
    runtime = Path(tempfile.mkdtemp(prefix="hy-", dir="/tmp"))
    logs = Path(__file__).resolve().parents[2] / "test-results" / "test_volumes"
    hyper = HyperEnv(state=state, runtime=runtime, cache=shared_cache, console_logs=logs)
    try:
        yield hyper
    finally:
        stop_hyperd(hyper)
        leftovers = hyper.qemu_processes()
        for line in leftovers:
            subprocess.run(["kill", "-9", line.split()[0]], check=False)
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        assert not leftovers, f"QEMU processes left behind: {leftovers}"


def run(env: HyperEnv, *args: str) -> subprocess.CompletedProcess[str]:
    done = env.run("run", "--rm", *args)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )


def test_a_host_directory_behaves_as_programs_expect(env: HyperEnv, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    owned = host / "owned"
    owned.write_text("theirs")
    os.chown(owned, 1234, 5678)
    os.chmod(owned, 0o640)
    secret = tmp_path / "outside-secret"
    secret.write_text("host secret")
    (host / "leak").symlink_to(secret)  # absolute, made on the host
    (host / "up").symlink_to("../..")
    script = (
        "fscheck /data && stat -c '%u:%g:%a' /data/owned && "
        "echo made > /data/byroot && chown 4321:8765 /data/byroot && chmod 4755 /data/byroot && "
        "mkdir /data/dir && chmod 1770 /data/dir && "
        "(cat /data/leak || echo leak-unreadable) && (ls /data/up/ | tr '\\n' ' '; echo) && "
        "(ln /data/b /hardlink-out 2>&1 || true) && "
        "ln -s /etc/hostname /data/glink && readlink /data/glink && cat /data/glink >/dev/null && "
        "echo glink ok"
    )
    done = run(env, "-v", f"{host}:/data", IMAGE, "sh", "-c", script)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for line in ("fsync ok", "rename ok", "link ok", "mmap ok", "unix socket ok", "1234:5678:640"):
        assert line in out, out
    # The host's symlinks are resolved in the guest: its own /, where that path does not exist.
    assert "host secret" not in out and "leak-unreadable" in out
    assert "outside-secret" not in out  # `..` from the volume's root stays in the guest's tree
    assert "Invalid cross-device link" in out
    # On the host: what the container made, with the owners and modes it gave.
    assert (host / "b").read_text() == "MAP" and (host / "h").stat().st_nlink == 2
    assert stat.S_ISSOCK((host / "sock").lstat().st_mode)
    made = (host / "byroot").stat()
    assert (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode)) == (4321, 8765, 0o4755)
    assert stat.S_IMODE((host / "dir").stat().st_mode) == 0o1770
    assert (host / "a").exists() is False and secret.read_text() == "host secret"
    # A symlink the guest makes is a symlink on the host, with the guest's target, never followed there.
    assert "glink ok" in out and os.readlink(host / "glink") == "/etc/hostname"


def test_another_user_in_the_container_owns_what_it_makes(env: HyperEnv, tmp_path: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir(mode=0o777)
    os.chmod(host, 0o777)
    (host / "roots").write_text("root only")
    os.chmod(host / "roots", 0o600)
    done = run(
        env,
        "-u",
        "1000:1000",
        "-v",
        f"{host}:/data",
        IMAGE,
        "sh",
        "-c",
        "id -u; echo mine > /data/mine; (cat /data/roots 2>&1 || true); (echo x > /data/roots) 2>&1 || true",
    )
    assert done.returncode == 0, done.stderr
    assert "Permission denied" in done.stdout and "root only" not in done.stdout
    st = (host / "mine").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert (host / "roots").read_text() == "root only"


def test_named_volumes_read_only_mounts_tmpfs_and_a_read_only_root(env: HyperEnv, tmp_path: Path) -> None:
    host = tmp_path / "ro-source"
    host.mkdir()
    (host / "f").write_text("keep")
    script = (
        "ls /etc/passwd && echo one > /etc-volume/marker && "
        "(echo x > /ro/f) 2>&1; (touch /rootfile) 2>&1; "
        "echo fine > /scratch/t && df -k /scratch | tail -1 && grep ' /scratch ' /proc/mounts"
    )
    first = run(
        env,
        "-v",
        "vol1:/etc-volume",
        "--mount",
        "type=volume,source=etcvol,target=/etc",
        "--mount",
        f"type=bind,source={host},target=/ro,readonly",
        "--tmpfs",
        "/scratch:size=1m",
        "--read-only",
        IMAGE,
        "sh",
        "-c",
        script,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    said = first.stdout + first.stderr
    assert "/ro/f: Read-only file system" in said and "/rootfile: Read-only file system" in said
    assert " 1024 " in first.stdout and "noexec" in first.stdout
    assert (host / "f").read_text() == "keep"
    volumes = env.state / "volumes"
    # Copy-up: the new volume over the image's /etc started with its files.
    assert (volumes / "etcvol" / "_data" / "passwd").exists()
    assert (volumes / "vol1" / "_data" / "marker").read_text() == "one\n"
    second = run(env, "-v", "vol1:/again", IMAGE, "cat", "/again/marker")
    assert second.returncode == 0 and second.stdout == "one\n", second.stderr


def test_a_new_volume_mounted_read_only_still_gets_the_images_files(env: HyperEnv) -> None:
    # Docker's copy-up fills an empty volume even when it is mounted :ro.
    done = run(env, "-v", "rocopy:/etc:ro", IMAGE, "sh", "-c", "head -1 /etc/passwd; touch /etc/x 2>&1")
    assert done.returncode != 0 and done.stdout.startswith("root:"), done.stdout + done.stderr
    assert "Read-only file system" in done.stdout
    data = env.state / "volumes" / "rocopy" / "_data"
    assert (data / "passwd").exists() and not (data / "x").exists()
    # Once it holds files, the host enforces :ro on it as on any other.
    again = run(env, "-v", "rocopy:/etc:ro", IMAGE, "sh", "-c", "head -1 /etc/passwd")
    assert again.returncode == 0 and again.stdout.startswith("root:"), again.stderr
    assert env.run("volume", "rm", "rocopy").returncode == 0


def test_anonymous_volumes_go_with_rm(env: HyperEnv) -> None:
    before = set((env.state / "volumes").iterdir()) if (env.state / "volumes").exists() else set()
    done = run(env, "-v", "/anon", IMAGE, "sh", "-c", "echo x > /anon/f && grep ' /anon ' /proc/mounts")
    assert done.returncode == 0 and "9p" in done.stdout, done.stderr
    after = set((env.state / "volumes").iterdir())
    assert {p.name for p in after - before} <= {"volumes.db-wal", "volumes.db-shm"}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-v", "bad name!:/x"], "invalid volume name"),
        (["-v", "v1:relative"], "must be an absolute path"),
        (["-v", "v1:/"], "/ cannot be mounted over"),
        (["-v", "v1:/proc"], "/proc cannot be mounted over"),
        (["-v", "v1:/x", "--tmpfs", "/x"], "duplicate mount point: /x"),
        (["--mount", "type=bind,source=/nonexistent-hyper,target=/x"], "bind source path does not exist"),
        (["--mount", "type=tmpfs,target=/t,tmpfs-size=huge"], "invalid tmpfs-size"),
        (["--volumes-from", "other"], "--volumes-from needs hyperd"),
        (["--storage-opt", "size=1m"], "storage size 1m is out of range"),
        (["-d", "--storage-opt", "quota=1g"], "invalid --storage-opt"),
        (["-d", "--volumes-from", "other:rx"], "invalid --volumes-from"),
    ],
)
def test_bad_mounts_fail_before_a_vm_boots(env: HyperEnv, args: list[str], words: str) -> None:
    done = run(env, *args, IMAGE, "true")
    assert done.returncode == 125, done.stderr
    assert words in done.stderr
    assert not env.qemu_processes()


def test_hyperd_containers_keep_named_volumes_and_rm_v_takes_anonymous_ones(env: HyperEnv) -> None:
    started = env.run(
        "run", "-d", "-v", "dvol:/data", "-v", "/anon", IMAGE,
        "sh", "-c", "echo d > /data/f; echo a > /anon/g; sleep 1000",
    )  # fmt: skip
    container = started.stdout.decode().strip()
    assert started.returncode == 0, started.stderr
    try:
        volumes = env.state / "volumes"
        until_file = volumes / "dvol" / "_data" / "f"
        deadline = time.monotonic() + 120
        while not until_file.exists():
            assert time.monotonic() < deadline, "the container did not write its volume"
            time.sleep(0.1)
        anonymous = [p for p in volumes.iterdir() if p.is_dir() and len(p.name) == 64]
        assert len(anonymous) == 1
        busy = env.run("volume", "rm", "dvol")
        assert busy.returncode != 0 and b"in use" in busy.stderr
    finally:
        removed = env.run("rm", "-f", "-v", container)
    assert removed.returncode == 0, removed.stderr
    assert until_file.read_text() == "d\n"
    assert not anonymous[0].exists()
    assert env.run("volume", "rm", "dvol").returncode == 0
    assert not (volumes / "dvol").exists()


def test_hyper_create_volumes_from_takes_the_other_containers_volumes(env: HyperEnv) -> None:
    source = env.run("create", "--name", "vsource", "-v", "hvol:/data", "-v", "/anon", IMAGE)
    assert source.returncode == 0, source.stderr
    taker = env.run("create", "--volumes-from", "vsource:ro", IMAGE)
    assert taker.returncode == 0, taker.stderr
    taker_id = taker.stdout.decode().strip()
    try:
        shown = env.run("inspect", taker_id)
        assert shown.returncode == 0, shown.stderr
        [document] = json.loads(shown.stdout)
        mounts = document["Mounts"]
        assert {(m["Destination"], m["RW"]) for m in mounts} == {("/data", False), ("/anon", False)}
        assert next(m["Name"] for m in mounts if m["Destination"] == "/data") == "hvol"
        missing = env.run("create", "--volumes-from", "ghost", IMAGE)
        assert missing.returncode != 0 and b"no such container for --volumes-from: ghost" in missing.stderr
    finally:
        for ref in (taker_id, "vsource"):
            env.run("rm", "-v", ref)
    assert env.run("volume", "rm", "hvol").returncode == 0


def test_volumes_outlive_a_killed_hyperd_and_its_adopted_containers_keep_using_them(env: HyperEnv) -> None:
    from hyper.cli.client import DaemonClient

    started = env.run("run", "-d", "-v", "kept:/data", IMAGE, "sh", "-c", "echo one > /data/f; sleep 1000")
    assert started.returncode == 0, started.stderr
    container = started.stdout.decode().strip()
    data = env.state / "volumes" / "kept" / "_data"
    try:
        deadline = time.monotonic() + 120
        while not (data / "f").exists():
            assert time.monotonic() < deadline, "the container did not write its volume"
            time.sleep(0.1)
        with DaemonClient(env.runtime / "hyperd.sock") as client:
            pid = client.ping().pid
        os.kill(pid, signal.SIGKILL)  # the VM and its share go on without hyperd
        busy = env.run("volume", "rm", "kept")
        assert busy.returncode != 0 and b"in use" in busy.stderr  # the store still counts its user
        # The next hyperd (the CLI starts it) adopts the container; the volume still works both ways.
        wrote = env.run("exec", container, "sh", "-c", "cat /data/f; echo two > /data/g")
        assert wrote.returncode == 0 and wrote.stdout == b"one\n", wrote.stderr
        assert (data / "g").read_text() == "two\n"
    finally:
        removed = env.run("rm", "-f", container)
    assert removed.returncode == 0, removed.stderr
    assert (data / "f").read_text() == "one\n"  # the contents outlive the container
    assert env.run("volume", "rm", "kept").returncode == 0


def test_guest_root_reaches_nothing_of_the_host_through_the_share(env: HyperEnv, tmp_path: Path) -> None:
    # A privileged container is root of the VM with every capability: it mounts the
    # share's 9p device itself. Without volumes the share is an empty directory (the
    # helper's root holds nothing else); with one, the guest's channel is taken.
    (tmp_path / "outside").write_text("host file")
    script = (
        "mkdir -p /mnt9 && mount -t 9p -o trans=virtio,version=9p2000.L hyper /mnt9 && echo mounted; "
        "ls -a /mnt9 | tr '\\n' ' '; echo; cat /mnt9/../../outside 2>/dev/null || echo no-outside"
    )
    bare = run(env, "--privileged", IMAGE, "sh", "-c", script)
    assert bare.returncode == 0, bare.stdout + bare.stderr
    lines = bare.stdout.splitlines()
    assert lines[0] == "mounted" and lines[1].split() == [".", ".."], bare.stdout
    assert "host file" not in bare.stdout and "no-outside" in bare.stdout
    (tmp_path / "vol").mkdir()
    taken = run(env, "--privileged", "-v", f"{tmp_path / 'vol'}:/data", IMAGE, "sh", "-c", script)
    assert "mounted" not in taken.stdout and "host file" not in taken.stdout, taken.stdout + taken.stderr
    assert "Device or resource busy" in taken.stderr  # the agent's mount holds the one channel
