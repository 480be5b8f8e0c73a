"""Networks, attachments, endpoints and published ports in hyperd's SQLite.

The tables live in hyperd's database file beside the containers table, with
a connection of their own. An endpoint (an address given to a running pod)
and a published host port are rows under UNIQUE constraints, so an address
or a port is never given twice, even by two processes; they are written
before the VM boots and deleted when it stops, and hyperd's start deletes
those of pods that no longer run, so IPAM is right again after a kill -9.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from hyper.database import open_database
from hyper.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from hyper.network.model import Attachment, Endpoint, Network, PortSpec, Publication

SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL,
    doc TEXT NOT NULL,
    UNIQUE (owner, name)
);
CREATE TABLE IF NOT EXISTS network_attachments (
    container_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    aliases TEXT NOT NULL,
    ip TEXT,
    PRIMARY KEY (container_id, network_id)
);
CREATE TABLE IF NOT EXISTS network_endpoints (
    container_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    mac TEXT NOT NULL,
    aliases TEXT NOT NULL,
    PRIMARY KEY (container_id, network_id),
    UNIQUE (network_id, ip)
);
CREATE TABLE IF NOT EXISTS network_ports (
    container_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    container_ip TEXT NOT NULL,
    protocol TEXT NOT NULL,
    host_ip TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    container_port INTEGER NOT NULL,
    UNIQUE (protocol, host_ip, host_port)
);
"""


# Networks from before owners (names unique over all; all the admin's) get an owner column.
MIGRATE_OWNERS = """
ALTER TABLE networks RENAME TO networks_before_owners;
CREATE TABLE networks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL,
    doc TEXT NOT NULL,
    UNIQUE (owner, name)
);
INSERT INTO networks (id, owner, name, doc) SELECT id, '', name, doc FROM networks_before_owners;
DROP TABLE networks_before_owners;
"""


class PortTaken(AlreadyExists):
    """A host port another container has published (`holder`)."""

    def __init__(self, message: str, *, holder: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.holder = holder


def _network_doc(network: Network) -> str:
    return json.dumps(
        {
            "subnet": str(network.subnet),
            "gateway": str(network.gateway),
            "internal": network.internal,
            "labels": dict(network.labels),
            "created": network.created,
            "mtu": network.mtu,
        }
    )


def _network(row: tuple[str, str, str, str]) -> Network:
    network_id, owner, name, doc_text = row
    doc = json.loads(doc_text)
    return Network(
        id=network_id,
        name=name,
        subnet=IPv4Network(doc["subnet"]),
        gateway=IPv4Address(doc["gateway"]),
        internal=bool(doc.get("internal")),
        labels=dict(doc.get("labels") or {}),
        created=float(doc.get("created") or 0),
        mtu=int(doc.get("mtu") or 0),
        owner=owner,
    )


def first_free_address(subnet: IPv4Network, used: Iterable[IPv4Address]) -> IPv4Address | None:
    """The lowest host address of `subnet` not in `used` (the gateway is in `used`)."""
    taken = set(used)
    for address in subnet.hosts():
        if address not in taken:
            return address
    return None


class NetworkStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = open_database(path)
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(networks)")]
        if columns and "owner" not in columns:
            self._db.executescript(f"BEGIN IMMEDIATE;{MIGRATE_OWNERS}COMMIT;")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- networks ---------------------------------------------------------------
    def networks(self, owner: str | None = None) -> list[Network]:
        """Every network, or `owner`'s only (a tenant's, or "" for the admin's)."""
        rows = self._db.execute("SELECT id, owner, name, doc FROM networks").fetchall()
        found = (_network(r) for r in rows)
        return sorted((n for n in found if owner is None or n.owner == owner), key=lambda n: n.created)

    def insert_network(self, network: Network) -> None:
        try:
            self._db.execute(
                "INSERT INTO networks (id, owner, name, doc) VALUES (?, ?, ?, ?)",
                (network.id, network.owner, network.name, _network_doc(network)),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(
                f"a network named {network.name!r} already exists", hint="choose another name"
            ) from None

    def delete_network(self, network_id: str) -> None:
        self._db.execute("DELETE FROM networks WHERE id = ?", (network_id,))

    def resolve(self, ref: str, owner: str | None = None) -> Network:
        """A network by name, full ID or unambiguous ID prefix (Docker's order), among
        `owner`'s (None: everyone's, where a name several owners use means the admin's)."""
        if not ref:
            raise InvalidArgument("an empty network name")
        networks = self.networks(owner)
        named = sorted((n for n in networks if n.name == ref), key=lambda n: bool(n.owner))
        if named:
            return named[0]
        for network in networks:
            if ref == network.id:
                return network
        matches = [n for n in networks if n.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise InvalidArgument(f"{ref!r} matches {len(matches)} networks", hint="give more of the ID")
        raise NotFound(f"network {ref} not found", hint="`hyper network ls` lists them")

    # -- attachments (what a container asks for) ---------------------------------
    def attachments(self, container_id: str) -> list[Attachment]:
        rows = self._db.execute(
            "SELECT network_id, aliases, ip FROM network_attachments"
            " WHERE container_id = ? ORDER BY position",
            (container_id,),
        ).fetchall()
        return [
            Attachment(network_id, tuple(json.loads(aliases)), IPv4Address(ip) if ip else None)
            for network_id, aliases, ip in rows
        ]

    def attach(self, container_id: str, attachment: Attachment) -> None:
        with self._transaction() as db:
            (position,) = db.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM network_attachments WHERE container_id = ?",
                (container_id,),
            ).fetchone()
            try:
                db.execute(
                    "INSERT INTO network_attachments VALUES (?, ?, ?, ?, ?)",
                    (
                        container_id,
                        attachment.network_id,
                        position,
                        json.dumps(list(attachment.aliases)),
                        str(attachment.ip) if attachment.ip else None,
                    ),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists("the container is already connected to that network") from None

    def detach(self, container_id: str, network_id: str | None = None) -> None:
        if network_id is None:
            self._db.execute("DELETE FROM network_attachments WHERE container_id = ?", (container_id,))
        else:
            self._db.execute(
                "DELETE FROM network_attachments WHERE container_id = ? AND network_id = ?",
                (container_id, network_id),
            )

    def attached_containers(self, network_id: str) -> list[str]:
        rows = self._db.execute(
            "SELECT container_id FROM network_attachments WHERE network_id = ?", (network_id,)
        ).fetchall()
        return [container_id for (container_id,) in rows]

    # -- endpoints (addresses of running pods) -------------------------------------
    def endpoints(self, *, network_id: str | None = None, container_id: str | None = None) -> list[Endpoint]:
        query = "SELECT container_id, network_id, ip, mac, aliases FROM network_endpoints"
        where, args = [], []
        if network_id is not None:
            where.append("network_id = ?")
            args.append(network_id)
        if container_id is not None:
            where.append("container_id = ?")
            args.append(container_id)
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = self._db.execute(query, args).fetchall()
        return [
            Endpoint(network_id=n, container_id=c, ip=IPv4Address(ip), mac=mac, aliases=tuple(json.loads(a)))
            for c, n, ip, mac, a in rows
        ]

    def allocate(
        self,
        container_id: str,
        network: Network,
        wanted: IPv4Address | None,
        aliases: tuple[str, ...],
        mac_of: Callable[[IPv4Address], str],
    ) -> Endpoint:
        """Give the container an address on `network` (`wanted`, or the lowest free one)."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT ip FROM network_endpoints WHERE network_id = ?", (network.id,)
            ).fetchall()
            used = {IPv4Address(ip) for (ip,) in rows} | {network.gateway}
            if wanted is not None:
                if wanted in used:
                    raise AlreadyExists(
                        f"the address {wanted} is already in use on network {network.name}",
                        hint="give another --ip, or leave it out",
                    )
                address = wanted
            else:
                found = first_free_address(network.subnet, used)
                if found is None:
                    raise ResourceExhausted(
                        f"no free address is left on network {network.name} ({network.subnet})",
                        hint="remove containers from it, or use a network with a larger subnet",
                    )
                address = found
            endpoint = Endpoint(network.id, container_id, address, mac_of(address), aliases)
            db.execute(
                "INSERT INTO network_endpoints VALUES (?, ?, ?, ?, ?)",
                (container_id, network.id, str(address), endpoint.mac, json.dumps(list(aliases))),
            )
        return endpoint

    def release(self, container_id: str) -> None:
        """The pod's VM stopped: its addresses and ports are free again."""
        with self._transaction() as db:
            db.execute("DELETE FROM network_endpoints WHERE container_id = ?", (container_id,))
            db.execute("DELETE FROM network_ports WHERE container_id = ?", (container_id,))

    # -- published ports -------------------------------------------------------
    def publications(self, container_id: str | None = None) -> list[Publication]:
        query = (
            "SELECT container_id, network_id, container_ip, protocol, host_ip, host_port, container_port"
            " FROM network_ports"
        )
        args: tuple[str, ...] = ()
        if container_id is not None:
            query += " WHERE container_id = ?"
            args = (container_id,)
        return [
            Publication(c, n, IPv4Address(ip), PortSpec(cport, proto, host_ip, hport))
            for c, n, ip, proto, host_ip, hport, cport in self._db.execute(query, args).fetchall()
        ]

    def publish(self, publications: list[Publication]) -> None:
        with self._transaction() as db:
            for item in publications:
                port = item.port
                clash = db.execute(
                    "SELECT container_id FROM network_ports WHERE protocol = ? AND host_port = ?"
                    " AND (host_ip = ? OR host_ip = '' OR ? = '')",
                    (port.protocol, port.host_port, port.host_ip, port.host_ip),
                ).fetchone()
                if clash is not None:
                    raise PortTaken(
                        f"the host port {port.host_ip or '0.0.0.0'}:{port.host_port}/{port.protocol}"
                        f" is already published by container {clash[0][:12]}",
                        holder=clash[0],
                        hint="choose another host port",
                    )
                db.execute(
                    "INSERT INTO network_ports VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.container_id,
                        item.network_id,
                        str(item.container_ip),
                        port.protocol,
                        port.host_ip,
                        port.host_port,
                        port.container_port,
                    ),
                )
