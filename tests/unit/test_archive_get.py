"""hyperd's `GET /containers/{id}/archive` (and HEAD, PUT's failure) against a
guest that misbehaves: a FakeArchiveGuest speaking the real agent protocol
over a socketpair, behind hyperd's real API apps on a unix socket. The client
must get either the filtered archive whole or a broken stream, the guest's
copy must be stopped, and `hyper cp` must write nothing outside its
destination and say what happened."""

from __future__ import annotations

import argparse
import asyncio
import io
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from hyper import errors
from hyper.archive.guest_tar import END_MARKER, GuestTarFilter
from hyper.cli.client import DaemonClient
from hyper.cli.copy_commands import copy_from_container
from tests.support.fake_guest import FILE_STAT, FakeArchiveGuest, FakeGuestHyperd
from tests.support.tars import archive, directory, file, hardlink, symlink

HONEST = archive(
    directory("data"), file("data/a", b"alpha"), symlink("data/l", "a"), hardlink("data/h", "data/a")
)
HOSTILE = archive(directory("data"), file("data/a", b"alpha"), file("beside", b"x"))


def run(
    guest: FakeArchiveGuest, scenario: Callable[[FakeGuestHyperd], Awaitable[None]], tmp_path: Path
) -> None:
    async def main() -> None:
        async with FakeGuestHyperd(tmp_path, guest) as hyperd:
            await asyncio.wait_for(scenario(hyperd), 60)

    asyncio.run(main())


def docker_http(hyperd: FakeGuestHyperd) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(hyperd.docker_socket))
    return httpx.AsyncClient(transport=transport, base_url="http://docker", timeout=30)


async def fetch(hyperd: FakeGuestHyperd, path: str) -> tuple[httpx.Response, bytes, Exception | None]:
    """The archive's status, the bytes that came, and how reading it ended."""
    received = bytearray()
    async with (
        docker_http(hyperd) as http,
        http.stream("GET", f"/containers/{hyperd.name}/archive", params={"path": path}) as response,
    ):
        try:
            async for chunk in response.aiter_raw():
                received += chunk
        except httpx.HTTPError as exc:
            return response, bytes(received), exc
    return response, bytes(received), None


def test_an_honest_archive_comes_through_filtered_and_whole(tmp_path: Path) -> None:
    async def scenario(hyperd: FakeGuestHyperd) -> None:
        response, body, failure = await fetch(hyperd, "/srv/data")
        assert response.status_code == 200 and failure is None
        expected = GuestTarFilter("data")
        assert body == expected.feed(HONEST) + expected.close()
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            assert tar.getnames() == ["data", "data/a", "data/l", "data/h"]

    run(FakeArchiveGuest(HONEST), scenario, tmp_path)


@pytest.mark.parametrize(
    ("guest", "cause"),
    [
        (FakeArchiveGuest(HOSTILE), "is not under 'data'"),
        (
            FakeArchiveGuest(archive(directory("data"), symlink("data/l", "/"), file("data/l/etc/x"))),
            "symlink",
        ),
        (FakeArchiveGuest(HONEST, status=1), "exit status 1"),
        (FakeArchiveGuest(HONEST[:-1024]), "stopped before its end"),
        (FakeArchiveGuest(HONEST, vanish_after=1000), "VM stopped or hyperd lost the connection"),
    ],
    ids=["beside", "through-symlink", "failed-in-guest", "no-end", "vm-killed"],
)
def test_a_failed_or_refused_copy_is_a_broken_stream(
    guest: FakeArchiveGuest, cause: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    async def scenario(hyperd: FakeGuestHyperd) -> None:
        response, body, failure = await fetch(hyperd, "/srv/data")
        assert response.status_code == 200
        # Cut, not ended: the chunked body has no end, the tar no end marker.
        assert isinstance(failure, httpx.RemoteProtocolError), failure
        assert not body.endswith(END_MARKER)

    run(guest, scenario, tmp_path)
    assert cause in capfd.readouterr().err  # hyperd's log says why


def test_a_refused_copy_is_stopped_in_the_guest(tmp_path: Path) -> None:
    guest = FakeArchiveGuest(archive(file("beside"), file("data/big", bytes(32 << 20))))

    async def scenario(hyperd: FakeGuestHyperd) -> None:
        _, body, failure = await fetch(hyperd, "/srv/data")
        assert isinstance(failure, httpx.RemoteProtocolError) and body == b""

    run(guest, scenario, tmp_path)
    assert "signal" in guest.requests


def test_a_malformed_stat_is_refused(tmp_path: Path) -> None:
    async def scenario(hyperd: FakeGuestHyperd) -> None:
        async with docker_http(hyperd) as http:
            answer = await http.head(f"/containers/{hyperd.name}/archive", params={"path": "/x"})
            assert answer.status_code == 500
            got = await http.get(f"/containers/{hyperd.name}/archive", params={"path": "/x"})
            assert "malformed reply" in got.json()["message"]

    run(FakeArchiveGuest(HONEST, stat={**FILE_STAT, "size": "huge"}), scenario, tmp_path)


def test_the_stat_is_named_by_hyperd_not_by_the_guest(tmp_path: Path) -> None:
    async def scenario(hyperd: FakeGuestHyperd) -> None:
        async with docker_http(hyperd) as http:
            answer = await http.head(f"/containers/{hyperd.name}/archive", params={"path": "/srv/data"})
        client = DaemonClient(hyperd.socket)
        try:
            stat = await asyncio.to_thread(client.path_stat, hyperd.name, "/srv/data")
        finally:
            client.close()
        assert answer.status_code == 200 and stat.name == "data"

    run(FakeArchiveGuest(HONEST, stat={**FILE_STAT, "name": "../../etc"}), scenario, tmp_path)


def test_the_client_holds_the_guest_back(tmp_path: Path) -> None:
    """A client that reads nothing fills hyperd's queue for the copy and stops
    the guest: nothing is buffered without bound in between."""
    size = 48 << 20
    guest = FakeArchiveGuest(archive(file("big", bytes(size))), stat=FILE_STAT)

    async def scenario(hyperd: FakeGuestHyperd) -> None:
        assert hyperd.daemon is not None
        agent = next(iter(hyperd.daemon.pods.values())).agent
        assert agent is not None
        async with (
            docker_http(hyperd) as http,
            http.stream("GET", f"/containers/{hyperd.name}/archive", params={"path": "/big"}) as response,
        ):
            chunks = response.aiter_raw()
            first = await chunks.__anext__()
            while not any(p.output.full() for p in agent._processes.values()):
                await asyncio.sleep(0.01)
            got = len(first) + sum([len(chunk) async for chunk in chunks])
        assert got == size + 512 + 1024

    run(guest, scenario, tmp_path)


def _cp(client: DaemonClient, source: str, destination: Path) -> None:
    container, path = source.split(":", 1)
    args = argparse.Namespace(follow_link=False)
    copy_from_container(client, container, path, str(destination), args)


@pytest.mark.parametrize(
    ("guest", "error", "words"),
    [
        (FakeArchiveGuest(HOSTILE), errors.DataLoss, "hyperd stopped it"),
        (FakeArchiveGuest(HONEST, vanish_after=1000), errors.DataLoss, "hyperd stopped it"),
        (FakeArchiveGuest(HONEST, status=2), errors.DataLoss, "cut short"),
    ],
    ids=["hostile", "vm-killed", "failed-in-guest"],
)
def test_hyper_cp_writes_nothing_when_the_copy_fails(
    guest: FakeArchiveGuest, error: type[errors.HyperError], words: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "data").mkdir()  # an existing directory the copy merges into
    (out / "data" / "kept").write_text("kept")

    async def scenario(hyperd: FakeGuestHyperd) -> None:
        client = DaemonClient(hyperd.socket)
        try:
            with pytest.raises(error, match=words) as raised:
                await asyncio.to_thread(_cp, client, f"{hyperd.name}:/srv/data", out)
            assert "container" not in raised.value.message.split(":", 1)[1].replace("the container's VM", "")
        finally:
            client.close()

    run(guest, scenario, tmp_path / "hyperd")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "hyperd" not in p.parts) == [
        "out",
        "out/data",
        "out/data/kept",
    ]


def test_hyper_cp_of_an_honest_copy(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()

    async def scenario(hyperd: FakeGuestHyperd) -> None:
        client = DaemonClient(hyperd.socket)
        try:
            await asyncio.to_thread(_cp, client, f"{hyperd.name}:/srv/data", out / "copy")
        finally:
            client.close()

    run(FakeArchiveGuest(HONEST), scenario, tmp_path / "hyperd")
    assert (out / "copy" / "a").read_bytes() == b"alpha"
    assert (out / "copy" / "h").stat().st_ino == (out / "copy" / "a").stat().st_ino
