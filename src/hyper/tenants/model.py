"""What a tenant is: a name, an ID, quotas and access keys; and the texts that set them.

Pure: frozen values and the functions that parse and check them. A key's
secret is shown once, when it is made; hyperd keeps only its SHA-256 (to
check a bearer token) and a key derived from it (to check a signed
request), so a copy of hyperd's database gives no bearer token.

The secret is 32 random bytes: a hash needs no slowing down (no password
hashing) when what it hides cannot be guessed, and a check costs a
microsecond per request.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hyper.errors import InvalidArgument, Unauthenticated
from hyper.storage.mounts import parse_volume_size

TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
KEY_PREFIX = "HK"
KEY_ID = re.compile(r"HK[A-Z2-7]{16}")
SECRET_BYTES = 32
MAX_TOKEN_LENGTH = 256  # a bearer token longer than this is refused unread
SIGNING_CONTEXT = b"hyper-request-signing-v1"

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(\d+)\s*([bkmgt]?)(?:i?b)?", re.IGNORECASE)


@dataclass(frozen=True)
class Quotas:
    """What one tenant may hold at once. Containers hold their vCPUs and memory
    from creation to removal, running or not: a stopped container may start
    again at any time (its restart policy does it without asking)."""

    containers: int = 20
    vcpus: int = 16
    memory_mib: int = 32 * 1024
    volume_bytes: int = 10 << 30  # the sizes of its volumes, summed (each is bounded by its own file system)
    volume_size: int = 1 << 30  # not a bound: the size a volume gets when its maker gives none
    networks: int = 5  # besides its default network
    published_ports: int = 10
    api_requests: int = 32  # requests in progress at once (streams count while they last)
    boots_per_minute: int = 60  # VMs its starts and restarts may boot in any 60 s (0: none)

    def document(self) -> dict[str, int]:
        return {spec.name: getattr(self, spec.field) for spec in QUOTA_SPECS}


@dataclass(frozen=True)
class QuotaSpec:
    name: str  # as `--quota NAME=VALUE` says it
    field: str
    size: bool  # a size in bytes (or MiB) with units: 8g
    what: str  # the quota's name in errors


QUOTA_SPECS = (
    QuotaSpec("containers", "containers", False, "containers"),
    QuotaSpec("vcpus", "vcpus", False, "vCPUs"),
    QuotaSpec("memory", "memory_mib", True, "memory (MiB)"),
    QuotaSpec("volume-bytes", "volume_bytes", True, "volume bytes"),
    QuotaSpec("volume-size", "volume_size", True, "default volume size"),
    QuotaSpec("networks", "networks", False, "networks"),
    QuotaSpec("published-ports", "published_ports", False, "published ports"),
    QuotaSpec("api-requests", "api_requests", False, "concurrent API requests"),
    QuotaSpec("boots-per-minute", "boots_per_minute", False, "VM boots a minute"),
)
_SPEC_BY_NAME = {spec.name: spec for spec in QUOTA_SPECS}


def parse_size(text: str) -> int:
    """Bytes from `512m`, `8g`, `10GiB` or a plain number."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise InvalidArgument(f"invalid size {text!r}", hint="give bytes, or a number with k, m, g or t: 8g")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_quotas(texts: Iterable[str], base: Quotas | None = None) -> Quotas:
    """`--quota NAME=VALUE` texts applied to `base` (the defaults)."""
    changes: dict[str, int] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        spec = _SPEC_BY_NAME.get(name.strip().lower())
        if not sep or spec is None:
            raise InvalidArgument(
                f"invalid quota {text!r}",
                hint=f"give NAME=VALUE with NAME one of {', '.join(s.name for s in QUOTA_SPECS)}",
            )
        if spec.size:
            number = parse_size(value)
            if spec.field == "volume_size":
                number = parse_volume_size(value)  # a volume's own bounds
            if spec.field == "memory_mib":
                number = number >> 20 if number >= 1 << 20 else number  # 8g or 8192 (MiB)
        elif value.strip().isdigit():
            number = int(value)
        else:
            raise InvalidArgument(f"invalid quota {text!r}: {value!r} is not a whole number")
        changes[spec.field] = number
    return dataclasses.replace(base or Quotas(), **changes)


def quotas_from_document(doc: Mapping[str, Any]) -> Quotas:
    known = {spec.name: spec.field for spec in QUOTA_SPECS}
    return Quotas(**{known[k]: int(v) for k, v in doc.items() if k in known})


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    created: float
    quotas: Quotas = dataclasses.field(default_factory=Quotas)
    keystone_project: str | None = None  # the OpenStack project whose tokens act as this tenant

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "created": self.created,
            "quotas": self.quotas.document(),
            "keystone_project": self.keystone_project,
        }


def check_tenant_name(name: str) -> str:
    if not TENANT_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid tenant name {name!r}",
            hint="use lower-case letters, digits and _ . - (the first a letter or digit), at most 63",
        )
    return name


def new_tenant_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class AccessKey:
    """An access key as hyperd keeps it: no secret, only what checks one."""

    id: str
    tenant_id: str
    created: float
    secret_sha256: str  # hex: checks a bearer token
    signing_key: str  # hex: HMAC key of signed requests, derived from the secret
    revoked: float | None = None

    def document(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant_id, "created": self.created, "revoked": self.revoked}


@dataclass(frozen=True)
class NewKey:
    """A key just made: the only moment its secret exists outside the user's hands."""

    key: AccessKey
    secret: str

    @property
    def token(self) -> str:
        """What a client sends as `Authorization: Bearer TOKEN`."""
        return f"{self.key.id}.{self.secret}"


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def derive_signing_key(secret: str) -> bytes:
    """The HMAC key of signed requests: the client derives it from the secret too."""
    return hmac.new(secret.encode(), SIGNING_CONTEXT, hashlib.sha256).digest()


def new_key(tenant_id: str, now: float) -> NewKey:
    key_id = KEY_PREFIX + base64.b32encode(secrets.token_bytes(10)).decode()
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")
    key = AccessKey(
        id=key_id,
        tenant_id=tenant_id,
        created=now,
        secret_sha256=secret_sha256(secret),
        signing_key=derive_signing_key(secret).hex(),
    )
    return NewKey(key, secret)


def parse_token(token: str) -> tuple[str, str]:
    """A bearer token's key ID and secret; malformed ones are refused alike."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthenticated("the access token is malformed (too long)")
    key_id, dot, secret = token.partition(".")
    if not dot or not KEY_ID.fullmatch(key_id) or not secret:
        raise Unauthenticated(
            "the access token is malformed", hint="give KEY_ID.SECRET as `hyper tenant key create` printed it"
        )
    return key_id, secret


def secret_matches(key: AccessKey, secret: str) -> bool:
    return hmac.compare_digest(key.secret_sha256, secret_sha256(secret))


@dataclass(frozen=True)
class Usage:
    """What a tenant's containers have used, for billing: the sizes they were
    given times the seconds they ran (running or paused)."""

    vcpu_seconds: float = 0.0
    memory_mib_seconds: float = 0.0
    container_seconds: float = 0.0

    def plus(self, seconds: float, vcpus: int, memory_mib: int) -> Usage:
        seconds = max(0.0, seconds)
        return Usage(
            self.vcpu_seconds + seconds * vcpus,
            self.memory_mib_seconds + seconds * memory_mib,
            self.container_seconds + seconds,
        )

    def document(self) -> dict[str, float]:
        return {
            "vcpu_seconds": round(self.vcpu_seconds, 3),
            "memory_gib_seconds": round(self.memory_mib_seconds / 1024, 3),
            "container_seconds": round(self.container_seconds, 3),
        }
