"""hyper.tenants' pure parts and stores: keys, quotas, signatures, the audit chain,
throttling, scopes, and the owner columns of hyperd's own tables."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from hyper.daemon.state import ContainerRecord, StateStore
from hyper.errors import (
    AlreadyExists,
    DataLoss,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from hyper.network import nftables
from hyper.network.model import Network
from hyper.network.store import NetworkStore
from hyper.paths import HyperPaths
from hyper.tenants import signing
from hyper.tenants.audit import AuditLog
from hyper.tenants.model import (
    Quotas,
    Tenant,
    Usage,
    derive_signing_key,
    new_key,
    parse_quotas,
    parse_size,
    parse_token,
    secret_matches,
)
from hyper.tenants.quotas import Claim, QuotaGate, RequestLimiter, binary_size
from hyper.tenants.scope import ADMIN, Principal, Scope
from hyper.tenants.store import Metering, TenantStore
from hyper.tenants.throttle import BootRate, LoginThrottle, Throttled


def _tenant(name: str = "acme", **quotas: int) -> Tenant:
    return Tenant(f"{name:0<16}"[:16], name, 0.0, Quotas(**quotas))


# -- keys and quotas --------------------------------------------------------------------------------
def test_a_key_is_kept_as_hashes_only_and_its_token_checks() -> None:
    made = new_key("t1", 1.0)
    stored = json.dumps(made.key.document()) + made.key.secret_sha256 + made.key.signing_key
    assert made.secret not in stored
    key_id, secret = parse_token(made.token)
    assert key_id == made.key.id and secret_matches(made.key, secret)
    assert not secret_matches(made.key, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert made.key.signing_key == derive_signing_key(made.secret).hex()


@pytest.mark.parametrize("token", ["", "nodot", "HKAAAAAAAAAAAAAAAA.", "hk" + "A" * 16 + ".x", "x" * 300])
def test_malformed_tokens_are_refused_alike(token: str) -> None:
    with pytest.raises(Unauthenticated, match="malformed"):
        parse_token(token)


def test_quotas_parse_names_units_and_refuse_the_rest() -> None:
    quotas = parse_quotas(["containers=3", "memory=2g", "volume-bytes=512m", "api-requests=4"])
    assert (quotas.containers, quotas.memory_mib, quotas.volume_bytes, quotas.api_requests) == (
        3,
        2048,
        512 << 20,
        4,
    )
    assert parse_quotas(["memory=4096"]).memory_mib == 4096  # a bare number is MiB
    assert parse_size("10GiB") == 10 << 30
    for bad in ("containers", "cpu=3", "containers=-1", "containers=x", "memory=lots"):
        with pytest.raises(InvalidArgument):
            parse_quotas([bad])


def test_the_default_volume_size_is_set_like_a_quota_within_a_volumes_bounds() -> None:
    assert Quotas().volume_size == 1 << 30
    assert parse_quotas(["volume-size=64m"]).volume_size == 64 << 20
    for bad, words in (("volume-size=1k", "out of range"), ("volume-size=big", "invalid")):
        with pytest.raises(InvalidArgument, match=words):
            parse_quotas([bad])
    assert Quotas().document()["volume-size"] == 1 << 30


def test_volume_bytes_are_refused_in_sizes_naming_the_quota_and_its_use() -> None:
    tenant = _tenant(volume_bytes=100 << 20)
    gate = QuotaGate(lambda tenant_id: Claim(volume_bytes=64 << 20))

    async def admit(claim: Claim) -> None:
        async with gate.admit(tenant, claim):
            pass

    with pytest.raises(ResourceExhausted) as refused:
        asyncio.run(admit(Claim(volume_bytes=64 << 20)))
    assert refused.value.message == (
        "quota exceeded: tenant acme may have 100 MiB of volumes (volume-bytes) and uses 64 MiB;"
        " this request needs 64 MiB more"
    )
    asyncio.run(admit(Claim(volume_bytes=36 << 20)))  # exactly to the quota
    assert [binary_size(n) for n in (512, 1536, 10 << 30, (3 << 29), 2 << 40)] == [
        "512 B",
        "1.5 KiB",
        "10 GiB",
        "1.5 GiB",
        "2 TiB",
    ]


def test_boots_are_counted_per_tenant_in_a_sliding_minute() -> None:
    rate = BootRate()
    acme, other = _tenant(boots_per_minute=2), _tenant("other", boots_per_minute=2)
    rate.admit(acme, 100.0)
    rate.admit(acme, 110.0)
    with pytest.raises(ResourceExhausted) as refused:
        rate.admit(acme, 130.0)
    assert refused.value.message == (
        "quota exceeded: tenant acme may boot 2 VMs a minute (boots-per-minute)"
        " and booted 2 in the last 60 s; try again in 30 s"
    )
    rate.admit(other, 130.0)  # another tenant's boots are its own
    rate.admit(acme, 160.5)  # the first boot is a minute old
    with pytest.raises(ResourceExhausted, match="raise it"):
        rate.admit(_tenant("stopped", boots_per_minute=0), 0.0)
    assert parse_quotas(["boots-per-minute=0"]).boots_per_minute == 0


def test_racing_volume_creates_take_the_quota_once() -> None:
    """Each create's size is held from its admission until its row is in the store."""
    tenant = _tenant(volume_bytes=1 << 30)
    made: list[int] = []
    gate = QuotaGate(lambda tenant_id: Claim(volume_bytes=sum(made)))
    refused = 0

    async def create(size: int) -> None:
        nonlocal refused
        try:
            async with gate.admit(tenant, Claim(volume_bytes=size)):
                await asyncio.sleep(0.01)  # mkfs in a thread
                made.append(size)
        except ResourceExhausted:
            refused += 1

    async def main() -> None:
        await asyncio.gather(*(create(256 << 20) for _ in range(20)))

    asyncio.run(main())
    assert (len(made), refused, sum(made)) == (4, 16, 1 << 30)


def test_usage_adds_seconds_at_the_sizes_given() -> None:
    usage = Usage().plus(10, vcpus=2, memory_mib=512).plus(-5, vcpus=9, memory_mib=9)
    assert usage.document() == {"vcpu_seconds": 20.0, "memory_gib_seconds": 5.0, "container_seconds": 10.0}


# -- signed requests --------------------------------------------------------------------------------
def _signed(now: float, **changes: str) -> tuple[signing.SignedRequest, bytes]:
    made = new_key("t1", now)
    key = derive_signing_key(made.secret)
    headers = signing.sign_headers(
        made.key.id, key, method="POST", path="/v1.43/containers/create", query=[("name", "web")],
        body=b'{"Image": "busybox"}', now=now,
    )  # fmt: skip
    headers.update(changes)
    return signing.parse_signed(headers), key


def test_a_signed_request_verifies_and_any_change_breaks_it() -> None:
    now = time.time()
    signed, key = _signed(now)
    signing.verify(signed, key, "POST", "/v1.43/containers/create", [("name", "web")])
    for method, path, query in (
        ("GET", "/v1.43/containers/create", [("name", "web")]),
        ("POST", "/v1.43/containers/create2", [("name", "web")]),
        ("POST", "/v1.43/containers/create", [("name", "www")]),
        ("POST", "/v1.43/containers/create", []),
    ):
        with pytest.raises(Unauthenticated, match="does not match"):
            signing.verify(signed, key, method, path, query)
    other, _ = _signed(now, **{signing.CONTENT_HEADER: "0" * 64})
    with pytest.raises(Unauthenticated, match="does not match"):
        signing.verify(other, key, "POST", "/v1.43/containers/create", [("name", "web")])


def test_a_signature_outside_the_window_says_how_far_off_the_clock_is() -> None:
    now = float(int(time.time()))  # the signed date has whole seconds
    signed, _ = _signed(now - 1000)
    with pytest.raises(Unauthenticated, match=r"1000 s behind hyperd's clock"):
        signing.check_date(signed, now)
    ahead, _ = _signed(now + 400)
    with pytest.raises(Unauthenticated, match="ahead of"):
        signing.check_date(ahead, now)
    signing.check_date(_signed(now - 100)[0], now)


def test_a_signature_is_accepted_once_and_forgotten_after_the_window() -> None:
    now = time.time()
    cache = signing.ReplayCache(window=300, size=3)
    signed, _ = _signed(now)
    cache.admit(signed, now)
    with pytest.raises(Unauthenticated, match="replay"):
        cache.admit(signed, now + 1)
    cache.admit(_signed(now)[0], now)
    cache.admit(_signed(now)[0], now)
    with pytest.raises(ResourceExhausted):
        cache.admit(_signed(now)[0], now)
    cache.admit(_signed(now + 700)[0], now + 700)  # the old ones are forgotten by then


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "HYPER-HMAC-SHA256 Credential=HK" + "A" * 16 + ", Signature=" + "a" * 63},
        {"Authorization": "HYPER-HMAC-SHA256 Credential=nope, Signature=" + "a" * 64},
        {"Authorization": "HYPER-HMAC-SHA256 " + "x" * 600},
        {signing.DATE_HEADER: "yesterday"},
        {signing.DATE_HEADER: "20261399T000000Z"},
        {signing.NONCE_HEADER: "short"},
        {signing.CONTENT_HEADER: "not-hex"},
    ],
)
def test_malformed_signatures_are_refused_saying_what(headers: dict[str, str]) -> None:
    made = new_key("t1", 0)
    good = signing.sign_headers(made.key.id, b"k", method="GET", path="/x")
    with pytest.raises(Unauthenticated):
        signing.parse_signed(good | headers)


# -- audit ------------------------------------------------------------------------------------------
def _append(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append(
            tenant="t1", tenant_name="acme", key="HK1", action=f"POST /x/{i}", object="o", result=201,
            source="127.0.0.1",
        )  # fmt: skip


def test_the_audit_log_is_a_chain_that_survives_reopening(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    _append(log, 3)
    log.close()
    log = AuditLog(tmp_path / "audit.log")
    _append(log, 2)
    log.close()
    assert log.verify() == 5
    entries = log.read(tenant="t1", limit=2)
    assert [e.seq for e in entries] == [4, 5] and entries[0].prev == log.read()[2].hash
    assert log.read(tenant="other") == []


@pytest.mark.parametrize("tamper", ["edit", "drop", "swap"])
def test_a_changed_audit_log_fails_verification_at_the_change(tmp_path: Path, tamper: str) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    _append(log, 4)
    log.close()
    lines = path.read_text().splitlines()
    if tamper == "edit":
        lines[1] = lines[1].replace('"result":201', '"result":403')
    elif tamper == "drop":
        del lines[2]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataLoss, match="was changed at entry"):
        AuditLog(path).verify()


# -- quotas, limits, throttling ---------------------------------------------------------------------
def test_fifty_concurrent_admissions_against_ten_admit_exactly_ten() -> None:
    tenant = _tenant(containers=10)
    created: list[int] = []
    gate = QuotaGate(lambda tenant_id: Claim(containers=len(created)))
    refusals: list[str] = []

    async def create(i: int) -> None:
        try:
            async with gate.admit(tenant, Claim(containers=1, vcpus=1, memory_mib=512)):
                await asyncio.sleep(0.01)  # the create's own awaits
                created.append(i)
        except ResourceExhausted as exc:
            refusals.append(exc.message)

    async def main() -> None:
        await asyncio.gather(*(create(i) for i in range(50)))

    asyncio.run(main())
    assert len(created) == 10 and len(refusals) == 40
    assert refusals[0].startswith("quota exceeded: tenant acme may have 10 containers and uses")
    assert gate.pending(tenant.id) == Claim()


def test_every_quota_is_checked_and_named() -> None:
    tenant = _tenant(vcpus=4, memory_mib=1024, published_ports=1, networks=0)
    gate = QuotaGate(lambda tenant_id: Claim(vcpus=3, memory_mib=512))

    async def admit(claim: Claim) -> None:
        async with gate.admit(tenant, claim):
            pass

    for claim, words in (
        (Claim(vcpus=2), "4 vCPUs and uses 3; this request needs 2 more"),
        (Claim(memory_mib=1024), "1024 memory (MiB) and uses 512"),
        (Claim(published_ports=2), "1 published ports"),
        (Claim(networks=1), "0 networks"),
    ):
        with pytest.raises(ResourceExhausted, match=words.replace("(", r"\(").replace(")", r"\)")):
            asyncio.run(admit(claim))
    asyncio.run(admit(Claim(vcpus=1, memory_mib=512)))


def test_requests_in_progress_are_capped_per_tenant() -> None:
    limiter = RequestLimiter()
    a, b = _tenant("a", api_requests=2), _tenant("b", api_requests=1)
    limiter.acquire(a)
    limiter.acquire(a)
    limiter.acquire(b)
    with pytest.raises(ResourceExhausted, match="2 requests in progress"):
        limiter.acquire(a)
    limiter.release(a)
    limiter.acquire(a)
    assert limiter.active(a.id) == 2


def test_failed_logins_throttle_their_address_only_and_for_a_while() -> None:
    throttle = LoginThrottle(failures=3, window=60)
    for t in range(3):
        throttle.check("10.0.0.1", t)
        throttle.failed("10.0.0.1", t)
    with pytest.raises(Throttled, match=r"too many failed logins from 10.0.0.1; try again in 58 s"):
        throttle.check("10.0.0.1", 2)
    throttle.check("10.0.0.2", 2)  # another address is served
    throttle.check("10.0.0.1", 61)  # the first failure is old enough


# -- scopes and owners ------------------------------------------------------------------------------
def test_a_tenant_scope_names_its_volumes_apart() -> None:
    scope = Scope(Principal(_tenant("acme"), "HK1"))
    assert scope.volume_name("db") == f"{scope.creator}.db"
    assert scope.shown_volume_name(scope.volume_name("db")) == "db"
    assert scope.shown_volume_name("db") is None and scope.shown_volume_name("other.db") is None
    assert ADMIN.volume_name("db") == "db" and ADMIN.shown_volume_name("x.db") == "x.db"
    assert ADMIN.sees("anyone") and scope.sees(scope.creator) and not scope.sees("")


def test_tenant_paths_have_their_own_images_and_templates() -> None:
    paths = HyperPaths(Path("/s"), Path("/c"), Path("/r"))
    tenant = paths.scoped("t1")
    assert tenant.images == Path("/s/tenants/t1/images") and paths.images == Path("/s/images")
    assert tenant.templates == Path("/c/templates/tenants/t1") and tenant.containers == paths.containers


def _record(container_id: str, name: str, owner: str) -> ContainerRecord:
    return ContainerRecord(
        id=container_id, name=name, image="i", image_id="sha256:1", command=[], created=0.0,
        state="created", options={"image": "i", "owner": owner},
    )  # fmt: skip


def test_container_names_are_per_owner_and_lookups_stay_in_the_owner(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "hyperd.db")
    store.insert(_record("a" * 64, "web", "t1"))
    store.insert(_record("b" * 64, "web", "t2"))
    store.insert(_record("c" * 64, "web", ""))
    with pytest.raises(AlreadyExists):
        store.insert(_record("d" * 64, "web", "t1"))
    assert store.resolve("web", "t2").id == "b" * 64
    assert store.resolve("web").id == "c" * 64  # the admin's, when the admin asks
    for ref in ("a" * 64, "aaaa", "c" * 64):
        with pytest.raises(NotFound, match=f"no such container: {ref}"):
            store.resolve(ref, "t2")


def test_an_old_state_database_gets_owners(tmp_path: Path) -> None:
    path = tmp_path / "hyperd.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE containers (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, doc TEXT NOT NULL)")
    record = _record("e" * 64, "old", "")
    row = (record.id, record.name, json.dumps(record.__dict__))
    db.execute("INSERT INTO containers VALUES (?, ?, ?)", row)
    db.commit()
    db.close()
    store = StateStore(path)
    assert store.resolve("old").owner == ""
    store.insert(_record("f" * 64, "old", "t1"))  # names are per owner now


def test_networks_are_per_owner_and_each_tenant_has_its_own_bridge(tmp_path: Path) -> None:
    store = NetworkStore(tmp_path / "hyperd.db")
    subnet = IPv4Network("10.210.0.0/24")
    admin = Network("a" * 64, "bridge", IPv4Network("172.17.0.0/16"), IPv4Address("172.17.0.1"))
    mine = Network("b" * 64, "bridge", subnet, IPv4Address("10.210.0.1"), owner="t1")
    store.insert_network(admin)
    store.insert_network(mine)
    assert store.resolve("bridge", "t1").id == mine.id and store.resolve("bridge").id == admin.id
    assert admin.bridge == "hyper0" and mine.bridge == "hy-bbbbbbbbbbbb"
    with pytest.raises(NotFound):
        store.resolve(admin.id, "t1")
    assert [n.id for n in store.networks("t1")] == [mine.id]


def test_a_network_drops_traffic_to_other_networks_host_addresses() -> None:
    a = Network("a" * 64, "bridge", IPv4Network("10.210.0.0/24"), IPv4Address("10.210.0.1"), owner="t1")
    b = Network("b" * 64, "bridge", IPv4Network("10.210.1.0/24"), IPv4Address("10.210.1.1"), owner="t2")
    commands = nftables.ruleset(
        [nftables.ActiveNetwork(a, a.bridge), nftables.ActiveNetwork(b, b.bridge)], []
    )
    rules = [c["add"]["rule"] for c in commands if "rule" in c.get("add", {})]
    inputs = [r for r in rules if r["chain"] == "input" and {"drop": None} in r["expr"]]
    assert any("hy-aaaaaaaaaaaa" in str(r["expr"]) and "10.210.1.1" in str(r["expr"]) for r in inputs)
    assert any("hy-bbbbbbbbbbbb" in str(r["expr"]) and "10.210.0.1" in str(r["expr"]) for r in inputs)


# -- the tenants' own store -------------------------------------------------------------------------
def test_the_tenant_store_keeps_tenants_keys_usage_and_public_images(tmp_path: Path) -> None:
    store = TenantStore(tmp_path / "tenants.db")
    tenant = _tenant("acme", containers=3)
    store.insert_tenant(tenant)
    with pytest.raises(AlreadyExists):
        store.insert_tenant(_tenant("acme"))
    key = new_key(tenant.id, 1.0).key
    store.insert_key(key)
    store.revoke_key(key.id, 2.0)
    metering = Metering("c1", tenant.id, 2, 1024, 100.0)
    store.start_metering(metering)
    store.account(metering, 110.0, stop=False)
    store.account(store.meterings()[0], 115.0, stop=True)
    store.publish_image("docker.io/library/busybox:latest", "sha256:1")
    store.close()
    store = TenantStore(tmp_path / "tenants.db")
    assert store.resolve("acme").quotas.containers == 3
    assert store.access_keys()[0].revoked == 2.0
    assert store.usage(tenant.id) == Usage(30.0, 15360.0, 15.0) and store.meterings() == []
    assert store.public_images() == {"docker.io/library/busybox:latest": "sha256:1"}
    store.delete_tenant(tenant.id)
    assert store.tenants() == [] and store.access_keys() == []
