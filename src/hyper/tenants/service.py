"""TenantService: the one door hyperd's front ends go through for tenants.

- the admin's operations (`hyper tenant …` on hyperd's local socket):
  tenants, quotas, keys, usage, the audit log, public images;
- authentication of a tenant request: a bearer token, a signed request or a
  Keystone token, with failed logins throttled per address and key;
- what a tenant request may do: its create requests confined (its own
  owner, no host directories, volume names of its own, host ports from
  1024), admitted against its quotas; its requests in progress capped;
- metering of its containers' time (hyper.tenants.usage).

The daemon knows tenants only as an owner string on its records; everything
else about them is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import shutil
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from hyper.daemon.daemon import Daemon
from hyper.daemon.requests import CreateRequest
from hyper.errors import (
    FailedPrecondition,
    HyperError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from hyper.image import Image, ImageStore
from hyper.image.reference import parse_reference
from hyper.network.model import parse_publish
from hyper.network.request import request_for
from hyper.storage import mounts as storage_mounts
from hyper.storage.volumes import VOLUME_SEPARATOR, VolumeStore
from hyper.tenants import signing
from hyper.tenants.audit import AuditEntry, AuditLog
from hyper.tenants.images import ImageView
from hyper.tenants.keystone import KeystoneIdentity, KeystoneValidator
from hyper.tenants.model import (
    AccessKey,
    NewKey,
    Tenant,
    Usage,
    check_tenant_name,
    new_key,
    new_tenant_id,
    parse_quotas,
    parse_token,
    secret_matches,
)
from hyper.tenants.quotas import Claim, QuotaGate, RequestLimiter
from hyper.tenants.scope import Principal, Scope
from hyper.tenants.store import TenantStore
from hyper.tenants.throttle import BootRate, LoginThrottle
from hyper.tenants.usage import Meter

MIN_TENANT_HOST_PORT = 1024  # ports below are the host's own services'
SIGNED_CREDENTIAL = re.compile(r"Credential=(HK[A-Z2-7]{16})\b")
KEYSTONE_PREFIX = "keystone:"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a request presented, from its headers."""

    authorization: str = ""
    keystone_token: str = ""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


class TenantService:
    def __init__(self, daemon: Daemon, keystone: KeystoneValidator | None = None) -> None:
        self.daemon = daemon
        root = daemon.paths.state / "tenants"
        self.store = TenantStore(root / "tenants.db")
        self.audit = AuditLog(root / "audit.log")
        self.keystone = keystone
        self.replays = signing.ReplayCache()
        self.throttle = LoginThrottle()
        self.limiter = RequestLimiter()
        self.boots = BootRate()
        self.quotas = QuotaGate(self.held)
        self.meter = Meter(self.store, lambda: daemon.pods)
        # Read on the event loop by `held`, so that a volume's admission is atomic: one
        # indexed sum over a small table, as the tenant store's own reads.
        self.volumes = VolumeStore(daemon.paths.volumes, daemon.paths.containers)
        self._tenants = {t.id: t for t in self.store.tenants()}
        self._keys = {k.id: k for k in self.store.access_keys()}
        self._meter_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._meter_task = asyncio.create_task(self.meter.run(self.daemon.events, self.daemon.stopping))

    async def close(self) -> None:
        if self._meter_task is not None:
            self._meter_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._meter_task
        with contextlib.suppress(HyperError):
            self.meter.reconcile()
        self.audit.close()
        self.store.close()
        self.volumes.close()

    # -- tenants (the admin's) ---------------------------------------------------------
    def tenants(self) -> list[Tenant]:
        return sorted(self._tenants.values(), key=lambda t: t.created)

    def find(self, ref: str) -> Tenant:
        for tenant in self._tenants.values():
            if ref in (tenant.id, tenant.name):
                return tenant
        raise NotFound(f"no such tenant: {ref}", hint="`hyper tenant ls` lists them")

    async def create_tenant(
        self, name: str, quota_texts: Iterable[str] = (), keystone_project: str | None = None
    ) -> Tenant:
        tenant = Tenant(
            id=new_tenant_id(),
            name=check_tenant_name(name),
            created=time.time(),
            quotas=parse_quotas(quota_texts),
            keystone_project=keystone_project or None,
        )
        self.store.insert_tenant(tenant)
        self._tenants[tenant.id] = tenant
        await self.daemon.network.ensure_default(tenant.id)  # its own `bridge`, as Docker's
        return tenant

    def set_quotas(self, ref: str, quota_texts: Iterable[str]) -> Tenant:
        tenant = self.find(ref)
        updated = dataclasses.replace(tenant, quotas=parse_quotas(quota_texts, tenant.quotas))
        self.store.set_quotas(tenant.id, updated.quotas)
        self._tenants[tenant.id] = updated
        return updated

    def holdings(self, tenant: Tenant) -> dict[str, Any]:
        """What the tenant holds now, beside its quotas (for `hyper tenant inspect`)."""
        held = self.held(tenant.id)
        return {
            "containers": held.containers,
            "vcpus": held.vcpus,
            "memory": held.memory_mib,
            "volume-bytes": held.volume_bytes,
            "networks": held.networks,
            "published-ports": held.published_ports,
            "api-requests": self.limiter.active(tenant.id),
        }

    async def remove_tenant(self, ref: str, *, force: bool) -> Tenant:
        tenant = self.find(ref)
        mine = [pod for pod in self.daemon.pods.values() if pod.record.owner == tenant.id]
        networks = [n for n in self.daemon.network.networks(tenant.id) if not n.is_default]
        volumes = [v.name for v in self.volumes.all() if v.name.startswith(tenant.id + VOLUME_SEPARATOR)]
        if (mine or networks or volumes) and not force:
            raise FailedPrecondition(
                f"tenant {tenant.name} still has {len(mine)} containers, {len(networks)} networks"
                f" and {len(volumes)} volumes",
                hint="remove them first, or remove the tenant with --force",
            )
        for pod in mine:
            with contextlib.suppress(NotFound):
                await self.daemon.remove(pod.id, force=True, volumes=True)
        for name in volumes:
            with contextlib.suppress(NotFound):
                await asyncio.to_thread(self._remove_volume, name)
        for network in self.daemon.network.networks(tenant.id):
            with contextlib.suppress(HyperError):
                self.daemon.network.store.delete_network(network.id)
        self.meter.reconcile()
        self.store.delete_tenant(tenant.id)
        self._tenants.pop(tenant.id, None)
        self.boots.forget(tenant.id)
        for key_id in [k for k, key in self._keys.items() if key.tenant_id == tenant.id]:
            del self._keys[key_id]
        paths = self.daemon.paths.scoped(tenant.id)
        await asyncio.to_thread(shutil.rmtree, paths.images.parent, ignore_errors=True)
        await asyncio.to_thread(shutil.rmtree, paths.templates, ignore_errors=True)
        return tenant

    def _remove_volume(self, name: str) -> None:
        with VolumeStore(self.daemon.paths.volumes, self.daemon.paths.containers) as store:
            store.remove(name, force=True)

    # -- keys --------------------------------------------------------------------------
    def create_key(self, ref: str) -> NewKey:
        tenant = self.find(ref)
        made = new_key(tenant.id, time.time())
        self.store.insert_key(made.key)
        self._keys[made.key.id] = made.key
        return made

    def keys(self, ref: str) -> list[AccessKey]:
        tenant = self.find(ref)
        return sorted((k for k in self._keys.values() if k.tenant_id == tenant.id), key=lambda k: k.created)

    def revoke_key(self, ref: str, key_id: str) -> AccessKey:
        tenant = self.find(ref)
        key = self._keys.get(key_id)
        if key is None or key.tenant_id != tenant.id:
            raise NotFound(
                f"tenant {tenant.name} has no key {key_id}", hint="`hyper tenant key ls` lists them"
            )
        if key.revoked is None:
            key = dataclasses.replace(key, revoked=time.time())
            self.store.revoke_key(key.id, key.revoked or 0.0)
            self._keys[key.id] = key
        return key

    # -- usage, audit, public images --------------------------------------------------
    def usage(self, ref: str) -> Usage:
        tenant = self.find(ref)
        self.meter.reconcile()
        return self.store.usage(tenant.id)

    def read_audit(self, tenant_ref: str | None, since: float | None, limit: int | None) -> list[AuditEntry]:
        tenant_id = self.find(tenant_ref).id if tenant_ref else None
        return self.audit.read(tenant=tenant_id, since=since, limit=limit)

    def publish_image(self, name: str) -> tuple[str, Image]:
        image = ImageStore(self.daemon.paths.images).get(name)
        reference = str(parse_reference(name)) if not name.startswith("sha256:") else image.id
        self.store.publish_image(reference, image.id)
        return reference, image

    def unpublish_image(self, name: str) -> str:
        reference = str(parse_reference(name))
        if not self.store.unpublish_image(reference):
            raise NotFound(f"{name} is not a public image", hint="`hyper tenant public ls` lists them")
        return reference

    def image_view(self, scope: Scope) -> ImageView:
        paths = self.daemon.paths
        if scope.is_admin:
            return ImageView(ImageStore(paths.images))
        return ImageView(
            ImageStore(paths.scoped(scope.creator).images),
            ImageStore(paths.images),
            self.store.public_images(),
        )

    # -- authentication ----------------------------------------------------------------
    async def authenticate(
        self,
        credentials: Credentials,
        *,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]],
        source: str,
    ) -> tuple[Principal, signing.SignedRequest | None]:
        """Who sent the request; raises Unauthenticated (401) or Throttled (429)."""
        now = time.time()
        bucket = self._login_bucket(credentials, source)
        self.throttle.check(bucket, now, source)
        try:
            return await self._authenticate(credentials, method, path, query, now)
        except Unauthenticated:
            self.throttle.failed(bucket, now)
            raise

    def _login_bucket(self, credentials: Credentials, source: str) -> str:
        """Where a request's failed logins count (hyper.tenants.throttle): its address
        and the access key it names when that key exists, else its address alone."""
        scheme, _, value = credentials.authorization.partition(" ")
        if scheme.lower() == "bearer":
            key_id = value.strip().partition(".")[0]
        else:
            named = SIGNED_CREDENTIAL.search(credentials.authorization)
            key_id = named.group(1) if named and signing.is_signed(credentials.authorization) else ""
        if key_id in self._keys:
            return f"{source} {key_id}"
        if credentials.keystone_token and not credentials.authorization:
            return f"{source} keystone"
        return source

    async def _authenticate(
        self,
        credentials: Credentials,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]],
        now: float,
    ) -> tuple[Principal, signing.SignedRequest | None]:
        authorization = credentials.authorization
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                return self._bearer(value.strip()), None
            if signing.is_signed(authorization):
                signed = signing.parse_signed(credentials.headers)
                key = self._usable_key(signed.key_id)
                signing.check_date(signed, now)
                signing.verify(signed, bytes.fromhex(key.signing_key), method, path, query)
                self.replays.admit(signed, now)
                return Principal(self._tenants[key.tenant_id], key.id), signed
            raise Unauthenticated(
                "the Authorization scheme is not one hyperd takes",
                hint=f"send Bearer TOKEN or {signing.SCHEME}",
            )
        if credentials.keystone_token:
            if self.keystone is None:
                raise Unauthenticated("this hyperd takes no Keystone tokens", hint="send Bearer TOKEN")
            identity = await self._keystone(credentials.keystone_token, now)
            tenant = await self.tenant_for_project(identity)
            return Principal(tenant, KEYSTONE_PREFIX + identity.user_id), None
        raise Unauthenticated(
            "authentication required",
            hint="send Authorization: Bearer TOKEN (the docker CLI: HttpHeaders in config.json)",
        )

    def _usable_key(self, key_id: str) -> AccessKey:
        key = self._keys.get(key_id)
        if key is None or key.tenant_id not in self._tenants:
            raise Unauthenticated("the access key is not valid")
        return key

    def _bearer(self, token: str) -> Principal:
        key_id, secret = parse_token(token)
        key = self._keys.get(key_id)
        if key is None or key.tenant_id not in self._tenants or not secret_matches(key, secret):
            raise Unauthenticated("the access token is not valid")
        if key.revoked is not None:
            raise Unauthenticated(f"the access key {key.id} was revoked", hint="ask for a new key")
        return Principal(self._tenants[key.tenant_id], key.id)

    async def _keystone(self, token: str, now: float) -> KeystoneIdentity:
        assert self.keystone is not None
        cached = self.keystone.cached(token, now)
        return cached if cached is not None else await asyncio.to_thread(self.keystone.validate, token)

    async def tenant_for_project(self, identity: KeystoneIdentity) -> Tenant:
        """The tenant of a Keystone project, made at the project's first request."""
        for tenant in self._tenants.values():
            if tenant.keystone_project == identity.project_id:
                return tenant
        name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in identity.project_name.lower())
        name = name.lstrip("_.-")[:40] or "project"
        if any(t.name == name for t in self._tenants.values()):
            name = f"{name}-{identity.project_id[:8]}"
        return await self.create_tenant(name, keystone_project=identity.project_id)

    # -- what a tenant's requests may do -----------------------------------------------
    def held(self, tenant_id: str) -> Claim:
        """What the tenant holds now, by hyperd's records."""
        held = Claim()
        for pod in self.daemon.pods.values():
            if pod.record.owner == tenant_id:
                held = held.plus(claim_of(pod.options))
        networks = [n for n in self.daemon.network.networks(tenant_id) if not n.is_default]
        volume_bytes = self.volumes.total_size(tenant_id + VOLUME_SEPARATOR)  # anonymous ones too
        return dataclasses.replace(held, networks=len(networks), volume_bytes=volume_bytes)

    def confine(self, scope: Scope, request: CreateRequest) -> CreateRequest:
        """A tenant's create request as it may run: its owner, no host directory,
        its own volume names, host ports from MIN_TENANT_HOST_PORT."""
        if scope.principal is None:
            return request
        options = request.options
        mounts = []
        for text in options.mounts:
            mount = storage_mounts.parse_mount(text)
            if mount.type is storage_mounts.MountType.BIND:
                raise PermissionDenied(
                    f"a tenant cannot mount a host directory ({mount.source})",
                    hint="use a named volume (-v NAME:/path) or a tmpfs",
                )
            if mount.type is storage_mounts.MountType.VOLUME and mount.source:
                mount = dataclasses.replace(mount, source=scope.volume_name(mount.source))
            mounts.append(mount.canonical())
        for text in options.publish:
            for port in parse_publish(text):
                if port.host_port and port.host_port < MIN_TENANT_HOST_PORT:
                    raise PermissionDenied(
                        f"a tenant cannot publish host port {port.host_port}",
                        hint=f"publish on {MIN_TENANT_HOST_PORT} or above, or leave the host port out",
                    )
        options = dataclasses.replace(options, owner=scope.creator, mounts=tuple(mounts))
        return dataclasses.replace(request, options=options)

    def size_volumes(
        self, scope: Scope, request: CreateRequest, image_volumes: Iterable[str]
    ) -> tuple[CreateRequest, int]:
        """A tenant's (confined) create request with each volume it would make given a
        size, the image's VOLUME paths among them (anonymous volumes, made explicit
        here); and the bytes those new volumes take of its quota. Blocking (reads the
        volume store).

        A named volume that exists keeps its own size and takes nothing more; the
        daemon makes none of a tenant's volumes without a size (hyper.storage.plan),
        so one removed after this count is refused, not made unaccounted."""
        if scope.principal is None:
            return request, 0
        default = scope.principal.tenant.quotas.volume_size
        mounts, claimed = [], 0
        parsed = storage_mounts.check_unique(storage_mounts.parse_mount(m) for m in request.options.mounts)
        with VolumeStore(self.daemon.paths.volumes, self.daemon.paths.containers) as store:
            for mount in storage_mounts.with_image_volumes(parsed, image_volumes):
                sized = mount
                if mount.type is storage_mounts.MountType.VOLUME:
                    if mount.source and store.exists(mount.source):
                        sized = dataclasses.replace(mount, volume_size=None)
                    else:
                        sized = dataclasses.replace(mount, volume_size=mount.volume_size or default)
                        claimed += sized.volume_size or 0
                mounts.append(sized.canonical())
        options = dataclasses.replace(request.options, mounts=tuple(mounts))
        return dataclasses.replace(request, options=options), claimed

    def admit_boot(self, scope: Scope) -> None:
        """A tenant's request is to boot a VM (a start or restart): within its boots-per-minute.
        (Restarts by a restart policy are hyperd's, not the tenant's requests: not counted.)"""
        if scope.principal is not None:
            self.boots.admit(scope.principal.tenant, time.monotonic())

    @contextlib.asynccontextmanager
    async def admitted(self, scope: Scope, claim: Claim) -> AsyncIterator[None]:
        """Hold `claim` against the tenant's quotas while the work inside runs."""
        if scope.principal is None:
            yield
            return
        async with self.quotas.admit(scope.principal.tenant, claim):
            yield

    def record(
        self, principal: Principal, *, action: str, object: str, result: int, source: str
    ) -> AuditEntry:
        return self.audit.append(
            tenant=principal.tenant.id,
            tenant_name=principal.tenant.name,
            key=principal.key_id,
            action=action,
            object=object,
            result=result,
            source=source,
        )


def claim_of(options: Any, image_exposed: Iterable[str] = ()) -> Claim:
    """What a container with these RunOptions holds against its tenant's quotas."""
    try:
        ports = len(request_for(options, image_exposed).ports)
    except InvalidArgument:
        ports = 0  # a record whose options no longer parse publishes nothing
    return Claim(containers=1, vcpus=options.cpus, memory_mib=options.memory_mib, published_ports=ports)
