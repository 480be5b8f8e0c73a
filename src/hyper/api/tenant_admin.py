"""hyperd's API for its admin's `hyper tenant` commands (on the local socket only).

Tenants, their quotas and keys, usage, the audit log and public images
(docs/hyperd-api.md, Tenants). A key's secret is in the answer that makes
it, and nowhere ever after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

from aiohttp import web

from hyper.api.body import read_json_body
from hyper.errors import InvalidArgument
from hyper.tenants.audit import AuditLog
from hyper.tenants.model import Tenant
from hyper.tenants.service import TenantService

ADMIN_TENANTS = web.AppKey("admin-tenants", TenantService)


def _service(request: web.Request) -> TenantService:
    return request.app[ADMIN_TENANTS]


async def _body(request: web.Request) -> dict[str, Any]:
    body = await read_json_body(request)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return body


def _strings(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{key!r} must be a list of strings")
    return value


def _number(request: web.Request, name: str) -> float | None:
    text = request.query.get(name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"{name}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidArgument(f"{name}={text!r} is not a finite number")
    return value


def _tenant_document(service: TenantService, tenant: Tenant) -> dict[str, Any]:
    return tenant.document() | {"holds": service.holdings(tenant)}


async def list_tenants(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    return web.json_response([_tenant_document(service, t) for t in service.tenants()])


async def create_tenant(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    name = body.get("name")
    project = body.get("keystone_project")
    if not isinstance(name, str) or (project is not None and not isinstance(project, str)):
        raise InvalidArgument("'name' (and 'keystone_project') must be strings")
    service = _service(request)
    tenant = await service.create_tenant(name, _strings(body, "quotas"), project)
    return web.json_response(_tenant_document(service, tenant), status=201)


async def inspect_tenant(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    tenant = service.find(request.match_info["ref"])
    document = _tenant_document(service, tenant) | {
        "usage": service.usage(tenant.id).document(),
        "keys": [key.document() for key in service.keys(tenant.id)],
    }
    return web.json_response(document)


async def set_quotas(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    service = _service(request)
    tenant = service.set_quotas(request.match_info["ref"], _strings(body, "quotas"))
    return web.json_response(_tenant_document(service, tenant))


async def remove_tenant(request: web.Request) -> web.StreamResponse:
    force = request.query.get("force", "0").lower() in ("1", "true", "yes")
    tenant = await _service(request).remove_tenant(request.match_info["ref"], force=force)
    return web.json_response(tenant.document())


async def create_key(request: web.Request) -> web.StreamResponse:
    made = _service(request).create_key(request.match_info["ref"])
    document = made.key.document() | {"secret": made.secret, "token": made.token}
    return web.json_response(document, status=201)


async def list_keys(request: web.Request) -> web.StreamResponse:
    keys = _service(request).keys(request.match_info["ref"])
    return web.json_response([key.document() for key in keys])


async def revoke_key(request: web.Request) -> web.StreamResponse:
    key = _service(request).revoke_key(request.match_info["ref"], request.match_info["key"])
    return web.json_response(key.document())


async def usage(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    ref = request.query.get("tenant")
    tenants = [service.find(ref)] if ref else service.tenants()
    return web.json_response(
        [{"id": t.id, "name": t.name, **service.usage(t.id).document()} for t in tenants]
    )


async def audit(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    limit = _number(request, "limit")
    if request.query.get("verify", "0").lower() in ("1", "true", "yes"):
        log: AuditLog = service.audit
        count = await asyncio.to_thread(log.verify)
        return web.json_response({"verified": count, "path": str(log.path)})
    entries = await asyncio.to_thread(
        service.read_audit,
        request.query.get("tenant") or None,
        _number(request, "since"),
        None if limit is None else int(limit),
    )
    return web.json_response([dataclasses.asdict(entry) for entry in entries])


async def list_public(request: web.Request) -> web.StreamResponse:
    public = _service(request).store.public_images()
    return web.json_response([{"reference": ref, "image_id": image} for ref, image in public.items()])


async def publish(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    name = body.get("image")
    if not isinstance(name, str) or not name:
        raise InvalidArgument("'image' must name an image of hyperd's own store")
    reference, image = await asyncio.to_thread(_service(request).publish_image, name)
    return web.json_response({"reference": reference, "image_id": image.id}, status=201)


async def unpublish(request: web.Request) -> web.StreamResponse:
    reference = _service(request).unpublish_image(request.match_info["name"])
    return web.json_response({"reference": reference})


def add_routes(app: web.Application, service: TenantService) -> None:
    app[ADMIN_TENANTS] = service
    app.add_routes(
        [
            web.get("/v1/tenants", list_tenants),
            web.post("/v1/tenants", create_tenant),
            web.get("/v1/tenant-usage", usage),
            web.get("/v1/tenant-audit", audit),
            web.get("/v1/public-images", list_public),
            web.post("/v1/public-images", publish),
            web.delete("/v1/public-images/{name:.+}", unpublish),
            web.get("/v1/tenants/{ref}", inspect_tenant),
            web.post("/v1/tenants/{ref}/quotas", set_quotas),
            web.delete("/v1/tenants/{ref}", remove_tenant),
            web.post("/v1/tenants/{ref}/keys", create_key),
            web.get("/v1/tenants/{ref}/keys", list_keys),
            web.delete("/v1/tenants/{ref}/keys/{key}", revoke_key),
        ]
    )
