"""One root error class for all of Hyper, with a small set of categories.

Front ends map a category to their own codes (CLI exit status, later HTTP and
gRPC) in one table each; nothing decides an error's kind by its message text.
The categories follow containerd's errdefs.
"""

from __future__ import annotations

import enum


class Category(enum.Enum):
    INVALID_ARGUMENT = "invalid argument"
    NOT_FOUND = "not found"
    ALREADY_EXISTS = "already exists"
    FAILED_PRECONDITION = "failed precondition"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline exceeded"
    PERMISSION_DENIED = "permission denied"
    UNAUTHENTICATED = "unauthenticated"
    RESOURCE_EXHAUSTED = "resource exhausted"
    DATA_LOSS = "data loss"
    INTERNAL = "internal"


class HyperError(Exception):
    """Root of every error Hyper raises on purpose.

    `message` says what went wrong; `hint` says what the user can do about it.
    """

    category: Category = Category.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class InvalidArgument(HyperError):
    category = Category.INVALID_ARGUMENT


class NotFound(HyperError):
    category = Category.NOT_FOUND


class AlreadyExists(HyperError):
    category = Category.ALREADY_EXISTS


class FailedPrecondition(HyperError):
    category = Category.FAILED_PRECONDITION


class Unavailable(HyperError):
    category = Category.UNAVAILABLE


class DeadlineExceeded(HyperError):
    category = Category.DEADLINE_EXCEEDED


class PermissionDenied(HyperError):
    category = Category.PERMISSION_DENIED


class Unauthenticated(HyperError):
    """A request without valid credentials (a tenant's key or token): HTTP 401."""

    category = Category.UNAUTHENTICATED


class ResourceExhausted(HyperError):
    category = Category.RESOURCE_EXHAUSTED


class DataLoss(HyperError):
    """Content did not match its digest or size, or a file is corrupt."""

    category = Category.DATA_LOSS


class InternalError(HyperError):
    category = Category.INTERNAL
