"""Several processes opening one fresh database at once (two `hyper run --direct`
on a new state directory open the volume store together): none may fail with
"database is locked", which SQLite answers without waiting to the loser of the
switch to WAL."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from hyper.database import open_database
from hyper.storage.volumes import VolumeStore

OPENERS = 6
ROUNDS = 15


def _open_volume_store(root: str) -> str:
    try:
        with VolumeStore(Path(root) / "volumes", Path(root) / "containers"):
            return ""
    except Exception as exc:  # reported to the parent, which asserts there is none
        return repr(exc)


def test_many_processes_open_a_fresh_store_at_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    with context.Pool(OPENERS) as pool:
        for round_ in range(ROUNDS):
            root = tmp_path / str(round_)
            root.mkdir()
            errors = [e for e in pool.map(_open_volume_store, [str(root)] * OPENERS) if e]
            assert errors == [], errors


def test_a_database_opens_in_wal_mode(tmp_path: Path) -> None:
    db = open_database(tmp_path / "x.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.isolation_level is None
    finally:
        db.close()
