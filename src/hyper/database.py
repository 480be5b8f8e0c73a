"""Opening the SQLite databases hyper and hyperd keep their state in.

Several processes may open one database for the first time together (two
`hyper run --direct` on a fresh state directory open the volume store at
once). Switching a database to write-ahead logging takes an exclusive lock,
and SQLite answers "database is locked" at once to the loser of that race
without consulting its busy timeout; so the switch is retried until the
timeout, as the busy handler would have waited.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

RETRY_INTERVAL = 0.01


def open_database(path: Path, *, timeout: float = 10.0) -> sqlite3.Connection:
    """A connection in autocommit mode and WAL journal mode, usable from any thread."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(RETRY_INTERVAL)  # the other opener holds the lock for one pragma
        db.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        db.close()
        raise
    return db
