"""`create`, `start`, `restart`, `pause`, `rename`, `exec`, `attach`, `inspect`,
`top`, `stats` and `cp` without a daemon: argument parsing, the Docker stream
client (against a fake hijacking server on a unix socket), the frame
demultiplexer, stats arithmetic and formatting, `--format` templates, and
cp's path rules (its extraction: test_archive_extract.py)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import struct
import tarfile
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from hyper import errors
from hyper.archive.extract import extract_archive
from hyper.cli import container_commands, run_commands
from hyper.cli.client import (
    ContainerCreate,
    ContainerDetails,
    ExecConfig,
    PathStat,
    ProcessTable,
    StatsSample,
    docker_error,
)
from hyper.cli.copy_commands import (
    CopyEnd,
    plan_copy,
    split_copy_arg,
    split_path_dir_entry,
    write_archive,
)
from hyper.cli.inspect_commands import (
    bytes_size,
    compile_template,
    cpu_percent,
    format_stats_table,
    go_format,
    go_json,
    human_size,
    idle_row,
    memory_percent,
    memory_usage,
    stats_row,
)
from hyper.cli.main import build_parser, main
from hyper.cli.run_commands import client_env
from hyper.cli.streams import FrameDemultiplexer, open_hijacked, parse_response_head, relay
from hyper.runtime.detach import DetachScanner, parse_detach_keys
from hyper.runtime.stdio import Attachment
from tests.unit.test_container_commands import Console, FakeClient

MUX = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(data)) + data


# ---- argument parsing --------------------------------------------------------------------


def test_create_shares_runs_options() -> None:
    args = _parse(
        "create", "--name", "web", "-it", "--rm", "-e", "A=1", "--restart", "on-failure:2", "busybox", "sh"
    )
    assert (args.name, args.tty, args.interactive, args.rm, args.env) == ("web", True, True, True, ["A=1"])
    assert (args.restart, args.image, args.command) == ("on-failure:2", "busybox", ["sh"])
    assert not hasattr(args, "detach")  # create never starts


def test_exec_attach_and_start_flags() -> None:
    args = _parse("exec", "-it", "-e", "K=V", "-w", "/tmp", "-u", "1000", "web", "sh", "-c", "exit 3")
    assert (args.interactive, args.tty, args.env, args.workdir, args.user) == (
        True,
        True,
        ["K=V"],
        "/tmp",
        "1000",
    )
    assert (args.container, args.command, args.args) == ("web", "sh", ["-c", "exit 3"])
    assert _parse("exec", "web", "ls", "-e", "x").args == ["-e", "x"]  # the command's own flags
    assert _parse("attach", "--sig-proxy=false", "web").sig_proxy is False
    assert _parse("attach", "--sig-proxy=true", "web").sig_proxy is True
    assert _parse("attach", "web", "--sig-proxy").sig_proxy is True
    assert _parse("attach", "web").sig_proxy is True
    args = _parse("start", "-ai", "--detach-keys", "ctrl-x", "web")
    assert (args.attach, args.interactive, args.detach_keys, args.containers) == (
        True,
        True,
        "ctrl-x",
        ["web"],
    )
    assert _parse("restart", "-t", "3", "a", "b").timeout == 3
    assert _parse("stats", "--no-stream").containers == []
    assert _parse("cp", "-aL", "web:/x", ".").archive is True


def test_bad_arguments_are_dockers_125() -> None:
    assert main(["attach", "--sig-proxy=maybe", "web"]) == 125
    assert main(["exec", "web"]) == 125  # no command
    assert main(["rename", "web"]) == 125


def test_bare_env_names_take_the_clients_values() -> None:
    assert client_env(["A=1", "HOME", "UNSET", "B="], {"HOME": "/root"}) == (
        "A=1",
        "HOME=/root",
        "UNSET",
        "B=",
    )
    with pytest.raises(errors.InvalidArgument):
        client_env(["=x"], {})


# ---- create, run -d and the multi-container commands against a fake client -------------------


class LifecycleClient(FakeClient):
    def start(self, ref: str) -> bool:
        self._act("start", ref)
        return True

    def restart(self, ref: str, *, timeout: int | None = None) -> None:
        self._act("restart", ref, str(timeout))

    def pause(self, ref: str) -> None:
        self._act("pause", ref)

    def unpause(self, ref: str) -> None:
        self._act("unpause", ref)

    def rename(self, ref: str, name: str) -> None:
        self._act("rename", ref, name)


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> LifecycleClient:
    fake = LifecycleClient()
    monkeypatch.setattr(container_commands, "connect_or_start", lambda paths, stderr: fake)
    monkeypatch.setattr("hyper.cli.client.connect_or_start", lambda paths, stderr: fake)
    monkeypatch.setattr(run_commands, "ensure_image", lambda text, policy, ctx, quiet, platform=None: None)
    return fake


def test_create_asks_hyperd_not_to_start(client: LifecycleClient) -> None:
    console = Console()
    assert console.run("create", "-it", "--restart", "on-failure:2", "--name", "c", "busybox", "sh") == 0
    assert console.out.getvalue() == ("c" * 64 + "\n").encode()
    (request,) = client.created
    assert (request.start, request.tty, request.interactive, request.restart, request.name) == (
        False,
        True,
        True,
        "on-failure:2",
        "c",
    )
    body = request.to_json()
    assert (body["start"], body["restart"], body["tty"], body["interactive"], body["remove"]) == (
        False,
        "on-failure:2",
        True,
        True,
        False,
    )


def test_run_detached_passes_rm_and_the_terminal(
    client: LifecycleClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROM_CLIENT", "yes")
    assert Console().run("run", "-d", "--rm", "-i", "-e", "FROM_CLIENT", "busybox", "cat") == 0
    (request,) = client.created
    assert request.env == ("FROM_CLIENT=yes",)
    assert (request.start, request.remove, request.interactive, request.tty) == (True, True, True, False)
    assert request.to_json()["remove"] is True


def test_lifecycle_commands_act_on_each_and_report_failures(client: LifecycleClient) -> None:
    console = Console()
    assert console.run("start", "a", "missing", "b") == 1
    assert console.out.getvalue() == b"a\nb\n"
    assert console.err.getvalue() == b"hyper: no such container: missing\n"
    console = Console()
    assert console.run("restart", "-t", "2", "a") == 0
    assert console.run("pause", "a") == 0
    assert console.run("unpause", "a") == 0
    assert console.run("rename", "a", "z") == 0
    assert console.out.getvalue() == b"a\na\na\n"  # rename prints nothing
    assert client.calls[-4:] == [
        ("restart", "a", "2"),
        ("pause", "a"),
        ("unpause", "a"),
        ("rename", "a", "z"),
    ]


def test_start_attaches_one_container_only(client: LifecycleClient) -> None:
    with pytest.raises(errors.InvalidArgument, match="multiple containers"):
        Console().run("start", "-a", "a", "b")


def test_create_request_round_trip() -> None:
    request = ContainerCreate(image="busybox", restart="always", start=False)
    assert request.to_json()["restart"] == "always"
    assert request.to_json()["start"] is False


# ---- detach keys ----------------------------------------------------------------------------


def test_detach_keys() -> None:
    assert parse_detach_keys(None) == b"\x10\x11"
    assert parse_detach_keys("ctrl-a,x,ctrl-[") == b"\x01x\x1b"
    for bad in ("ctrl-1", "ctrl", "abc"):
        with pytest.raises(errors.InvalidArgument):
            parse_detach_keys(bad)
    scanner = DetachScanner(b"\x10\x11")
    assert scanner.feed(b"ab\x10") == (b"ab", False)
    assert scanner.feed(b"c") == (b"\x10c", False)  # a partial match was ordinary input
    assert scanner.feed(b"\x10") == (b"", False)
    assert scanner.feed(b"\x11rest") == (b"", True)


# ---- Docker API documents and errors ---------------------------------------------------------


def test_docker_errors_map_by_status() -> None:
    cases = {
        400: errors.InvalidArgument,
        404: errors.NotFound,
        409: errors.FailedPrecondition,
        418: errors.InvalidArgument,
        500: errors.InternalError,
        501: errors.Unavailable,
    }
    for status, kind in cases.items():
        error = docker_error(status, json.dumps({"message": f"m{status}"}).encode(), "fallback")
        assert type(error) is kind and error.message == f"m{status}"
    assert docker_error(404, b"", "Could not find the file /x").message == "Could not find the file /x"
    assert docker_error(502, b"<html>bad gateway", "").message == "<html>bad gateway"


def test_documents() -> None:
    details = ContainerDetails.from_json(
        {
            "Id": "a" * 64,
            "Name": "/web",
            "State": {"Status": "running", "Running": True, "Paused": False},
            "Config": {"Tty": True, "OpenStdin": True},
            "RestartCount": 2,
        }
    )
    assert (details.name, details.running, details.tty, details.open_stdin, details.restart_count) == (
        "web",
        True,
        True,
        True,
        2,
    )
    with pytest.raises(errors.InternalError):
        ContainerDetails.from_json({"Id": 3})
    with pytest.raises(errors.InternalError, match="rows"):
        ProcessTable.from_json({"Titles": ["PID", "CMD"], "Processes": [["1"]]})
    header = base64.b64encode(
        json.dumps({"name": "d", "size": 4096, "mode": (1 << 31) | 0o755, "linkTarget": ""}).encode()
    ).decode()
    stat_ = PathStat.from_header(header)
    assert (stat_.name, stat_.is_dir, stat_.is_symlink) == ("d", True, False)
    with pytest.raises(errors.InternalError):
        PathStat.from_header("not base64!")
    config = ExecConfig(("sh",), env=("A=1",), tty=True, stdin=True, detach_keys="ctrl-x")
    assert config.to_json() == {
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": True,
        "Env": ["A=1"],
        "Cmd": ["sh"],
        "WorkingDir": "",
        "User": "",
        "DetachKeys": "ctrl-x",
    }
    detached = ExecConfig(("sh",), stdin=True, detach=True).to_json()
    assert (detached["AttachStdin"], detached["AttachStdout"]) == (False, False)


# ---- the stream client: frames, answer heads, a fake hijacking server --------------------------


def test_demultiplexer_splits_frames_fed_in_pieces() -> None:
    stream = frame(1, b"out") + frame(2, b"err") + frame(0, b"in") + frame(1, b"")
    demux = FrameDemultiplexer()
    got = []
    for i in range(len(stream)):
        got += demux.feed(stream[i : i + 1])
    demux.finish()
    assert [(s, d) for s, d in got if d] == [(1, b"out"), (2, b"err"), (1, b"in")]


def test_demultiplexer_refuses_what_is_not_a_frame_stream() -> None:
    with pytest.raises(errors.DataLoss, match="unknown stream"):
        FrameDemultiplexer().feed(frame(7, b"x"))
    with pytest.raises(errors.DataLoss, match="more than"):
        FrameDemultiplexer().feed(struct.pack(">BxxxI", 1, 1 << 30))
    with pytest.raises(errors.InternalError, match="boom"):
        FrameDemultiplexer().feed(frame(3, b"boom"))
    demux = FrameDemultiplexer()
    demux.feed(frame(1, b"abc")[:6])
    with pytest.raises(errors.DataLoss, match="inside a frame"):
        demux.finish()


def test_parse_response_head() -> None:
    head = parse_response_head(
        b"HTTP/1.1 101 UPGRADED\r\nContent-Type: " + MUX.encode() + b"\r\nUpgrade: tcp\r\n\r\n"
    )
    assert (head.status, head.reason, head.headers["content-type"]) == (101, "UPGRADED", MUX)
    for bad in (b"SMTP 220 hi\r\n\r\n", b"HTTP/1.1 abc x\r\n\r\n", b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n"):
        with pytest.raises(errors.InternalError):
            parse_response_head(bad)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler, test: Callable[[Path], Awaitable[None]]) -> None:
    """A one-shot fake hyperd on a unix socket: reads the request head and body, then `handler`."""
    seen: list[bytes] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            parse_response_head(b"HTTP/1.1 200 x\r\n" + head.split(b"\r\n", 1)[1]).headers["content-length"]
        )
        seen.append(head + await reader.readexactly(length))
        await handler(reader, writer)
        writer.close()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hyperd.sock"
        server = await asyncio.start_unix_server(accept, str(path))
        async with server:
            await test(path)
    assert seen and seen[0].startswith(b"POST /docker/exec/e1/start HTTP/1.1\r\n")
    assert b"Upgrade: tcp\r\n" in seen[0] and seen[0].endswith(b'{"Detach": false}')


def _upgrade(content_type: str) -> bytes:
    head = f"HTTP/1.1 101 UPGRADED\r\nContent-Type: {content_type}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
    return head.encode() + b"\r\n"


class Pipes:
    """stdin, stdout and stderr of a relay as pipes."""

    def __init__(self, stdin: bytes) -> None:
        self.stdin_r, stdin_w = os.pipe()
        os.write(stdin_w, stdin)
        os.close(stdin_w)
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()
        self.attachment = Attachment(self.stdin_r, self.out_w, self.err_w)

    def read(self) -> tuple[bytes, bytes]:
        os.close(self.out_w)
        os.close(self.err_w)
        with os.fdopen(self.out_r, "rb") as out, os.fdopen(self.err_r, "rb") as err:
            return out.read(), err.read()


def test_relay_forwards_stdin_half_closes_and_demultiplexes() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_upgrade(MUX))
        received = b""
        while data := await reader.read(1024):  # until the client half-closes
            received += data
        writer.write(frame(1, b"got " + received) + frame(2, b"warning\n"))
        await writer.drain()

    pipes = Pipes(b"hello\n")

    async def test(path: Path) -> None:
        conn = await open_hijacked(path, "/docker/exec/e1/start", body={"Detach": False})
        assert conn.multiplexed
        assert await relay(conn, pipes.attachment, tty=False, stdin=True) is False

    asyncio.run(_serve(echo, test))
    assert pipes.read() == (b"got hello\n", b"warning\n")


def test_relay_of_a_tty_is_raw_and_knows_a_detach() -> None:
    async def detach_on_keys(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_upgrade(RAW) + b"\x01\x02raw bytes, no frames")
        await writer.drain()
        received = b""
        while b"\x10\x11" not in received:
            received += await reader.read(1024)
        # Like hyperd: the stream ends at the keys, the process runs on.

    pipes = Pipes(b"typed\x10\x11")

    async def test(path: Path) -> None:
        conn = await open_hijacked(path, "/docker/exec/e1/start", body={"Detach": False})
        detached = await relay(conn, pipes.attachment, tty=True, stdin=True, detach_keys=b"\x10\x11")
        assert detached is True

    asyncio.run(_serve(detach_on_keys, test))
    assert pipes.read() == (b"\x01\x02raw bytes, no frames", b"")


def test_hijack_error_answers_become_hyper_errors() -> None:
    async def not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = json.dumps({"message": "no such exec instance: e1"}).encode()
        writer.write(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    async def test(path: Path) -> None:
        with pytest.raises(errors.NotFound, match="no such exec instance: e1"):
            await open_hijacked(path, "/docker/exec/e1/start", body={"Detach": False})

    asyncio.run(_serve(not_found, test))


def test_hijack_without_hyperd_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(errors.Unavailable, match="cannot reach hyperd"):
        asyncio.run(open_hijacked(tmp_path / "none.sock", "/docker/exec/e1/start"))


# ---- stats -------------------------------------------------------------------------------------


def _stats_doc(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "id": "b" * 64,
        "name": "/web",
        "cpu_stats": {
            "cpu_usage": {"total_usage": 300_000_000},
            "system_cpu_usage": 4_000_000_000,
            "online_cpus": 2,
        },
        "precpu_stats": {"cpu_usage": {"total_usage": 100_000_000}, "system_cpu_usage": 2_000_000_000},
        "memory_stats": {"usage": 100 << 20, "limit": 400 << 20, "stats": {"inactive_file": 20 << 20}},
        "networks": {"eth0": {"rx_bytes": 1234, "tx_bytes": 648}, "eth1": {"rx_bytes": 1000, "tx_bytes": 0}},
        "blkio_stats": {
            "io_service_bytes_recursive": [
                {"major": 254, "minor": 0, "op": "Read", "value": 1_500_000},
                {"major": 254, "minor": 0, "op": "Write", "value": 4096},
                {"major": 254, "minor": 16, "op": "read", "value": 500_000},
            ]
        },
        "pids_stats": {"current": 3},
    }
    doc.update(changes)
    return doc


def test_stats_are_computed_dockers_way() -> None:
    sample = StatsSample.from_json(_stats_doc())
    # (300M - 100M) / (4G - 2G) * 2 CPUs * 100
    assert cpu_percent(sample) == pytest.approx(20.0)
    assert memory_usage(sample) == 80 << 20  # less the inactive page cache
    assert memory_percent(sample) == pytest.approx(20.0)
    assert (sample.network_rx, sample.network_tx, sample.block_read, sample.block_write) == (
        2234,
        648,
        2_000_000,
        4096,
    )
    assert stats_row(sample) == (
        "bbbbbbbbbbbb",
        "web",
        "20.00%",
        "80MiB / 400MiB",
        "20.00%",
        "2.23kB / 648B",
        "2MB / 4.1kB",
        "3",
    )


def test_stats_edge_cases() -> None:
    idle = StatsSample.from_json(
        _stats_doc(cpu_stats={}, precpu_stats={}, memory_stats={}, networks=None, blkio_stats={})
    )
    assert (cpu_percent(idle), memory_percent(idle)) == (0.0, 0.0)
    # Without a previous reading, Docker's formula gives the average since the start.
    assert cpu_percent(StatsSample.from_json(_stats_doc(precpu_stats={}))) == pytest.approx(15.0)
    cgroup1 = StatsSample.from_json(
        _stats_doc(
            memory_stats={
                "usage": 100,
                "limit": 1000,
                "stats": {"total_inactive_file": 40, "inactive_file": 1},
            }
        )
    )
    assert memory_usage(cgroup1) == 60
    bigger = StatsSample.from_json(
        _stats_doc(memory_stats={"usage": 10, "limit": 100, "stats": {"inactive_file": 50}})
    )
    assert memory_usage(bigger) == 10
    with pytest.raises(errors.InternalError):
        StatsSample.from_json(_stats_doc(pids_stats={"current": -1}))


def test_sizes_are_go_units() -> None:
    assert [bytes_size(n) for n in (0, 1023, 1024, 1536 * 1024, 480_000_000)] == [
        "0B",
        "1023B",
        "1KiB",
        "1.5MiB",
        "457.8MiB",
    ]
    assert [human_size(n) for n in (0, 648, 1234, 999_999, 1_500_000_000)] == [
        "0B",
        "648B",
        "1.23kB",
        "1e+03kB",
        "1.5GB",
    ]


def test_stats_table() -> None:
    table = format_stats_table([idle_row("c" * 64, "stopped")])
    assert table.splitlines() == [
        "CONTAINER ID   NAME      CPU %     MEM USAGE / LIMIT   MEM %     NET I/O   BLOCK I/O   PIDS",
        "cccccccccccc   stopped   0.00%     0B / 0B             0.00%     0B / 0B   0B / 0B     0",
    ]


def test_top_table_is_dockers() -> None:
    rows = [("UID", "PID", "CMD"), ("0", "1", "sh -c sleep 9")]
    assert container_commands.format_columns(rows, min_width=20).splitlines() == [
        "UID                 PID                 CMD",
        "0                   1                   sh -c sleep 9",
    ]


# ---- inspect --format ----------------------------------------------------------------------------

DOCUMENT = {
    "Id": "abc",
    "Name": "/web",
    "RestartCount": 2,
    "State": {"Status": "exited", "Running": False, "ExitCode": 3, "StartedAt": "x"},
    "Config": {"Cmd": ["sh", "-c", "a && b > c"], "Labels": {"b": "2", "a": "1"}, "Entrypoint": None},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{.State.Status}}", "exited"),
        ("{{ .State.Running }} {{.RestartCount}}", "false 2"),
        ("{{.Name}}:{{.State.ExitCode}}", "/web:3"),
        ("{{json .Config.Cmd}}", '["sh","-c","a \\u0026\\u0026 b \\u003e c"]'),
        ("{{.Config.Cmd}}", "[sh -c a && b > c]"),
        ("{{.Config.Labels}}", "map[a:1 b:2]"),
        ("{{.Config.Labels.a}}/{{.Config.Labels.zz}}", "1/<no value>"),
        ("{{json .Config.Labels.zz}}", "null"),
        ("{{.Config.Entrypoint}}", "<nil>"),
        ("id={{- .Id -}} !", "id=abc!"),
        ("plain text", "plain text"),
    ],
)
def test_format_templates(template: str, expected: str) -> None:
    assert compile_template(template)(DOCUMENT) == expected


@pytest.mark.parametrize(
    "template",
    ["{{.State.Nope}}", "{{.State.Status.Deeper}}", "{{if .Id}}x{{end}}", "{{index .Config 1}}", "{{.Id"],
)
def test_format_templates_refuse_what_they_cannot_do(template: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        compile_template(template)(DOCUMENT)


def test_go_values() -> None:
    values: list[object] = [True, 3, 2.0, 2.5, None, [], {"k": [1]}]
    assert [go_format(v) for v in values] == [
        "true",
        "3",
        "2",
        "2.5",
        "<nil>",
        "[]",
        "map[k:[1]]",
    ]
    assert go_json([{"a": "<&>"}], indent=4) == '[\n    {\n        "a": "\\u003c\\u0026\\u003e"\n    }\n]'


# ---- cp: Docker's path rules --------------------------------------------------------------------


def test_split_copy_arg() -> None:
    assert (split_copy_arg("web:/x").container, split_copy_arg("web:/x").path) == ("web", "/x")
    assert split_copy_arg("/abs:path").container is None
    assert split_copy_arg("./local:file").container is None
    assert split_copy_arg("plain").container is None
    assert split_copy_arg("-").container is None
    assert split_copy_arg("web:").path == ""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a/b", ("/a", "b")),
        ("/a/b/", ("/a", "b")),
        ("/a/b/.", ("/a/b", ".")),
        ("b", (".", "b")),
        ("/", ("/", "/")),
        ("//a//b", ("/a", "b")),
        (".", (".", ".")),
    ],
)
def test_split_path_dir_entry(path: str, expected: tuple[str, str]) -> None:
    assert split_path_dir_entry(path) == expected


def test_plan_copy_follows_docker() -> None:
    file_source, dir_source = CopyEnd("/src/f"), CopyEnd("/src/d", is_dir=True)
    existing_dir, existing_file = CopyEnd("/dst", True, True), CopyEnd("/dst/g", True, False)
    missing = CopyEnd("/dst/new", exists=False)
    # Into an existing directory, under the source's own name (its contents for `/.`).
    assert (plan_copy(file_source, existing_dir).directory, plan_copy(file_source, existing_dir).name) == (
        "/dst",
        "f",
    )
    assert plan_copy(CopyEnd("/src/d/.", is_dir=True), existing_dir).name == "."
    # Onto an existing file: its name, in its directory.
    assert (plan_copy(file_source, existing_file).directory, plan_copy(file_source, existing_file).name) == (
        "/dst",
        "g",
    )
    with pytest.raises(errors.InvalidArgument, match="cannot copy directory"):
        plan_copy(dir_source, existing_file)
    # A new name: the source takes it, in the destination's parent.
    assert (plan_copy(dir_source, missing).directory, plan_copy(dir_source, missing).name) == ("/dst", "new")
    assert plan_copy(file_source, missing).name == "new"
    assert plan_copy(dir_source, CopyEnd("/dst/new/", exists=False)).name == "new"
    with pytest.raises(errors.NotFound, match="no such directory"):
        plan_copy(file_source, CopyEnd("/dst/new/", exists=False))
    # The root's archive holds its contents; a followed link keeps the link's name.
    assert plan_copy(CopyEnd("/", is_dir=True), existing_dir).name == "."
    assert plan_copy(file_source, existing_dir, source_name="link").name == "link"


def test_archive_round_trip_with_root_owners(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "f").write_bytes(b"one")
    (source / "link").symlink_to("sub/f")
    os.link(source / "sub" / "f", source / "hard")
    buffer = io.BytesIO()
    write_archive(buffer, source, "renamed", keep_owner=False)
    buffer.seek(0)
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"renamed", "renamed/sub", "renamed/sub/f", "renamed/link", "renamed/hard"}
    assert {(m.uid, m.gid, m.uname) for m in members.values()} == {(0, 0, "")}
    assert members["renamed/link"].linkname == "sub/f"
    assert members["renamed/hard"].islnk() or members["renamed/sub/f"].islnk()
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_archive(buffer, dest)
    assert (dest / "renamed" / "sub" / "f").read_bytes() == b"one"
    assert os.readlink(dest / "renamed" / "link") == "sub/f"


@pytest.fixture
def in_tmp_dir(tmp_path: Path) -> Iterator[Path]:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def test_cp_refuses_two_or_no_containers(in_tmp_dir: Path) -> None:
    console = Console()
    with pytest.raises(errors.InvalidArgument, match="between containers"):
        console.run("cp", "a:/x", "b:/y")
    with pytest.raises(errors.InvalidArgument, match="at least one container"):
        console.run("cp", "x", "y")
