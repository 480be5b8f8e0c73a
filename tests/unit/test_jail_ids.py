"""Host-wide leases on VM uids: handed out in turn, held while starting or running, reclaimed after.

A pool over a temporary directory, with plain directories standing in for
cgroups and a base no process runs as.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hyper.vm.jail_ids import IdPool

BASE = 0x50000000


@pytest.fixture
def pool(tmp_path: Path) -> IdPool:
    return IdPool(tmp_path / "jail", BASE)


def test_ids_are_distinct_and_leases_name_the_vm(pool: IdPool, tmp_path: Path) -> None:
    first = pool.allocate("vm-a", lambda uid: (str(tmp_path / f"cg-{uid}"),))
    second = pool.allocate("vm-b", lambda uid: ())
    assert first.uid != second.uid
    assert BASE < first.uid < BASE + 65536
    doc = json.loads(first.path.read_text())
    assert (doc["uid"], doc["name"], doc["cgroups"]) == (
        first.uid,
        "vm-a",
        [str(tmp_path / f"cg-{first.uid}")],
    )
    assert oct(first.path.stat().st_mode & 0o777) == "0o600"
    assert oct((pool.directory / "ids").stat().st_mode & 0o777) == "0o700"


def test_a_starting_vm_keeps_its_id_and_a_finished_one_gives_it_back(pool: IdPool, tmp_path: Path) -> None:
    cgroup = tmp_path / "cg"
    lease = pool.allocate("vm", lambda uid: (str(cgroup),))
    cgroup.mkdir()
    assert pool.sweep() == []  # locked: the jailer has not started QEMU yet
    os.close(lease.fd)
    assert pool.sweep() == [lease.uid]  # nothing of it runs: cgroup and lease go
    assert not cgroup.exists() and not lease.path.exists()


def test_a_cgroup_with_processes_keeps_the_lease(pool: IdPool, tmp_path: Path) -> None:
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    (cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n")
    lease = pool.allocate("vm", lambda uid: (str(cgroup),))
    os.close(lease.fd)
    assert pool.sweep() == []
    assert not pool.release(str(lease.path))
    assert lease.path.exists()


def test_ids_come_back_only_after_every_other_was_used(pool: IdPool) -> None:
    first = pool.allocate("vm", lambda uid: ())
    os.close(first.fd)
    assert pool.release(str(first.path))
    second = pool.allocate("vm", lambda uid: ())
    assert second.uid == first.uid + 1  # not the one just freed


def test_an_id_some_process_runs_as_is_skipped(pool: IdPool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "_running_uids", lambda: {BASE + 1, BASE + 2})
    lease = pool.allocate("vm", lambda uid: ())
    assert lease.uid == BASE + 3
    os.close(lease.fd)
    monkeypatch.setattr(pool, "_running_uids", lambda: {BASE + 3})
    assert pool.sweep() == []  # a process still runs as that uid


def test_release_of_a_reclaimed_lease_is_done(pool: IdPool) -> None:
    lease = pool.allocate("vm", lambda uid: ())
    os.close(lease.fd)
    assert pool.sweep() == [lease.uid]
    assert pool.release(str(lease.path))


def test_sweep_removes_empty_cgroups_no_lease_names(pool: IdPool, tmp_path: Path) -> None:
    named, orphan, busy = tmp_path / "named", tmp_path / "orphan", tmp_path / "busy"
    for directory in (named, orphan, busy):
        directory.mkdir()
    (busy / "cgroup.procs").write_text("1\n")
    pool.allocate("vm", lambda uid: (str(named),))  # still locked: starting
    pool.sweep([named, orphan, busy])
    assert named.exists() and busy.exists()
    assert not orphan.exists()
