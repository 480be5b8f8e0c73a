"""`ps`, `logs`, `stop`, `kill`, `wait`, `rm` and `run -d`: formatting, filters,
argument parsing, and the commands against a fake client (no daemon)."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hyper.cli import container_commands, run_commands
from hyper.cli.client import ContainerCreate, ContainerInfo, ContainerState, LogRecord
from hyper.cli.container_commands import (
    LogWriter,
    format_command,
    format_log_timestamp,
    format_ps_json,
    format_ps_table,
    format_status,
    parse_labels,
    parse_ps_filters,
    parse_tail,
)
from hyper.cli.context import CliContext
from hyper.cli.main import build_parser, main
from hyper.errors import InvalidArgument, NotFound
from hyper.humanize import human_duration
from hyper.paths import HyperPaths
from hyper.runtime.confinement import NOT_YET_HONOURED

NOW = 1_700_000_000.0

RUNNING = ContainerInfo(
    id="0123456789abcdef" * 4,
    name="web",
    image="busybox",
    image_id="sha256:" + "a" * 64,
    command=("sleep", "100"),
    created=NOW - 125,
    state=ContainerState.RUNNING,
    started_at=NOW - 5,
    labels={"tier": "front", "team": "a"},
)
EXITED = replace(
    RUNNING,
    id="fedcba9876543210" * 4,
    name="job",
    image="docker.io/library/alpine:3.19",
    command=("sh", "-c", "echo hello world; exit 3"),
    created=NOW - 7200,
    state=ContainerState.EXITED,
    started_at=NOW - 7100,
    finished_at=NOW - 180,
    exit_code=3,
    labels={"tier": "back"},
)
CREATED = replace(
    RUNNING, id="aa" * 32, name="new", created=NOW - 0.2, state=ContainerState.CREATED, started_at=None
)


# ---- durations and statuses ----------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "Less than a second"),
        (0.9, "Less than a second"),
        (1, "1 second"),
        (59.9, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (120, "2 minutes"),
        (3599, "59 minutes"),
        (3600, "About an hour"),
        (5399, "About an hour"),
        (5400, "2 hours"),
        (47 * 3600, "47 hours"),
        (48 * 3600, "2 days"),
        (14 * 86400, "2 weeks"),
        (60 * 86400, "2 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_status_strings() -> None:
    assert format_status(RUNNING, NOW) == "Up 5 seconds"
    assert format_status(EXITED, NOW) == "Exited (3) 3 minutes ago"
    assert format_status(replace(EXITED, finished_at=NOW), NOW) == "Exited (3) Less than a second ago"
    assert format_status(CREATED, NOW) == "Created"
    assert format_status(replace(RUNNING, started_at=None), NOW) == "Up"
    assert format_status(replace(RUNNING, health="starting"), NOW) == "Up 5 seconds (health: starting)"
    assert format_status(replace(RUNNING, health="unhealthy"), NOW) == "Up 5 seconds (unhealthy)"
    record = {
        "id": "c" * 64, "name": "web", "image": "busybox", "image_id": "sha256:" + "1" * 64,
        "command": ["sh"], "created": NOW, "state": "running",
        "health": {"status": "healthy", "failing_streak": 0, "log": []},
    }  # fmt: skip
    assert ContainerInfo.from_json(record).health == "healthy"
    assert ContainerInfo.from_json({**record, "health": None}).health is None


@pytest.mark.parametrize(
    ("command", "text"),
    [
        (("sleep", "100"), '"sleep 100"'),
        (("x" * 20,), '"' + "x" * 20 + '"'),
        (("x" * 21,), '"' + "x" * 19 + '…"'),
        (("sh", "-c", 'echo "hi"'), '"sh -c echo \\"hi\\""'),
        ((), '""'),
    ],
)
def test_command_column(command: tuple[str, ...], text: str) -> None:
    assert format_command(command) == text


def test_command_untruncated() -> None:
    assert format_command(("x" * 30,), truncate=False) == '"' + "x" * 30 + '"'


# ---- the ps table ----------------------------------------------------------------


def test_ps_table() -> None:
    lines = format_ps_table([RUNNING, EXITED, CREATED], NOW).split("\n")
    assert lines == [
        "CONTAINER ID   IMAGE                           COMMAND                  CREATED                  "
        "STATUS                     NAMES",
        '0123456789ab   busybox                         "sleep 100"              2 minutes ago            '
        "Up 5 seconds               web",
        'fedcba987654   docker.io/library/alpine:3.19   "sh -c echo hello wo…"   2 hours ago              '
        "Exited (3) 3 minutes ago   job",
        'aaaaaaaaaaaa   busybox                         "sleep 100"              Less than a second ago   '
        "Created                    new",
    ]


def test_ps_table_columns_are_at_least_ten_wide() -> None:
    short = replace(RUNNING, image="a", name="n")
    header, row = format_ps_table([short], NOW).split("\n")
    assert header.index("COMMAND") == row.index('"sleep') == len("0123456789ab   ") + 10
    assert format_ps_table([], NOW) == "CONTAINER ID   IMAGE     COMMAND   CREATED   STATUS    NAMES"


def test_ps_json() -> None:
    first, second = (json.loads(line) for line in format_ps_json([RUNNING, EXITED], NOW))
    assert first == {
        "Command": '"sleep 100"',
        "CreatedAt": "2023-11-14 22:11:15 +0000 UTC",
        "ID": "0123456789ab",
        "Image": "busybox",
        "Labels": "team=a,tier=front",
        "Names": "web",
        "RunningFor": "2 minutes ago",
        "State": "running",
        "Status": "Up 5 seconds",
    }
    assert second["Status"] == "Exited (3) 3 minutes ago"
    assert json.loads(format_ps_json([RUNNING], NOW, truncate=False)[0])["ID"] == RUNNING.id


# ---- filters -----------------------------------------------------------------------


def _shown(*filters: str) -> list[str]:
    parsed = parse_ps_filters(filters)
    return [c.name for c in (RUNNING, EXITED, CREATED) if parsed.matches(c)]


def test_filters() -> None:
    assert _shown() == ["web", "job", "new"]
    assert _shown("status=exited") == ["job"]
    assert _shown("status=exited", "status=created") == ["job", "new"]
    assert _shown("name=^we") == ["web"]
    assert _shown("name=e") == ["web", "new"]
    assert _shown("id=fedc") == ["job"]
    assert _shown("label=tier") == ["web", "job", "new"]
    assert _shown("label=tier=front") == ["web", "new"]
    assert _shown("label=tier=front", "label=team=a", "name=web") == ["web"]
    assert _shown("label=tier=front", "label=team=b") == []
    assert _shown("label=nope") == []


@pytest.mark.parametrize("text", ["status=frozen", "color=red", "status", "name=("])
def test_bad_filters(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_ps_filters([text])


# ---- logs --------------------------------------------------------------------------


def test_parse_tail() -> None:
    assert parse_tail("all") is None
    assert parse_tail("0") == 0
    assert parse_tail("5") == 5
    for bad in ("-1", "five"):
        with pytest.raises(InvalidArgument):
            parse_tail(bad)


def test_log_timestamp() -> None:
    assert format_log_timestamp(1_700_000_000.25) == "2023-11-14T22:13:20.250000000Z"
    assert format_log_timestamp(1_700_000_000) == "2023-11-14T22:13:20.000000000Z"
    assert format_log_timestamp(1_699_999_999.9999999999) == "2023-11-14T22:13:20.000000000Z"


def test_log_writer_is_byte_exact() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    writer = LogWriter(out, err, timestamps=False)
    writer.write(LogRecord("stdout", NOW, b"\x00\xff\r\npartial"))
    writer.write(LogRecord("stderr", NOW, b"oops\n"))
    writer.write(LogRecord("stdout", NOW, b" line\n"))
    assert out.getvalue() == b"\x00\xff\r\npartial line\n"
    assert err.getvalue() == b"oops\n"


def test_log_writer_prefixes_each_line() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    writer = LogWriter(out, err, timestamps=True)
    writer.write(LogRecord("stdout", 1_700_000_000.5, b"one\ntw"))
    writer.write(LogRecord("stderr", 1_700_000_001.0, b"progress 1\rprogress 2\n"))
    writer.write(LogRecord("stdout", 1_700_000_002.0, b"o\nthree\n"))
    assert out.getvalue() == (
        b"2023-11-14T22:13:20.500000000Z one\n"
        b"2023-11-14T22:13:20.500000000Z two\n"
        b"2023-11-14T22:13:22.000000000Z three\n"
    )
    assert err.getvalue() == b"2023-11-14T22:13:21.000000000Z progress 1\rprogress 2\n"


# ---- run -d labels -------------------------------------------------------------------


def test_parse_labels() -> None:
    assert parse_labels(["a=1", "b", "c=x=y", "a=2"]) == {"a": "2", "b": "", "c": "x=y"}
    with pytest.raises(InvalidArgument):
        parse_labels(["=v"])


# ---- argument parsing ------------------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_parse_ps() -> None:
    args = _parse("ps", "-aq", "--filter", "status=exited", "-f", "label=a=b")
    assert (args.all, args.quiet, args.format, args.filter) == (
        True,
        True,
        "table",
        ["status=exited", "label=a=b"],
    )
    assert args.func is container_commands.ps_command
    assert _parse("ps", "--format", "json").format == "json"


def test_parse_logs() -> None:
    args = _parse("logs", "-f", "--tail", "5", "-t", "web")
    assert (args.follow, args.tail, args.timestamps, args.container) == (True, "5", True, "web")
    assert _parse("logs", "web").tail == "all"


def test_parse_stop_kill_wait_rm() -> None:
    stop = _parse("stop", "-t", "3", "a", "b")
    assert (stop.timeout, stop.containers) == (3, ["a", "b"])
    assert _parse("stop", "a").timeout is None
    kill = _parse("kill", "-s", "HUP", "a")
    assert (kill.signal, kill.containers) == ("HUP", ["a"])
    assert _parse("wait", "a", "b").containers == ["a", "b"]
    rm = _parse("rm", "-f", "a")
    assert (rm.force, rm.containers, rm.func) == (True, ["a"], container_commands.rm_command)


def test_parse_run_detached() -> None:
    args = _parse("run", "-d", "--name", "web", "-l", "a=b", "--label", "c", "busybox", "sleep", "9")
    assert (args.detach, args.name, args.label, args.command) == (True, "web", ["a=b", "c"], ["sleep", "9"])


def test_commands_need_a_container() -> None:
    assert main(["stop"]) == 125


# ---- commands against a fake client ------------------------------------------------------


class FakeClient:
    """Stands in for `DaemonClient`: answers from memory, records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.created: list[ContainerCreate] = []
        self.listed_all: list[bool] = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def list_containers(self, *, all: bool = False) -> list[ContainerInfo]:
        self.listed_all.append(all)
        return [RUNNING, EXITED, CREATED] if all else [RUNNING]

    def logs(
        self, ref: str, *, follow: bool = False, tail: int | None = None, since: float | None = None
    ) -> Iterator[LogRecord]:
        self.calls.append(("logs", ref, str(follow), str(tail)) + (() if since is None else (str(since),)))
        yield LogRecord("stdout", NOW, b"out \xff\n")
        yield LogRecord("stderr", NOW, b"err\n")

    def stop(self, ref: str, *, timeout: int | None = None) -> None:
        self._act("stop", ref, str(timeout))

    def kill(self, ref: str, *, signal: str | None = None) -> None:
        self._act("kill", ref, str(signal))

    def wait(self, ref: str) -> int:
        self._act("wait", ref)
        return 7

    def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        self._act("remove", ref, str(force))

    def create_container(self, request: ContainerCreate) -> str:
        self.created.append(request)
        return "c" * 64

    def _act(self, *call: str) -> None:
        self.calls.append(call)
        if call[1] == "missing":
            raise NotFound(f"no such container: {call[1]}")


class Console:
    def __init__(self) -> None:
        self.out, self.err = io.BytesIO(), io.BytesIO()
        self.ctx = CliContext(
            paths=HyperPaths(
                state=Path("/nonexistent"), cache=Path("/nonexistent"), runtime=Path("/nonexistent")
            ),
            stdout=io.TextIOWrapper(self.out, write_through=True),
            stderr=io.TextIOWrapper(self.err, write_through=True),
        )

    def run(self, *argv: str) -> int:
        args = build_parser().parse_args(argv)
        status: int = args.func(args, self.ctx)
        return status


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    fake = FakeClient()
    monkeypatch.setattr(container_commands, "connect_or_start", lambda paths, stderr: fake)
    monkeypatch.setattr("hyper.cli.client.connect_or_start", lambda paths, stderr: fake)
    return fake


def test_ps_command(client: FakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.time", lambda: NOW)
    console = Console()
    assert console.run("ps", "-q") == 0
    assert console.out.getvalue() == b"0123456789ab\n"
    console = Console()
    assert console.run("ps", "--filter", "status=exited", "-q", "--no-trunc") == 0
    assert console.out.getvalue() == (EXITED.id + "\n").encode()
    # Asking for stopped ones by status lists all, as Docker does.
    assert client.listed_all == [False, True]
    console = Console()
    assert console.run("ps", "-a") == 0
    assert console.out.getvalue().decode() == format_ps_table([RUNNING, EXITED, CREATED], NOW) + "\n"
    console = Console()
    assert console.run("ps", "--format", "json", "--filter", "name=web") == 0
    assert json.loads(console.out.getvalue())["Names"] == "web"


def test_logs_command(client: FakeClient) -> None:
    console = Console()
    assert console.run("logs", "--tail", "2", "web") == 0
    assert console.out.getvalue() == b"out \xff\n"
    assert console.err.getvalue() == b"err\n"
    assert client.calls == [("logs", "web", "False", "2")]


def test_multi_container_commands(client: FakeClient) -> None:
    console = Console()
    assert console.run("stop", "-t", "3", "a", "b") == 0
    assert console.out.getvalue() == b"a\nb\n"
    console = Console()
    assert console.run("wait", "a") == 0
    assert console.out.getvalue() == b"7\n"
    console = Console()
    # Docker's rules: every container is tried, failures reported, status 1.
    assert console.run("rm", "-f", "missing", "b") == 1
    assert console.out.getvalue() == b"b\n"
    assert console.err.getvalue() == b"hyper: no such container: missing\n"
    console = Console()
    assert console.run("kill", "a") == 0
    assert client.calls == [
        ("stop", "a", "3"),
        ("stop", "b", "3"),
        ("wait", "a"),
        ("remove", "missing", "True"),
        ("remove", "b", "True"),
        ("kill", "a", "None"),
    ]


def test_run_detached(client: FakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    ensured: list[tuple[str, str]] = []
    monkeypatch.setattr(
        run_commands,
        "ensure_image",
        lambda text, policy, ctx, quiet, platform=None: ensured.append((text, policy)),
    )
    console = Console()
    argv = ("run", "-d", "--name", "web", "-l", "a=b", "-e", "X=1", "-m", "1g", "busybox", "sleep", "9")
    assert console.run(*argv) == 0
    assert console.out.getvalue() == ("c" * 64 + "\n").encode()
    assert ensured == [("busybox", "missing")]
    (request,) = client.created
    assert (request.image, request.command, request.env) == ("busybox", ("sleep", "9"), ("X=1",))
    assert (request.name, request.labels, request.memory_mib) == ("web", {"a": "b"}, 1024)


CONFINEMENT_VALUES = {
    "--cap-add": ("NET_ADMIN",),
    "--cap-drop": ("CHOWN",),
    "--security-opt": ("no-new-privileges",),
    "--ulimit": ("nofile=10:20",),
    "--shm-size": ("128m",),
}


def test_run_detached_sends_stop_and_health_options_and_leaves_the_size_to_hyperd(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_commands, "ensure_image", lambda text, policy, ctx, quiet, platform=None: None)
    argv = (
        "run", "-d", "--stop-signal", "SIGUSR1", "--stop-timeout", "3", "--health-cmd", "test -e /ok",
        "--health-interval", "500ms", "--health-retries", "2", "busybox",
    )  # fmt: skip
    assert Console().run(*argv) == 0
    (request,) = client.created
    body = request.to_json()
    assert (body["stop_signal"], body["stop_timeout"]) == ("SIGUSR1", 3)
    assert (body["health_test"], body["health_interval"], body["health_retries"]) == (
        ["CMD-SHELL", "test -e /ok"],
        0.5,
        2,
    )
    assert "memory_mib" not in body and "cpus" not in body  # hyperd's configured default
    assert "health_timeout" not in body and "cap_add" not in body  # only what was given
    assert Console().run("create", "--no-healthcheck", "busybox") == 0
    assert client.created[-1].to_json()["health_test"] == ["NONE"]


@pytest.mark.parametrize(
    "argv",
    [
        ("run", "-d", "--rm", "--restart", "always", "busybox"),
        ("run", "-d", "--kernel", "/k", "busybox"),
        # hyperd's options, on a foreground run in the CLI's own process.
        ("run", "--direct", "--restart", "always", "busybox"),
        ("run", "--direct", "--name", "web", "busybox"),
        ("run", "--direct", "-l", "a=b", "busybox"),
        ("run", "--direct", "--health-cmd", "true", "busybox"),
        ("run", "--direct", "--stop-signal", "USR1", "busybox"),
        ("run", "--rm", "--restart", "always", "busybox"),  # through hyperd too
        ("run", "-d", "--no-healthcheck", "--health-cmd", "true", "busybox"),
        ("run", "-d", "--health-interval", "5", "--health-cmd", "true", "busybox"),
        ("run", "-d", "--cap-add", "NO_SUCH_CAP", "busybox"),
        ("run", "-d", "--ulimit", "nofile=2:1", "busybox"),
        ("create", "--shm-size", "lots", "busybox"),
        ("run", "-d", "--platform", "linux/arm64", "busybox"),
        # The confinement options the runtime does not honour yet.
        *[
            ("run", "-d", flag, *CONFINEMENT_VALUES.get(flag, ()), "busybox")
            for flag in NOT_YET_HONOURED.values()
        ],
    ],
)
def test_run_detached_rejects(argv: tuple[str, ...], client: FakeClient) -> None:
    with pytest.raises(InvalidArgument):
        Console().run(*argv)
    assert client.created == []


def test_parse_since_takes_dockers_forms() -> None:
    from hyper.cli.container_commands import parse_since

    now = 1_800_000_000.0
    assert parse_since("1700000000.5", now) == 1700000000.5
    assert parse_since("10m", now) == now - 600
    assert parse_since("1h30m", now) == now - 5400
    assert parse_since("1.5s", now) == now - 1.5
    assert parse_since("2026-11-23T10:00:00Z", now) == 1795428000.0
    with pytest.raises(InvalidArgument):
        parse_since("yesterday", now)
    with pytest.raises(InvalidArgument):
        parse_since("10m fast", now)
