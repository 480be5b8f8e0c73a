"""Volumes through hyperd's Docker Engine API, driven by the real `docker` CLI and docker-py.

`/volumes` (create, ls with filters, inspect, rm, prune), `docker system df`,
and containers made with `-v`, `--mount`, `--tmpfs`, `--read-only`,
`--volumes-from` and an image's `VOLUME`, read back inside their VMs and on
the host. Creating a container resolves its volumes without a VM, so most
checks need none; each `docker run` here boots one.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyper.image import ImageConfig, ImageStore
from tests.integration.conftest import BUSYBOX
from tests.support.docker_env import DOCKER_CLI, DockerHyperd, docker_cli_available, docker_py_available
from tests.support.images import busybox_rootfs_tar

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not docker_cli_available(), reason=f"the docker CLI is not at {DOCKER_CLI}"),
    pytest.mark.skipif(not docker_py_available(), reason="docker-py is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the 9p share gives files their owners as root"),
]

SEEDED = "seeded:latest"  # busybox with VOLUME /seed, whose image directory holds a file
SEED_TEXT = "from the image\n"


def seeded_rootfs(scratch: Path) -> Path:
    rootfs = busybox_rootfs_tar(scratch / "rootfs.tar")
    with tarfile.open(rootfs, "a") as archive:
        directory = tarfile.TarInfo("seed")
        directory.type, directory.mode, directory.uid, directory.gid = tarfile.DIRTYPE, 0o750, 1000, 1000
        archive.addfile(directory)
        data = SEED_TEXT.encode()
        info = tarfile.TarInfo("seed/file")
        info.size, info.mode, info.uid, info.gid = len(data), 0o640, 1000, 1000
        archive.addfile(info, io.BytesIO(data))
    return rootfs


@pytest.fixture(scope="module")
def hyperd(image_state: Path, shared_cache: Path) -> Iterator[DockerHyperd]:
    with tempfile.TemporaryDirectory(prefix="docker-volumes-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        store = ImageStore(state / "images")
        store.tag(BUSYBOX, "busybox:latest")
        store.import_rootfs(
            seeded_rootfs(Path(scratch)), SEEDED, ImageConfig(cmd=("sh",), volumes=("/seed",))
        )
        store.layer_disks(store.get(SEEDED))
        daemon = DockerHyperd(state=state, cache=shared_cache)
        daemon.start()
        try:
            yield daemon
        finally:
            try:
                with daemon.http() as http:
                    for container in http.get("/containers/json", params={"all": "1"}).json():
                        http.delete(f"/containers/{container['Id']}", params={"force": "1", "v": "1"})
            finally:
                daemon.close()
            assert "Traceback" not in daemon.final_log, daemon.final_log[-8000:]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}: {result.stdout}{result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"{result.args} succeeded: {result.stdout}"
    return result.stderr


def volume_names(hyperd: DockerHyperd, *args: str) -> set[str]:
    return set(ok(hyperd.docker("volume", "ls", "-q", *args)).split())


def mountpoint(hyperd: DockerHyperd, name: str) -> Path:
    return Path(json.loads(ok(hyperd.docker("volume", "inspect", name)))[0]["Mountpoint"])


def inspect_id(hyperd: DockerHyperd, ref: str) -> str:
    return str(json.loads(ok(hyperd.docker("inspect", ref)))[0]["Id"])


def mounts_of(hyperd: DockerHyperd, ref: str) -> dict[str, dict[str, object]]:
    document = json.loads(ok(hyperd.docker("inspect", ref)))[0]
    return {m["Destination"]: m for m in document["Mounts"]}


def test_volume_create_ls_inspect_rm_and_prune_with_the_docker_cli(hyperd: DockerHyperd) -> None:
    ok(hyperd.docker("volume", "create", "--label", "tier=db", "cli-db"))
    ok(hyperd.docker("volume", "create", "cli-cache"))
    [document] = json.loads(ok(hyperd.docker("volume", "inspect", "cli-db")))
    assert document["Name"] == "cli-db" and document["Driver"] == "local"
    assert document["Labels"] == {"tier": "db"} and Path(document["Mountpoint"]).is_dir()
    assert {"cli-db", "cli-cache"} <= volume_names(hyperd)
    assert volume_names(hyperd, "--filter", "label=tier=db") == {"cli-db"}
    assert "cli-cache" in volume_names(hyperd, "--filter", "name=cache")
    assert "no such volume" in failed(hyperd.docker("volume", "inspect", "cli-missing"))
    assert "invalid volume name" in failed(hyperd.docker("volume", "create", "bad$name"))
    assert "not supported" in failed(hyperd.docker("volume", "create", "-o", "type=nfs", "cli-nfs"))

    # A container using a volume keeps it: created, not started (no VM), it already counts.
    user = ok(hyperd.docker("create", "-v", "cli-db:/db", "-v", "/anon", "busybox", "true")).strip()
    assert "cli-db" not in volume_names(hyperd, "--filter", "dangling=true")
    assert ok(hyperd.docker("ps", "-aq", "--no-trunc", "--filter", "volume=cli-db")).split() == [user]
    assert "volume is in use" in failed(hyperd.docker("volume", "rm", "cli-db"))
    assert "volume is in use" in failed(hyperd.docker("volume", "rm", "-f", "cli-db"))
    anonymous = str(mounts_of(hyperd, user)["/anon"]["Name"])
    assert len(anonymous) == 64 and anonymous in volume_names(hyperd)
    labelled = ok(
        hyperd.docker(
            "create", "--mount", "type=volume,source=cli-lbl,target=/l,volume-label=team=x", "busybox"
        )
    ).strip()
    assert json.loads(ok(hyperd.docker("volume", "inspect", "cli-lbl")))[0]["Labels"] == {"team": "x"}
    ok(hyperd.docker("rm", labelled))
    ok(hyperd.docker("volume", "rm", "cli-lbl"))
    ok(hyperd.docker("rm", user))  # without -v: its anonymous volume stays, unused
    assert {"cli-db", anonymous} <= volume_names(hyperd, "--filter", "dangling=true")

    (mountpoint(hyperd, "cli-cache") / "blob").write_bytes(b"x" * 65536)
    with hyperd.http() as http:
        usage = {v["Name"]: v["UsageData"] for v in http.get("/system/df").json()["Volumes"]}
    assert usage["cli-cache"]["Size"] >= 65536 and usage["cli-cache"]["RefCount"] == 0
    summary = ok(hyperd.docker("system", "df"))
    assert re.search(r"^Local Volumes\s+(\d+)\s+0\s", summary, re.MULTILINE), summary

    # prune takes unused anonymous volumes; --all the named ones too, filtered by label.
    pruned = ok(hyperd.docker("volume", "prune", "-f"))
    assert anonymous in pruned and "cli-db" not in pruned
    pruned = ok(hyperd.docker("volume", "prune", "-f", "--all", "--filter", "label=tier=db"))
    assert "cli-db" in pruned and "cli-cache" not in pruned
    ok(hyperd.docker("volume", "rm", "cli-cache"))
    assert not {"cli-db", "cli-cache", anonymous} & volume_names(hyperd)
    ok(hyperd.docker("volume", "rm", "-f", "cli-missing"))  # -f of a missing volume is not an error


def test_docker_py_drives_the_volumes_api(hyperd: DockerHyperd) -> None:
    import docker.errors

    client = hyperd.docker_py()
    try:
        volume = client.volumes.create("py-vol", labels={"made-by": "docker-py"})
        assert volume.attrs["Mountpoint"].endswith("/py-vol/_data")
        assert [v.name for v in client.volumes.list(filters={"label": "made-by=docker-py"})] == ["py-vol"]
        assert client.volumes.get("py-vol").attrs["Labels"] == {"made-by": "docker-py"}
        with pytest.raises(docker.errors.NotFound):
            client.volumes.get("py-missing")
        result = client.volumes.prune(filters={"label": "made-by=docker-py", "all": "true"})
        assert result["VolumesDeleted"] == ["py-vol"]
        with pytest.raises(docker.errors.APIError, match="invalid filter"):
            client.volumes.prune(filters={"dangling": "true"})
    finally:
        client.close()


def test_run_with_volumes_binds_tmpfs_and_a_read_only_root(hyperd: DockerHyperd, tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("hello from the host\n")
    missing = tmp_path / "made" / "by" / "docker"  # -v makes a missing host directory, as Docker does
    script = (
        "cat /site/index.html; echo db >> /db/log; echo new > /made/file; "
        "grep -E ' /run | /scratch ' /proc/mounts | cut -d' ' -f2,3 | sort; "
        "touch /site/x 2>&1 | grep -o 'Read-only file system'; "
        "touch /root-file 2>&1 | grep -o 'Read-only file system'; "
        "echo anon > /anon/file && echo tmp > /run/f && echo wrote"
    )
    args = [
        "run", "--name", "mounted", "--read-only",
        "-v", f"{tmp_path / 'site'}:/site:ro", "-v", "run-db:/db", "-v", f"{missing}:/made",
        "-v", "/anon", "--tmpfs", "/run:size=8m", "--mount", "type=tmpfs,target=/scratch",
        "busybox", "sh", "-c", script,
    ]  # fmt: skip
    output = ok(hyperd.docker(*args))
    assert output.splitlines() == [
        "hello from the host",
        "/run tmpfs",
        "/scratch tmpfs",
        "Read-only file system",
        "Read-only file system",
        "wrote",
    ], output
    assert (missing / "file").read_text() == "new\n"
    assert (mountpoint(hyperd, "run-db") / "log").read_text() == "db\n"
    mounts = mounts_of(hyperd, "mounted")
    assert mounts["/site"]["Type"] == "bind" and mounts["/site"]["RW"] is False
    assert mounts["/site"]["Source"] == str(tmp_path / "site")
    assert mounts["/db"]["Name"] == "run-db" and mounts["/db"]["Source"] == str(mountpoint(hyperd, "run-db"))
    anonymous = str(mounts["/anon"]["Name"])
    assert (mountpoint(hyperd, anonymous) / "file").read_text() == "anon\n"
    host_config = json.loads(ok(hyperd.docker("inspect", "mounted")))[0]["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True and host_config["Tmpfs"] == {"/run": "size=8m"}
    ok(hyperd.docker("rm", "-v", "mounted"))  # its anonymous volume goes, the named one stays
    assert anonymous not in volume_names(hyperd) and "run-db" in volume_names(hyperd)
    ok(hyperd.docker("volume", "rm", "run-db"))


def test_volumes_from_shares_another_containers_volumes_and_bind_mounts(
    hyperd: DockerHyperd, tmp_path: Path
) -> None:
    ok(hyperd.docker("create", "--name", "data", "-v", "from-shared:/shared", "-v", "/scratch", "busybox"))
    ok(hyperd.docker("create", "--name", "conf", "-v", f"{tmp_path}:/conf:ro", "busybox"))
    script = "echo hi > /shared/f && echo there > /scratch/g && touch /conf/x 2>&1 | grep -o Read-only"
    args = ["run", "--rm", "--volumes-from", "data", "--volumes-from", "conf", "busybox"]
    output = ok(hyperd.docker(*args, "sh", "-c", f"{script}; echo done"))
    assert output.split() == ["Read-only", "done"], output
    assert (mountpoint(hyperd, "from-shared") / "f").read_text() == "hi\n"
    scratch = str(mounts_of(hyperd, "data")["/scratch"]["Name"])
    assert (mountpoint(hyperd, scratch) / "g").read_text() == "there\n"  # its anonymous one, shared too
    # :ro makes them all read-only; the reader's own -v at a path wins over the inherited one.
    reader = ok(
        hyperd.docker("create", "--volumes-from", "data:ro", "-v", "other:/scratch", "busybox")
    ).strip()
    mounts = mounts_of(hyperd, reader)
    assert mounts["/shared"]["RW"] is False and mounts["/scratch"]["Name"] == "other"
    assert json.loads(ok(hyperd.docker("inspect", reader)))[0]["HostConfig"]["VolumesFrom"] == ["data:ro"]
    assert "no such container" in failed(hyperd.docker("create", "--volumes-from", "ghost", "busybox"))
    ok(hyperd.docker("rm", "-v", reader))
    ok(hyperd.docker("rm", "-v", "data"))  # the reader is gone: data's anonymous volume goes with it
    assert scratch not in volume_names(hyperd)
    ok(hyperd.docker("rm", "conf"))
    ok(hyperd.docker("volume", "rm", "from-shared", "other"))


def test_an_images_volume_is_anonymous_and_a_new_named_volume_gets_its_files(hyperd: DockerHyperd) -> None:
    # The image's VOLUME /seed: an anonymous volume, filled from the image's directory (copy-up).
    output = ok(hyperd.docker("run", "--name", "seeded", SEEDED, "sh", "-c", "cat /seed/file; ls -ln /seed"))
    assert output.startswith(SEED_TEXT) and " 1000 " in output, output
    anonymous = str(mounts_of(hyperd, "seeded")["/seed"]["Name"])
    volume = mountpoint(hyperd, anonymous)
    assert (volume / "file").read_text() == SEED_TEXT
    st = volume.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o750)  # the image directory's
    ok(hyperd.docker("rm", "-v", "seeded"))
    assert anonymous not in volume_names(hyperd)

    # A new named volume over the same directory, through docker-py: it starts with the files too.
    client = hyperd.docker_py()
    try:
        out = client.containers.run(
            SEEDED, ["cat", "/seed/file"], volumes={"py-seed": {"bind": "/seed"}}, remove=True
        )
        assert out.decode() == SEED_TEXT
        assert (mountpoint(hyperd, "py-seed") / "file").read_text() == SEED_TEXT
        client.volumes.get("py-seed").remove()
    finally:
        client.close()


def test_storage_opt_size_bounds_the_writable_disk(hyperd: DockerHyperd) -> None:
    # 300 MB into a 128 MiB root: ENOSPC inside, and the host file stays at its bound.
    script = "df -k / | tail -1; dd if=/dev/zero of=/big bs=1M count=300 2>&1 | grep -o 'No space left'; sync"
    output = ok(
        hyperd.docker("run", "--name", "small", "--storage-opt", "size=128m", "busybox", "sh", "-c", script)
    )
    size_kib = int(output.split()[1])
    assert 100_000 < size_kib <= 128 * 1024 and "No space left" in output, output
    container = inspect_id(hyperd, "small")
    disk = hyperd.state / "containers" / container / "writable.ext4"
    assert disk.stat().st_size == 128 << 20 and disk.stat().st_blocks * 512 <= 128 << 20
    host_config = json.loads(ok(hyperd.docker("inspect", "small")))[0]["HostConfig"]
    assert host_config["StorageOpt"] == {"size": "128m"}
    assert "invalid --storage-opt" in failed(
        hyperd.docker("create", "--storage-opt", "dm.basesize=1G", "busybox")
    )
    assert "out of range" in failed(hyperd.docker("create", "--storage-opt", "size=1m", "busybox"))
    ok(hyperd.docker("rm", "small"))
