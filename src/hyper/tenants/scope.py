"""Whose objects a request sees: everyone's (hyperd's admin) or one tenant's.

Every object a tenant can make (container, network, volume, image) records
its owner: the tenant's ID, or "" for the admin's. A request from a tenant
carries a Scope naming it, and each front end's lookups go through it, so a
foreign object is never found: it answers exactly as one that does not
exist. Requests on hyperd's local sockets carry ADMIN and see everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from hyper.storage.volumes import VOLUME_SEPARATOR
from hyper.tenants.model import Tenant

# A tenant's volumes live in the one volume store under names of their own: its
# ID, VOLUME_SEPARATOR, and the name it gave (or a random one, for an anonymous one).


@dataclass(frozen=True)
class Principal:
    """Who made a request: a tenant, through one of its keys (or a Keystone user)."""

    tenant: Tenant
    key_id: str  # an access key's ID, or `keystone:USER_ID`


@dataclass(frozen=True)
class Scope:
    principal: Principal | None = None  # None: hyperd's admin, on a local socket

    @property
    def is_admin(self) -> bool:
        return self.principal is None

    @property
    def owner(self) -> str | None:
        """The owner to look objects up among (None: everyone's)."""
        return None if self.principal is None else self.principal.tenant.id

    @property
    def creator(self) -> str:
        """The owner of what this request makes ("": the admin's)."""
        return "" if self.principal is None else self.principal.tenant.id

    def sees(self, owner: str) -> bool:
        return self.principal is None or owner == self.principal.tenant.id

    # -- volume names ----------------------------------------------------------------
    def volume_name(self, name: str) -> str:
        """The volume store's name for the volume this scope calls `name`."""
        return name if self.principal is None else f"{self.creator}{VOLUME_SEPARATOR}{name}"

    def shown_volume_name(self, stored: str) -> str | None:
        """The name this scope calls a stored volume by; None when it is not its own."""
        if self.principal is None:
            return stored
        prefix = f"{self.creator}{VOLUME_SEPARATOR}"
        return stored[len(prefix) :] if stored.startswith(prefix) else None


ADMIN = Scope()
