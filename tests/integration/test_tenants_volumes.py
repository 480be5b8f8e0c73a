"""A tenant's volumes through the network API: sized, charged to its
volume-bytes quota (anonymous ones too), bounded in the VM, and its own.

Each volume of a tenant has a size (`--opt size=`, else the tenant's
`volume-size`) and is a file system of that size loop-mounted on the host
(hyper.storage.volume_disk): creates past the quota are refused with the
quota's name and use, racing creates take it exactly, a write past the
size gets ENOSPC inside the container, and hyperd's restart mounts the file
systems again. Volume and network events are Docker's, and a tenant's
stream holds its own only. A tenant's VM boots stay within its
boots-per-minute. The real docker CLI and docker-py, one VM in
the module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

from hyper.image import ImageStore
from tests.integration.conftest import BUSYBOX
from tests.integration.test_docker_containers import serving
from tests.support.docker_env import DOCKER_CLI, DockerHyperd, docker_cli_available, docker_py_available
from tests.support.tenants import TenantClient, TenantListener, admin, admin_ok, tenant_hyperd

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not docker_cli_available(), reason=f"the docker CLI is not at {DOCKER_CLI}"),
    pytest.mark.skipif(not docker_py_available(), reason="docker-py is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="sized volumes are loop-mounted file systems: root"),
]
MIB = 1 << 20


@pytest.fixture(scope="module")
def listener(image_state: Path, shared_cache: Path) -> Iterator[TenantListener]:
    with tempfile.TemporaryDirectory(prefix="tenant-volumes-") as scratch:
        state = Path(scratch) / "state"
        shutil.copytree(image_state, state, symlinks=True)
        ImageStore(state / "images").tag(BUSYBOX, "busybox:latest")
        made = tenant_hyperd(state=state, cache=shared_cache)
        with serving(made.daemon):
            admin_ok(made.daemon, "tenant", "public", "add", "busybox:latest")
            admin_ok(made.daemon, "tenant", "create", "vola", "--quota", "volume-bytes=100m")
            admin_ok(made.daemon, "tenant", "quota", "vola", "volume-size=16m")
            admin_ok(made.daemon, "tenant", "create", "volb")
            yield made


@pytest.fixture(scope="module")
def vola(listener: TenantListener) -> TenantClient:
    return TenantClient.with_new_key(listener, "vola")


@pytest.fixture(scope="module")
def volb(listener: TenantListener) -> TenantClient:
    return TenantClient.with_new_key(listener, "volb")


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return done.stdout


def stored(listener: TenantListener, name: str) -> dict[str, object]:
    """The admin's view of a volume, by the store's name (TENANT_ID.NAME)."""
    with listener.daemon.http() as http:
        [found] = [v for v in http.get("/volumes").json()["Volumes"] if v["Name"].endswith(f".{name}")]
    return dict(found)


def test_volume_bytes_are_charged_anonymous_volumes_included_and_refused_past_the_quota(
    listener: TenantListener, vola: TenantClient, volb: TenantClient
) -> None:
    ok(vola.docker("volume", "create", "--opt", "size=64m", "big"))
    done = vola.docker("volume", "create", "--opt", "size=64m", "big2")
    assert done.returncode != 0
    assert (
        "quota exceeded: tenant vola may have 100 MiB of volumes (volume-bytes) and uses 64 MiB;"
        " this request needs 64 MiB more"
    ) in done.stderr, done.stderr
    ok(vola.docker("volume", "create", "small"))  # the tenant's volume-size: 16 MiB
    inspected = json.loads(ok(vola.docker("volume", "inspect", "big", "small")))
    assert [v["Options"] for v in inspected] == [{"size": str(64 * MIB)}, {"size": str(16 * MIB)}]
    mountpoint = Path(str(stored(listener, "big")["Mountpoint"]))
    assert os.path.ismount(mountpoint) and shutil.disk_usage(mountpoint).total <= 64 * MIB

    # An anonymous volume (-v /data) is the tenant's, sized and charged like the others.
    made = ok(vola.docker("create", "-v", "/data", "busybox", "true")).strip()
    [mount] = json.loads(ok(vola.docker("inspect", made)))[0]["Mounts"]
    anonymous = mount["Name"]  # by the name the tenant knows it by
    assert len(anonymous) == 64 and anonymous in ok(vola.docker("volume", "ls", "-q")).split()
    for client, names in ((vola, {"big", "small", anonymous}), (volb, set())):
        with closing(client.docker_py()) as py:  # `docker system df`: its own volumes only
            assert {v["Name"] for v in py.df()["Volumes"] or ()} == names
    assert anonymous not in ok(volb.docker("volume", "ls", "-q")).split()
    listed = ok(vola.docker("ps", "-aq", "--no-trunc", "--filter", f"volume={anonymous}"))
    assert listed.split() == [made]
    done = volb.docker("volume", "inspect", anonymous)
    assert done.returncode != 0 and "no such volume" in done.stderr, done.stderr
    holds = json.loads(admin_ok(listener.daemon, "tenant", "inspect", "vola"))[0]["holds"]
    assert holds["volume-bytes"] == (64 + 16 + 16) * MIB
    done = vola.docker("create", "--mount", "type=volume,target=/x,volume-opt=size=8m", "busybox", "true")
    assert done.returncode != 0 and "uses 96 MiB; this request needs 8 MiB more" in done.stderr, done.stderr

    # rm -v takes the anonymous volume (its file system unmounted), and its bytes with it.
    anonymous_dir = Path(str(stored(listener, anonymous)["Mountpoint"]))
    ok(vola.docker("rm", "-v", made))
    assert anonymous not in ok(vola.docker("volume", "ls", "-q")).split()
    assert not anonymous_dir.exists()
    ok(vola.docker("volume", "rm", "big"))
    assert not os.path.ismount(mountpoint) and not mountpoint.parent.exists()
    holds = json.loads(admin_ok(listener.daemon, "tenant", "inspect", "vola"))[0]["holds"]
    assert holds["volume-bytes"] == 16 * MIB


def test_racing_volume_and_container_creates_take_the_quota_exactly(listener: TenantListener) -> None:
    admin_ok(
        listener.daemon,
        "tenant",
        "create",
        "volc",
        "--quota",
        "volume-bytes=64m",
        "--quota",
        "volume-size=16m",
        "--quota",
        "api-requests=100",
    )
    volc = TenantClient.with_new_key(listener, "volc")

    def create_volume(index: int) -> int:
        with volc.http() as http:
            return http.post("/volumes/create", json={"Name": f"v{index}"}).status_code

    def create_container(index: int) -> int:  # each with an anonymous volume of 16 MiB
        with volc.http() as http:
            body = {"Image": "busybox", "Cmd": ["true"], "Volumes": {"/data": {}}}
            return http.post("/containers/create", params={"name": f"c{index}"}, json=body).status_code

    for create, quota in ((create_volume, "64m"), (create_container, "128m")):  # 64 MiB more: 4 of 12
        admin_ok(listener.daemon, "tenant", "quota", "volc", f"volume-bytes={quota}")
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(create, range(12)))
        assert statuses.count(201) == 4 and statuses.count(403) + statuses.count(429) == 8, statuses
    assert len(ok(volc.docker("volume", "ls", "-q")).split()) == 8
    assert len(ok(volc.docker("ps", "-aq")).split()) == 4
    inspected = json.loads(admin_ok(listener.daemon, "tenant", "inspect", "volc"))[0]
    assert inspected["holds"]["volume-bytes"] == 128 * MIB

    # The tenant goes only with -f, and its volumes' file systems with it.
    done = admin(listener.daemon, "tenant", "rm", "volc")
    assert done.returncode != 0 and "4 containers, 0 networks and 8 volumes" in done.stderr, done.stderr
    with listener.daemon.http() as http:
        volumes = http.get("/volumes").json()["Volumes"]
    mountpoints = [Path(v["Mountpoint"]) for v in volumes if v["Name"].startswith(inspected["id"] + ".")]
    assert len(mountpoints) == 8 and all(os.path.ismount(m) for m in mountpoints)
    admin_ok(listener.daemon, "tenant", "rm", "-f", "volc")
    assert not any(m.parent.exists() for m in mountpoints)


EVENT = '{{.Type}} {{.Action}} {{.Actor.ID}} {{index .Actor.Attributes "name"}}'


def events(client: TenantClient | DockerHyperd, since: float, *filters: str) -> list[str]:
    """The volume and network events (and `filters`) between `since` and now, as EVENT lines."""
    window = ("--since", f"{since:.9f}", "--until", f"{time.time():.9f}")
    kinds = ("--filter", "type=volume", "--filter", "type=network")
    return ok(client.docker("events", *window, *kinds, *filters, "--format", EVENT)).splitlines()


def test_volume_and_network_events_are_dockers_and_only_the_tenants_own(
    listener: TenantListener, vola: TenantClient, volb: TenantClient
) -> None:
    since = time.time()
    ok(vola.docker("volume", "create", "ev"))
    network = ok(vola.docker("network", "create", "evnet")).strip()
    made = ok(vola.docker("create", "--name", "evc", "-v", "/anon", "busybox", "true")).strip()
    anonymous = json.loads(ok(vola.docker("inspect", made)))[0]["Mounts"][0]["Name"]
    ok(vola.docker("rm", "-v", "evc"))
    ok(vola.docker("volume", "rm", "ev"))
    ok(vola.docker("network", "rm", "evnet"))
    ok(listener.daemon.docker("volume", "create", "admins"))
    ok(listener.daemon.docker("volume", "rm", "admins"))
    assert events(vola, since) == [
        "volume create ev ",
        f"network create {network} evnet",
        f"volume create {anonymous} ",
        f"volume destroy {anonymous} ",
        "volume destroy ev ",
        f"network destroy {network} evnet",
    ]
    assert events(vola, since, "--filter", "volume=ev") == ["volume create ev ", "volume destroy ev "]
    assert events(vola, since, "--filter", "network=evnet")[0] == f"network create {network} evnet"
    assert events(volb, since) == []  # another tenant's events never show
    admins = events(listener.daemon, since)  # the admin sees all, by the store's names
    assert "volume create admins " in admins and "volume destroy admins " in admins
    assert any(line.endswith(".ev ") for line in admins) and f"network destroy {network} evnet" in admins


def test_a_write_past_a_volumes_size_gets_enospc_in_the_vm(
    listener: TenantListener, vola: TenantClient
) -> None:
    """And the tenant's VM boots are within its boots-per-minute: this run's is its one."""
    admin_ok(listener.daemon, "tenant", "quota", "vola", "boots-per-minute=1")
    since = time.time()
    ok(vola.docker("volume", "create", "--opt", "size=8m", "tiny"))
    script = (
        "dd if=/dev/zero of=/data/fill bs=1M count=32 conv=fsync 2>&1; echo dd=$?;"
        " echo after > /data/after 2>&1; echo write=$?; sync; du -k /data/fill"
    )
    out = ok(vola.docker("run", "--rm", "-v", "tiny:/data", "busybox", "sh", "-c", script, timeout=300))
    assert "No space left on device" in out, out
    assert "dd=1" in out, out
    kib = int(out.strip().splitlines()[-1].split()[0])
    assert 0 < kib <= 8 * 1024, out
    ok(vola.docker("volume", "rm", "tiny"))
    assert events(vola, since, "--filter", "volume=tiny") == [
        f"volume {action} tiny " for action in ("create", "mount", "unmount", "destroy")
    ]
    made = ok(vola.docker("create", "busybox", "true")).strip()
    done = vola.docker("start", made)  # refused before any VM boots
    assert done.returncode != 0
    assert "may boot 1 VMs a minute (boots-per-minute) and booted 1 in the last 60 s" in done.stderr, (
        done.stderr
    )
    ok(vola.docker("rm", made))
    admin_ok(listener.daemon, "tenant", "quota", "vola", "boots-per-minute=60")


def test_hyperd_restart_mounts_sized_volumes_again(listener: TenantListener, vola: TenantClient) -> None:
    """After a reboot (the mounts gone) hyperd mounts each sized volume's file system again."""
    ok(vola.docker("volume", "create", "--opt", "size=8m", "kept"))
    mountpoint = Path(str(stored(listener, "kept")["Mountpoint"]))
    (mountpoint / "note").write_text("still here")
    daemon = listener.daemon
    daemon.keep_root = True
    daemon.close()
    subprocess.run(["umount", str(mountpoint)], check=True)
    assert not os.path.ismount(mountpoint) and not (mountpoint / "note").exists()
    daemon.start()
    daemon.keep_root = False
    assert os.path.ismount(mountpoint)
    assert (mountpoint / "note").read_text() == "still here"
    assert "kept" in ok(vola.docker("volume", "ls", "-q")).split()
