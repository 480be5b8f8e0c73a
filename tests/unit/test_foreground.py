"""The thin client of a foreground `hyper run` through hyperd (hyper.cli.foreground),
against a real aiohttp server on a unix socket standing in for hyperd's routes."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from hyper.cli.foreground import DaemonCalls, ExitWaiter
from hyper.errors import FailedPrecondition, NotFound, Unavailable


@asynccontextmanager
async def serving(routes: list[web.RouteDef]) -> AsyncIterator[Path]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    with tempfile.TemporaryDirectory(prefix="fg-", dir="/tmp") as scratch:
        socket = Path(scratch) / "hyperd.sock"
        site = web.UnixSite(runner, str(socket))
        await site.start()
        try:
            yield socket
        finally:
            await runner.cleanup()


def wait_route(exited: asyncio.Event, registered: asyncio.Event, answer: bytes) -> web.RouteDef:
    async def wait(request: web.Request) -> web.StreamResponse:
        # As hyperd's: the head now, the body at the exit.
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        registered.set()
        await exited.wait()
        await response.write(answer)
        await response.write_eof()
        return response

    return web.post("/docker/containers/{id}/wait", wait)


def test_the_wait_is_registered_before_register_returns_and_reports_the_exit() -> None:
    async def scenario() -> None:
        exited, registered = asyncio.Event(), asyncio.Event()
        answer = json.dumps({"StatusCode": 127, "Error": {"Message": "not found"}}).encode()
        async with serving([wait_route(exited, registered, answer)]) as socket:
            waiter = await ExitWaiter.register(socket, "c1", "removed")
            assert registered.is_set()  # hyperd holds the waiter before the start is sent
            exited.set()
            outcome = await waiter.result()
        assert (outcome.status, outcome.message) == (127, "not found")

    asyncio.run(scenario())


def test_a_wait_hyperd_ends_without_an_answer_is_unavailable() -> None:
    async def scenario() -> None:
        exited, registered = asyncio.Event(), asyncio.Event()
        async with serving([wait_route(exited, registered, b"")]) as socket:
            waiter = await ExitWaiter.register(socket, "c1", "next-exit")
            exited.set()
            with pytest.raises(Unavailable):
                await waiter.result()

    asyncio.run(scenario())


def error_route(method: Callable[..., web.RouteDef], path: str, status: int, body: object) -> web.RouteDef:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status)

    return method(path, answer)


def test_error_answers_map_to_hyper_errors_on_both_apis() -> None:
    async def scenario() -> None:
        routes = [
            error_route(
                web.post, "/v1/containers", 404, {"message": "no such image", "category": "not found"}
            ),
            error_route(web.post, "/docker/containers/{id}/start", 409, {"message": "is paused"}),
        ]
        async with serving(routes) as socket:
            calls = DaemonCalls(socket)
            with pytest.raises(NotFound, match="no such image"):
                await calls.call("POST", "/v1/containers", body={"image": "x"})
            with pytest.raises(FailedPrecondition, match="is paused"):
                await calls.call("POST", "/docker/containers/c1/start")
        with pytest.raises(Unavailable):
            await DaemonCalls(socket).call("GET", "/v1/ping")  # nobody answers any more

    asyncio.run(scenario())
