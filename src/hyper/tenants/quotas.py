"""Quotas, enforced at the moment of admission; and a cap on requests in progress.

A create is admitted by `QuotaGate.admit`: what the tenant holds (read from
hyperd's pods, networks and volume store), plus what creates already admitted but not
finished claim, plus this request's claim, must fit every quota. The check
and the claim happen with no `await` between them, so on hyperd's one event
loop no two creates can both take the last unit: 50 concurrent creates
against a quota of 10 make exactly 10. The claim is dropped when the create
ends; by then a created container is among hyperd's pods and a created
volume in the volume store, and counted there.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields

from hyper.errors import ResourceExhausted
from hyper.tenants.model import QUOTA_SPECS, Tenant


@dataclass(frozen=True)
class Claim:
    """What a tenant holds, or what one request would add to it."""

    containers: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    volume_bytes: int = 0
    networks: int = 0
    published_ports: int = 0

    def plus(self, other: Claim) -> Claim:
        return Claim(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Claim)))


_WHAT = {spec.field: spec.what for spec in QUOTA_SPECS}


def binary_size(size: int) -> str:
    """Bytes as the quotas are set: `10 GiB`, `64 MiB`, `1.5 GiB`, `512 B`."""
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.4g} {unit}"
    return f"{size} B"


def exceeded(tenant: Tenant, quota: str, limit: int, used: int, asked: int) -> str:
    """The refusal's words: the quota, its limit, the tenant's use and the request's need."""
    if quota == "volume_bytes":  # sizes, as the admin set them
        return (
            f"quota exceeded: tenant {tenant.name} may have {binary_size(limit)} of volumes (volume-bytes)"
            f" and uses {binary_size(used)}; this request needs {binary_size(asked)} more"
        )
    return (
        f"quota exceeded: tenant {tenant.name} may have {limit} {_WHAT[quota]} and uses {used};"
        f" this request needs {asked} more"
    )


def check_fits(tenant: Tenant, held: Claim, wanted: Claim) -> None:
    """Raise ResourceExhausted naming the first quota `wanted` would pass."""
    for item in fields(Claim):
        asked = getattr(wanted, item.name)
        if asked <= 0:
            continue
        used, limit = getattr(held, item.name), getattr(tenant.quotas, item.name)
        if used + asked > limit:
            raise ResourceExhausted(
                exceeded(tenant, item.name, limit, used, asked),
                hint="remove what it no longer needs, or ask hyperd's admin to raise the quota",
            )


class QuotaGate:
    def __init__(self, held: Callable[[str], Claim]) -> None:
        self._held = held  # what a tenant holds now, from hyperd's own records
        self._pending: dict[int, tuple[str, Claim]] = {}
        self._next = 0

    def pending(self, tenant_id: str) -> Claim:
        total = Claim()
        for owner, claim in self._pending.values():
            if owner == tenant_id:
                total = total.plus(claim)
        return total

    @contextlib.asynccontextmanager
    async def admit(self, tenant: Tenant, claim: Claim) -> AsyncIterator[None]:
        # No await from the check to the claim: admission is atomic on the event loop.
        check_fits(tenant, self._held(tenant.id).plus(self.pending(tenant.id)), claim)
        ticket, self._next = self._next, self._next + 1
        self._pending[ticket] = (tenant.id, claim)
        try:
            yield
        finally:
            del self._pending[ticket]


class RequestLimiter:
    """At most a tenant's `api_requests` requests in progress at once."""

    def __init__(self) -> None:
        self._active: dict[str, int] = {}

    def active(self, tenant_id: str) -> int:
        return self._active.get(tenant_id, 0)

    def acquire(self, tenant: Tenant) -> None:
        active = self.active(tenant.id)
        if active >= tenant.quotas.api_requests:
            raise ResourceExhausted(
                f"tenant {tenant.name} has {active} requests in progress, its quota of concurrent"
                f" API requests",
                hint="wait for some to finish (streams such as logs -f and events count while open)",
            )
        self._active[tenant.id] = active + 1

    def release(self, tenant: Tenant) -> None:
        left = self._active.get(tenant.id, 1) - 1
        if left > 0:
            self._active[tenant.id] = left
        else:
            self._active.pop(tenant.id, None)
