"""The volume store (SQLite and directories) and the plan that turns mounts into a VM's share."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyper.errors import FailedPrecondition, InvalidArgument, NotFound
from hyper.storage import volume_disk
from hyper.storage.mounts import parse_all, parse_mount
from hyper.storage.plan import resolve_mounts, share_plan
from hyper.storage.share import ShareEntry
from hyper.storage.volumes import ANONYMOUS_LABEL, VolumeStore


@pytest.fixture
def store(tmp_path: Path) -> VolumeStore:
    (tmp_path / "containers").mkdir()
    return VolumeStore(tmp_path / "volumes", tmp_path / "containers")


def live(store: VolumeStore, container: str) -> str:
    (store.containers / container).mkdir()
    return container


def test_create_is_idempotent_and_lists(store: VolumeStore) -> None:
    first = store.create("data", labels={"a": "b"})
    assert first.mountpoint == store.root / "data" / "_data" and first.mountpoint.is_dir()
    (first.mountpoint / "f").write_text("kept")
    again = store.create("data")
    assert again == first and (again.mountpoint / "f").read_text() == "kept"
    anonymous = store.create()
    assert anonymous.anonymous and len(anonymous.name) == 64 and ANONYMOUS_LABEL in anonymous.labels
    assert [v.name for v in store.all()] == sorted(["data", anonymous.name])
    doc = first.document(usage=(4096, 0))
    assert doc["Driver"] == "local" and doc["Labels"] == {"a": "b"} and doc["UsageData"]["RefCount"] == 0


def test_bad_requests(store: VolumeStore) -> None:
    with pytest.raises(InvalidArgument, match="invalid volume name"):
        store.create("-x")
    with pytest.raises(InvalidArgument, match="driver"):
        store.create("x1", driver="nfs")
    with pytest.raises(InvalidArgument, match="volume option 'type' is not supported"):
        store.create("x1", options={"type": "tmpfs"})
    with pytest.raises(InvalidArgument, match="out of range"):
        store.create("x1", options={"size": "1k"})
    assert store.all() == []  # nothing made of a refused create
    with pytest.raises(NotFound):
        store.get("nope")
    with pytest.raises(NotFound):
        store.remove("nope")


def test_in_use_needs_force(store: VolumeStore) -> None:
    store.create("data")
    container = live(store, "c" * 64)
    store.use(["data"], container)
    with pytest.raises(FailedPrecondition, match="in use by container"):
        store.remove("data")
    store.remove("data", force=True)
    with pytest.raises(NotFound):
        store.get("data")
    assert not (store.root / "data").exists()


def test_users_whose_container_is_gone_do_not_count(store: VolumeStore) -> None:
    store.create("data")
    store.use(["data"], "gone")
    assert store.users("data") == []
    store.remove("data")


def test_anonymous_removal_and_prune(store: VolumeStore) -> None:
    named = store.create("keep")
    anonymous = store.create()
    other = store.create()
    container = live(store, "c1")
    store.use([named.name, anonymous.name], container)
    assert store.prune() == ([other.name], 0)
    assert store.remove_anonymous(store.release(container)) == [anonymous.name]
    assert [v.name for v in store.all()] == ["keep"]
    (named.mountpoint / "f").write_bytes(b"x" * 10000)
    removed, freed = store.prune(all_volumes=True)
    assert removed == ["keep"] and freed >= 10000


def test_resolve_and_plan(store: VolumeStore, tmp_path: Path) -> None:
    host = tmp_path / "host"
    missing = tmp_path / "made-by-v"
    parsed = parse_all(
        volumes=[f"{host}:/h:ro", "named:/n", "/anon", f"{missing}:/m"],
        mounts=["type=tmpfs,target=/t,tmpfs-size=1m"],
    )
    host.mkdir()
    container = live(store, "c" * 64)
    resolved = resolve_mounts(store, [m.canonical() for m in parsed], ["/image-volume", "/n"], container)
    assert missing.is_dir()  # -v makes a missing host directory, as Docker does
    assert resolve_mounts(store, resolved, ["/image-volume"], container) == resolved  # idempotent
    names = {v.name for v in store.all()}
    assert "named" in names and len(names) == 3
    assert set(store.release(container)) == names
    plan = share_plan(store, resolved, "c" * 12)
    assert plan.entries[0] == ShareEntry(str(host), "cccccccccccc/m0", True)
    assert plan.entries[1] == ShareEntry(str(store.get("named").mountpoint), "cccccccccccc/m1", False)
    targets = [m["target"] for m in plan.guest]
    assert targets == ["/h", "/n", "/anon", "/m", "/t", "/image-volume"]
    tmpfs = next(m for m in plan.guest if m["type"] == "tmpfs")
    assert tmpfs["options"] == [f"size={1 << 20}"]
    assert [m.get("copy_up") for m in plan.guest if m["type"] == "bind"] == [False, True, True, False, True]


def test_an_empty_read_only_volume_is_writable_to_its_copy_up_only(
    store: VolumeStore, tmp_path: Path
) -> None:
    mounts = [m.canonical() for m in parse_all(volumes=["ro-vol:/etc:ro", "ro-nocopy:/x:ro,nocopy"])]
    resolved = resolve_mounts(store, mounts, [], live(store, "c" * 64))
    plan = share_plan(store, resolved, "c" * 12)
    # Empty: the guest fills it from the image, then mounts it read-only; nocopy: read-only at once.
    assert [e.read_only for e in plan.entries] == [False, True]
    assert all(m["read_only"] for m in plan.guest)
    (store.get("ro-vol").mountpoint / "passwd").write_text("root:x:0:0::/:/bin/sh\n")
    assert [e.read_only for e in share_plan(store, resolved, "c" * 12).entries] == [True, True]


def test_a_volume_a_mount_creates_gets_its_labels(store: VolumeStore) -> None:
    store.create("existing", labels={"kept": "yes"})
    mounts = [
        "type=volume,source=fresh,target=/a,volume-label=team=db",
        "type=volume,source=existing,target=/b,volume-label=team=db",
        "type=volume,target=/c,volume-label=team=db",
    ]
    resolved = resolve_mounts(store, mounts, [], live(store, "c" * 64))
    assert store.get("fresh").labels == {"team": "db"}
    assert store.get("existing").labels == {"kept": "yes"}  # as Docker: an existing volume keeps its own
    anonymous = parse_mount(resolved[2]).source
    assert store.get(anonymous).labels == {"team": "db", ANONYMOUS_LABEL: ""}


def test_mount_source_must_exist(store: VolumeStore, tmp_path: Path) -> None:
    [mount] = parse_all(mounts=[f"type=bind,source={tmp_path}/absent,target=/x"])
    with pytest.raises(InvalidArgument, match="bind source path does not exist"):
        resolve_mounts(store, [mount.canonical()], [], "c1")


def test_a_tenants_anonymous_volumes_are_named_in_its_space(
    store: VolumeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """And a tenant's volume is made only with the size its quota was charged for."""
    sizes: list[int] = []

    def fake_disk(directory: Path, size: int) -> None:  # no loop mounts in unit tests
        (directory / "_data").mkdir(parents=True)
        sizes.append(size)

    monkeypatch.setattr(volume_disk, "make_disk", fake_disk)
    sized = "type=volume,target=/a,volume-opt=size=8m"
    store.create("t1.kept", size=None)  # one that exists: its size charged when it was made
    resolved = resolve_mounts(
        store, [sized, "type=volume,source=t1.kept,target=/k"], [], live(store, "c" * 64), owner="t1"
    )
    anonymous = store.get(parse_mount(resolved[0]).source)
    assert anonymous.name.startswith("t1.") and len(anonymous.name) == 3 + 64 and anonymous.anonymous
    assert parse_mount(resolved[0]).volume_size == 8 << 20 and sizes == [8 << 20]
    with pytest.raises(FailedPrecondition, match="volume gone no longer exists"):
        resolve_mounts(store, ["type=volume,source=t1.gone,target=/g"], [], live(store, "d" * 64), owner="t1")
    assert not store.exists("t1.gone")


def test_sizes_are_summed_by_owner_prefix_and_an_old_store_gets_its_size_column(tmp_path: Path) -> None:
    import sqlite3

    root = tmp_path / "volumes"
    root.mkdir()
    old = sqlite3.connect(root / "volumes.db")
    old.execute(
        "CREATE TABLE volumes (name TEXT PRIMARY KEY, created REAL NOT NULL,"
        " anonymous INTEGER NOT NULL, labels TEXT NOT NULL)"
    )
    old.execute("INSERT INTO volumes VALUES ('t1.old', 0, 0, '{}')")
    old.commit()
    old.close()
    with VolumeStore(root, tmp_path) as store:
        assert store.get("t1.old").size == 0 and store.get("t1.old").document()["Options"] is None
        store._db.execute("INSERT INTO volumes VALUES ('t1.a', 0, 0, '{}', 100)")
        store._db.execute("INSERT INTO volumes VALUES ('t1.b', 0, 1, '{}', 20)")
        store._db.execute("INSERT INTO volumes VALUES ('t10.c', 0, 0, '{}', 7)")
        assert (store.total_size("t1."), store.total_size("t10."), store.total_size("x.")) == (120, 7, 0)
        assert store.get("t1.a").document()["Options"] == {"size": "100"}
