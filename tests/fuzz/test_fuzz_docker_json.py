"""Fuzzing the JSON bodies of the Docker Engine API (and hyperd's own create):
whatever a client posts, the answer is a 4xx that says what is wrong, never
a 500 from an exception nobody meant. The parsing functions are fuzzed
directly, and the handlers through hyperd's real apps on a unix socket, over
a real Daemon holding one running container (its agent a fake guest, so that
exec bodies get past the lookup of their container)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyper.api.docker import convert
from hyper.api.docker.execs import _console_size
from hyper.api.errors import HTTP_STATUS
from hyper.daemon import daemon as hyperd_daemon
from hyper.daemon.policy import RestartPolicy
from hyper.daemon.requests import CreateRequest
from hyper.errors import HyperError
from hyper.runtime.settings import Settings
from tests.fuzz.conftest import corpus, fuzz_settings
from tests.fuzz.strategies import docker_create_bodies, json_values
from tests.support.fake_guest import FakeArchiveGuest, FakeGuestHyperd
from tests.support.tars import END


def client_error(exc: HyperError) -> bool:
    return HTTP_STATUS[exc.category] < 500


# ---- the parsing functions -------------------------------------------------------------------


def check_create(body: Any, name: str | None) -> None:
    if not isinstance(body, dict):
        return  # json_body refuses what is not an object before any of these run
    for front_end in ("docker", "hyperd"):
        try:
            parsed = (
                convert.create_request(body, name)
                if front_end == "docker"
                else hyperd_daemon.create_request(body, Settings())
            )
            assert isinstance(parsed, CreateRequest)
        except HyperError as exc:
            assert client_error(exc), exc


@pytest.mark.parametrize(
    "seed", [p for p in corpus("docker_json") if p.suffix == ".json"], ids=lambda p: p.name
)
def test_corpus_bodies(seed: Path) -> None:
    check_create(json.loads(seed.read_text()), None)


@fuzz_settings(400)
@given(docker_create_bodies, st.none() | st.text(max_size=30))
def test_create_bodies_are_refused_with_client_errors(body: Any, name: str | None) -> None:
    check_create(body, name)


@fuzz_settings(200)
@given(json_values)
def test_restart_policies_and_console_sizes(document: Any) -> None:
    try:
        RestartPolicy.from_document(document)
    except HyperError as exc:
        assert client_error(exc), exc
    rows, cols = _console_size({"ConsoleSize": document})
    assert rows > 0 and cols > 0


# ---- the handlers, over HTTP ------------------------------------------------------------------


class ServedHyperd:
    """A FakeGuestHyperd on an event loop of its own thread, for synchronous clients."""

    def __init__(self, root: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-hyperd", daemon=True)
        self.hyperd = FakeGuestHyperd(root, FakeArchiveGuest(END))

    def __enter__(self) -> ServedHyperd:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.hyperd.__aenter__(), self.loop).result(60)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.hyperd.__aexit__(None, None, None), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()

    def client(self, socket: Path) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(socket))
        return httpx.Client(transport=transport, base_url="http://hyperd", timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, httpx.Client, str]]:
    """(a client of the Docker API, one of hyperd's own, the container's name)."""
    with ServedHyperd(tmp_path_factory.mktemp("api")) as server:
        docker, own = server.client(server.hyperd.docker_socket), server.client(server.hyperd.socket)
        with docker, own:
            yield docker, own, server.hyperd.name


raw_bodies = st.one_of(
    docker_create_bodies.map(lambda body: json.dumps(body).encode()),
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b"[" * 5000, b'{"Image": "\xff"}']),
)


def check_status(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])


@pytest.mark.parametrize("seed", corpus("docker_json"), ids=lambda p: p.name)
def test_corpus_over_http(served: tuple[httpx.Client, httpx.Client, str], seed: Path) -> None:
    docker, own, name = served
    body = seed.read_bytes()
    check_status(docker.post("/containers/create", content=body))
    check_status(docker.post(f"/containers/{name}/exec", content=body))
    check_status(own.post("/v1/containers", content=body))


@fuzz_settings(120)
@given(raw_bodies, raw_bodies, st.text(max_size=20), st.text(max_size=40))
def test_handlers_answer_client_errors(
    served: tuple[httpx.Client, httpx.Client, str], create: bytes, exec_body: bytes, name: str, filters: str
) -> None:
    docker, own, container = served
    check_status(docker.post("/containers/create", params={"name": name}, content=create))
    check_status(docker.post(f"/containers/{container}/exec", content=exec_body))
    check_status(own.post("/v1/containers", content=create))
    check_status(docker.get("/containers/json", params={"filters": filters, "all": "1"}))
