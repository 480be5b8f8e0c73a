"""Request bodies of hyperd's APIs: bounded JSON (413 past 1 MiB, before the
rest is read), and hyperd's own container request checked field by field."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request

from hyper.api.body import MAX_JSON_BODY, BodyTooLarge, read_json_body
from hyper.api.errors import http_status
from hyper.daemon.daemon import create_request
from hyper.errors import InvalidArgument, ResourceExhausted
from hyper.runtime.settings import Settings


def request_with(chunks: list[bytes], headers: dict[str, str]) -> Any:
    """A request whose body arrives in `chunks`."""
    protocol = mock.Mock(_reading_paused=False)
    payload = streams.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    for chunk in chunks:
        payload.feed_data(chunk)
    payload.feed_eof()
    return make_mocked_request("POST", "/containers/create", headers=headers, payload=payload)


def test_a_declared_length_over_the_bound_is_refused_before_reading() -> None:
    async def check() -> None:
        request = request_with([b"{}"], {"Content-Length": str(1 << 30)})
        with pytest.raises(BodyTooLarge, match="1073741824 bytes") as refused:
            await read_json_body(request)
        assert request.content.at_eof() is False  # not a byte of it was read
        assert http_status(refused.value) == 413 and isinstance(refused.value, ResourceExhausted)

    asyncio.run(check())


def test_a_body_without_a_length_is_refused_once_past_the_bound() -> None:
    async def check() -> None:
        chunks = [b'{"Image": "' + b"a" * 65536] + [b"a" * 65536] * 40
        request = request_with(chunks, {"Transfer-Encoding": "chunked"})
        with pytest.raises(BodyTooLarge):
            await read_json_body(request)
        assert not request.content.at_eof()  # the rest stays unread

    asyncio.run(check())


def test_bodies_within_the_bound_are_read() -> None:
    async def check() -> None:
        document = b'{"Image": "' + b"a" * (MAX_JSON_BODY - 20) + b'"}'
        request = request_with([document], {"Content-Length": str(len(document))})
        assert len((await read_json_body(request))["Image"]) == MAX_JSON_BODY - 20
        empty = request_with([], {})
        assert await read_json_body(empty) is None
        broken = request_with([b"{nope"], {})
        with pytest.raises(InvalidArgument, match="not valid JSON"):
            await read_json_body(broken)

    asyncio.run(check())


def test_hyperds_container_request_refuses_unknown_fields() -> None:
    with pytest.raises(InvalidArgument, match="unknown field 'volumes'"):
        create_request({"image": "busybox", "volumes": ["/x"]}, Settings())


def test_hyperds_container_request_takes_the_configured_size_and_the_new_options() -> None:
    settings = Settings(default_memory_mib=1024, default_cpus=2)
    options = create_request({"image": "busybox"}, settings).options
    assert (options.memory_mib, options.cpus) == (1024, 2)
    body = {
        "image": "busybox",
        "memory_mib": 256,
        "stop_signal": "SIGUSR1",
        "stop_timeout": -1,
        "health_test": ["CMD", "true"],
        "health_interval": 0.5,
        "health_retries": 2,
    }
    options = create_request(body, settings).options
    assert (options.memory_mib, options.cpus, options.stop_signal, options.stop_timeout) == (
        256,
        2,
        "SIGUSR1",
        -1,
    )
    assert (options.health_test, options.health_interval, options.health_retries) == (("CMD", "true"), 0.5, 2)
    for bad in ({"health_interval": "5s"}, {"stop_timeout": -5}, {"health_retries": -1}, {"shm_size": -1}):
        with pytest.raises(InvalidArgument):
            create_request({"image": "busybox", **bad}, settings)
