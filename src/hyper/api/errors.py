"""Hyper's error categories as HTTP: the one table every HTTP front end uses."""

from __future__ import annotations

from typing import Any

from hyper.api.body import BodyTooLarge
from hyper.errors import Category, HyperError

HTTP_STATUS: dict[Category, int] = {
    Category.INVALID_ARGUMENT: 400,
    Category.NOT_FOUND: 404,
    Category.ALREADY_EXISTS: 409,
    Category.FAILED_PRECONDITION: 409,
    Category.PERMISSION_DENIED: 403,
    Category.UNAUTHENTICATED: 401,
    Category.RESOURCE_EXHAUSTED: 429,
    Category.DEADLINE_EXCEEDED: 504,
    Category.UNAVAILABLE: 503,
    Category.DATA_LOSS: 500,
    Category.INTERNAL: 500,
}


def error_body(error: HyperError) -> dict[str, Any]:
    return {"message": error.message, "hint": error.hint, "category": error.category.value}


def http_status(error: HyperError) -> int:
    """The HTTP status of `error`: its category's, except 413 for a body over the bound."""
    if isinstance(error, BodyTooLarge):
        return 413
    return HTTP_STATUS[error.category]
