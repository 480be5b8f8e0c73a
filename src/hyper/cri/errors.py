"""Hyper's error categories as gRPC status codes: the one table the CRI front end uses."""

from __future__ import annotations

import grpc

from hyper.errors import Category, HyperError

GRPC_STATUS: dict[Category, grpc.StatusCode] = {
    Category.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Category.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Category.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Category.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Category.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Category.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Category.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Category.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Category.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Category.DATA_LOSS: grpc.StatusCode.DATA_LOSS,
    Category.INTERNAL: grpc.StatusCode.INTERNAL,
}


def grpc_status(error: HyperError) -> grpc.StatusCode:
    return GRPC_STATUS[error.category]
