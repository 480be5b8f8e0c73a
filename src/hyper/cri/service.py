"""One CRI service served from its protobuf descriptor, so that every RPC of the v1 API answers.

An implementation is any object with a coroutine (or, for a streaming RPC, an
async generator) per RPC, named in snake case (`run_pod_sandbox` for
RunPodSandbox). An RPC it lacks answers UNIMPLEMENTED with the reason the
`missing` table gives, so a kubelet or crictl learns what Hyper lacks rather
than meeting a silent gap; a new CRI release's RPCs answer the same way until
someone implements them. Errors cross the boundary once, here: a HyperError
becomes its category's gRPC status and anything else INTERNAL, logged.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from cri_api.v1 import api_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from hyper.cri.errors import grpc_status
from hyper.errors import HyperError

RUNTIME_SERVICE = "RuntimeService"
IMAGE_SERVICE = "ImageService"

Unary = Callable[[Any], Awaitable[Message]]
Streaming = Callable[[Any], AsyncIterator[Message]]


def method_name(rpc: str) -> str:
    """The implementation's name of an RPC: RunPodSandbox → run_pod_sandbox."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


def rpcs(service: str) -> list[MethodDescriptor]:
    return list(api_pb2.DESCRIPTOR.services_by_name[service].methods)


def unanswered(service: str, implementation: object, missing: Mapping[str, str]) -> list[str]:
    """RPCs of `service` that neither `implementation` serves nor `missing` explains."""
    return [
        m.name
        for m in rpcs(service)
        if not hasattr(implementation, method_name(m.name)) and m.name not in missing
    ]


def generic_handler(
    service: str, implementation: object, missing: Mapping[str, str]
) -> grpc.GenericRpcHandler:
    descriptor = api_pb2.DESCRIPTOR.services_by_name[service]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in descriptor.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        function = getattr(implementation, method_name(method.name), None)
        reason = missing.get(method.name, "not implemented yet")
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _streaming(method.full_name, function)
                if function
                else _unimplemented(method.full_name, reason),
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(method.full_name, function) if function else _unimplemented(method.full_name, reason),
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


def _unary(
    rpc: str, function: Unary
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        try:
            return await function(request)
        except HyperError as exc:
            await context.abort(grpc_status(exc), str(exc))
        except Exception as exc:  # a bug: the kubelet gets INTERNAL, hyperd's log the traceback
            print(f"hyperd: CRI {rpc} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            await context.abort(grpc.StatusCode.INTERNAL, f"{rpc} failed: {exc!r}")
        raise AssertionError("unreachable: abort raises")

    return handle


def _streaming(
    rpc: str, function: Streaming
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Message]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Message]:
        try:
            async for item in function(request):
                yield item
        except HyperError as exc:
            await context.abort(grpc_status(exc), str(exc))
        except Exception as exc:
            print(f"hyperd: CRI {rpc} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            await context.abort(grpc.StatusCode.INTERNAL, f"{rpc} failed: {exc!r}")

    return handle


def _unimplemented(
    rpc: str, reason: str
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        del request
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"hyper does not implement {rpc}: {reason}")

    return handle
