"""Failed logins, throttled per client address and key; and each tenant's rate of VM boots.

Failures are counted in buckets: an address together with the access key a
request names, when that key exists, else the address alone (unknown keys,
garbage, no credentials). A bucket with FAILURES failed logins within
WINDOW seconds is refused (429, with Retry-After) without its credentials
being looked at, until the oldest of those failures is WINDOW seconds old.
So guessing one key's secret is throttled, spraying made-up keys is
throttled per address, and the other tenants behind the same address (one
NAT) keep using their own keys. Memory is bounded: at most MAX_ADDRESSES
buckets are remembered, the stalest forgotten first (made-up keys never make
buckets of their own, so they cannot push a throttled one out).
"""

from __future__ import annotations

import collections
import math

from hyper.errors import ResourceExhausted
from hyper.tenants.model import Tenant

FAILURES = 20
WINDOW = 60.0
MAX_ADDRESSES = 10_000


class Throttled(ResourceExhausted):
    """Too many failed logins from one address."""

    def __init__(self, address: str, retry_after: float) -> None:
        super().__init__(
            f"too many failed logins from {address}; try again in {math.ceil(retry_after)} s",
            hint="check the access token or key",
        )
        self.retry_after = retry_after


class LoginThrottle:
    def __init__(self, failures: int = FAILURES, window: float = WINDOW) -> None:
        self.failures = failures
        self.window = window
        self._seen: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def check(self, bucket: str, now: float, address: str | None = None) -> None:
        """Raise Throttled when `bucket` (an address, or an address and key) may not try
        again yet; the refusal names `address`."""
        recent = self._seen.get(bucket)
        if recent is None:
            return
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        if len(recent) >= self.failures:
            raise Throttled(address or bucket, recent[0] + self.window - now)

    def failed(self, bucket: str, now: float) -> None:
        recent = self._seen.pop(bucket, None) or collections.deque(maxlen=self.failures)
        recent.append(now)
        self._seen[bucket] = recent  # now the most recent
        while len(self._seen) > MAX_ADDRESSES:
            self._seen.popitem(last=False)


class BootRate:
    """At most a tenant's `boots-per-minute` VM boots (its starts and restarts) in any
    WINDOW seconds: a tenant cannot keep the host's CPUs booting VMs, each boot
    being the costliest thing it can ask for (0 stops its boots, suspending it)."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._boots: dict[str, collections.deque[float]] = {}

    def admit(self, tenant: Tenant, now: float) -> None:
        """Count a boot of `tenant`'s, or raise ResourceExhausted saying when it may boot again."""
        limit = tenant.quotas.boots_per_minute
        recent = self._boots.setdefault(tenant.id, collections.deque())
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        if len(recent) >= limit:
            when = (
                f"try again in {math.ceil(recent[0] + self.window - now)} s"
                if recent and limit
                else "ask hyperd's admin to raise it"
            )
            raise ResourceExhausted(
                f"quota exceeded: tenant {tenant.name} may boot {limit} VMs a minute (boots-per-minute)"
                f" and booted {len(recent)} in the last {self.window:.0f} s; {when}",
                hint="start fewer containers at once",
            )
        recent.append(now)

    def forget(self, tenant_id: str) -> None:
        self._boots.pop(tenant_id, None)
