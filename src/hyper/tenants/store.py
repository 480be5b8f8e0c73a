"""Tenants, their keys, their usage and the images the admin made public, in SQLite.

`STATE/tenants/tenants.db`, beside hyperd's own database, in WAL mode. Only
hyperd writes it (the `hyper tenant` commands go through hyperd's socket),
so the service keeps what it checks on every request (keys) in memory and
writes through.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hyper.database import open_database
from hyper.errors import AlreadyExists, InvalidArgument, NotFound
from hyper.tenants.model import AccessKey, Quotas, Tenant, Usage, quotas_from_document

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    quotas TEXT NOT NULL,
    keystone_project TEXT UNIQUE
);
CREATE TABLE IF NOT EXISTS access_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    created REAL NOT NULL,
    secret_sha256 TEXT NOT NULL,
    signing_key TEXT NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS usage (
    tenant_id TEXT PRIMARY KEY,
    vcpu_seconds REAL NOT NULL,
    memory_mib_seconds REAL NOT NULL,
    container_seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metering (
    container_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS public_images (
    reference TEXT PRIMARY KEY,
    image_id TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Metering:
    """A running container whose time is being counted, since `since`."""

    container_id: str
    tenant_id: str
    vcpus: int
    memory_mib: int
    since: float


def _tenant(row: tuple[str, str, float, str, str | None]) -> Tenant:
    tenant_id, name, created, quotas, project = row
    return Tenant(tenant_id, name, created, quotas_from_document(json.loads(quotas)), project)


class TenantStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = open_database(path)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- tenants ---------------------------------------------------------------------
    def insert_tenant(self, tenant: Tenant) -> None:
        try:
            self._db.execute(
                "INSERT INTO tenants VALUES (?, ?, ?, ?, ?)",
                (
                    tenant.id,
                    tenant.name,
                    tenant.created,
                    json.dumps(tenant.quotas.document()),
                    tenant.keystone_project,
                ),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(
                f"a tenant named {tenant.name!r} (or of that Keystone project) already exists",
                hint="choose another name",
            ) from None

    def tenants(self) -> list[Tenant]:
        rows = self._db.execute(
            "SELECT id, name, created, quotas, keystone_project FROM tenants ORDER BY created"
        ).fetchall()
        return [_tenant(row) for row in rows]

    def resolve(self, ref: str) -> Tenant:
        """A tenant by name or ID."""
        if not ref:
            raise InvalidArgument("an empty tenant name")
        for tenant in self.tenants():
            if ref in (tenant.name, tenant.id):
                return tenant
        raise NotFound(f"no such tenant: {ref}", hint="`hyper tenant ls` lists them")

    def by_keystone_project(self, project_id: str) -> Tenant | None:
        row = self._db.execute(
            "SELECT id, name, created, quotas, keystone_project FROM tenants WHERE keystone_project = ?",
            (project_id,),
        ).fetchone()
        return None if row is None else _tenant(row)

    def set_quotas(self, tenant_id: str, quotas: Quotas) -> None:
        self._db.execute(
            "UPDATE tenants SET quotas = ? WHERE id = ?", (json.dumps(quotas.document()), tenant_id)
        )

    def delete_tenant(self, tenant_id: str) -> None:
        with self.transaction() as db:
            for table, column in (
                ("tenants", "id"),
                ("access_keys", "tenant_id"),
                ("usage", "tenant_id"),
                ("metering", "tenant_id"),
            ):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (tenant_id,))

    # -- keys ------------------------------------------------------------------------
    def insert_key(self, key: AccessKey) -> None:
        self._db.execute(
            "INSERT INTO access_keys VALUES (?, ?, ?, ?, ?, ?)",
            (key.id, key.tenant_id, key.created, key.secret_sha256, key.signing_key, key.revoked),
        )

    def access_keys(self) -> list[AccessKey]:
        rows = self._db.execute(
            "SELECT id, tenant_id, created, secret_sha256, signing_key, revoked FROM access_keys"
            " ORDER BY created"
        ).fetchall()
        return [AccessKey(*row) for row in rows]

    def revoke_key(self, key_id: str, when: float) -> None:
        self._db.execute(
            "UPDATE access_keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (when, key_id)
        )

    # -- usage -----------------------------------------------------------------------
    def usage(self, tenant_id: str) -> Usage:
        row = self._db.execute(
            "SELECT vcpu_seconds, memory_mib_seconds, container_seconds FROM usage WHERE tenant_id = ?",
            (tenant_id,),
        ).fetchone()
        return Usage(*row) if row is not None else Usage()

    def meterings(self) -> list[Metering]:
        rows = self._db.execute(
            "SELECT container_id, tenant_id, vcpus, memory_mib, since FROM metering"
        ).fetchall()
        return [Metering(*row) for row in rows]

    def account(self, metering: Metering, until: float, *, stop: bool) -> None:
        """Add the metered container's time from its `since` to `until` to its
        tenant's usage; then meter on from `until`, or stop (it no longer runs)."""
        seconds = max(0.0, until - metering.since)
        with self.transaction() as db:
            old = db.execute(
                "SELECT vcpu_seconds, memory_mib_seconds, container_seconds FROM usage WHERE tenant_id = ?",
                (metering.tenant_id,),
            ).fetchone()
            new = (Usage(*old) if old else Usage()).plus(seconds, metering.vcpus, metering.memory_mib)
            db.execute(
                "INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?)",
                (metering.tenant_id, new.vcpu_seconds, new.memory_mib_seconds, new.container_seconds),
            )
            if stop:
                db.execute("DELETE FROM metering WHERE container_id = ?", (metering.container_id,))
            else:
                db.execute(
                    "UPDATE metering SET since = ? WHERE container_id = ?",
                    (max(until, metering.since), metering.container_id),
                )

    def start_metering(self, metering: Metering) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO metering VALUES (?, ?, ?, ?, ?)",
            (metering.container_id, metering.tenant_id, metering.vcpus, metering.memory_mib, metering.since),
        )

    # -- public images ---------------------------------------------------------------
    def publish_image(self, reference: str, image_id: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO public_images VALUES (?, ?)", (reference, image_id))

    def unpublish_image(self, reference: str) -> bool:
        cursor = self._db.execute("DELETE FROM public_images WHERE reference = ?", (reference,))
        return cursor.rowcount > 0

    def public_images(self) -> dict[str, str]:
        """Reference → image ID, for each image name the admin made public."""
        rows = self._db.execute("SELECT reference, image_id FROM public_images ORDER BY reference").fetchall()
        return dict(rows)
