"""`hyper ps`, `logs`, `stop`, `kill`, `wait` and `rm`: background containers, through hyperd.

Each command connects to hyperd (starting it when nothing answers) and calls
one endpoint per container. Output follows Docker's (the `ps` table and its
status strings, `logs -t` timestamps, one line per container acted on) so
scripts written for `docker` keep working. Formatting and filtering are pure
functions over `ContainerInfo` values, tested without a daemon.

As in Docker, a command given several containers acts on each, reports the
ones that failed on stderr, and exits 1 if any did.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from hyper.cli.client import ContainerInfo, ContainerState, DaemonClient, LogRecord, connect_or_start
from hyper.cli.context import CliContext
from hyper.errors import HyperError, InvalidArgument
from hyper.humanize import human_duration

SHORT_ID_LENGTH = 12
COMMAND_WIDTH = 20
PS_HEADER = ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES")
# Docker's tabwriter: cells at least 10 wide, 3 spaces between columns.
_MIN_CELL_WIDTH = 10
_CELL_PADDING = 3
_EXIT_SOME_FAILED = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ps = subparsers.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true", help="show all containers (default: running)")
    ps.add_argument("-q", "--quiet", action="store_true", help="only display container IDs")
    ps.add_argument("--no-trunc", action="store_true", help="do not truncate IDs and commands")
    ps.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    ps.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="status=created|running|exited, name=REGEX, id=PREFIX, label=KEY[=VALUE]",
    )
    ps.set_defaults(func=ps_command)

    logs = subparsers.add_parser("logs", help="fetch the output of a container")
    logs.add_argument("-f", "--follow", action="store_true", help="follow the output until it exits")
    logs.add_argument("-n", "--tail", default="all", metavar="N", help="lines from the end (default: all)")
    logs.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    logs.add_argument(
        "--since", metavar="TIME", help="only output since TIME: Unix seconds, RFC 3339, or 42m, 1h30m ago"
    )
    logs.add_argument("container", metavar="CONTAINER")
    logs.set_defaults(func=logs_command)

    stop = subparsers.add_parser("stop", help="stop running containers")
    add_stop_timeout(stop)
    stop.add_argument("containers", nargs="+", metavar="CONTAINER")
    stop.set_defaults(func=stop_command)

    kill = subparsers.add_parser("kill", help="send a signal to running containers")
    kill.add_argument("-s", "--signal", metavar="SIGNAL", help="signal to send (default: KILL)")
    kill.add_argument("containers", nargs="+", metavar="CONTAINER")
    kill.set_defaults(func=kill_command)

    wait = subparsers.add_parser("wait", help="wait for containers to exit and print their exit codes")
    wait.add_argument("containers", nargs="+", metavar="CONTAINER")
    wait.set_defaults(func=wait_command)

    rm = subparsers.add_parser("rm", help="remove containers")
    rm.add_argument("-f", "--force", action="store_true", help="stop and remove running containers")
    rm.add_argument("-v", "--volumes", action="store_true", help="remove their anonymous volumes too")
    rm.add_argument("containers", nargs="+", metavar="CONTAINER")
    rm.set_defaults(func=rm_command)


# ---- commands ----------------------------------------------------------------


def add_stop_timeout(parser: argparse.ArgumentParser) -> None:
    """`-t/--time/--timeout SECONDS`, as `stop` and `restart` take it."""
    parser.add_argument(
        "-t",
        "--time",
        "--timeout",
        dest="timeout",
        type=int,
        metavar="SECONDS",
        help="seconds to wait before killing (default: 10)",
    )


def ps_command(args: argparse.Namespace, ctx: CliContext) -> int:
    filters = parse_ps_filters(args.filter)
    with connect_daemon(ctx) as client:
        # Docker shows stopped containers when asked for them by status, even without -a.
        containers = client.list_containers(all=args.all or bool(filters.statuses))
    shown = [container for container in containers if filters.matches(container)]
    truncate = not args.no_trunc
    if args.quiet:
        for container in shown:
            print(short_id(container.id) if truncate else container.id, file=ctx.stdout)
    elif args.format == "json":
        for line in format_ps_json(shown, time.time(), truncate=truncate):
            print(line, file=ctx.stdout)
    else:
        print(format_ps_table(shown, time.time(), truncate=truncate), file=ctx.stdout)
    return 0


def logs_command(args: argparse.Namespace, ctx: CliContext) -> int:
    tail = parse_tail(args.tail)
    since = None if args.since is None else parse_since(args.since, time.time())
    stdout, stderr = _binary(ctx.stdout), _binary(ctx.stderr)
    writer = LogWriter(stdout, stderr, timestamps=args.timestamps)
    with connect_daemon(ctx) as client:
        # Timestamps are formatted here from each record's `time`, so the
        # daemon is not asked to put them into the data.
        for record in client.logs(args.container, follow=args.follow, tail=tail, since=since):
            writer.write(record)
            if args.follow:
                stdout.flush()
                stderr.flush()
    stdout.flush()
    stderr.flush()
    return 0


def stop_command(args: argparse.Namespace, ctx: CliContext) -> int:
    def stop(client: DaemonClient, ref: str) -> str:
        client.stop(ref, timeout=args.timeout)
        return ref

    return for_each(args.containers, stop, ctx)


def kill_command(args: argparse.Namespace, ctx: CliContext) -> int:
    def kill(client: DaemonClient, ref: str) -> str:
        client.kill(ref, signal=args.signal)
        return ref

    return for_each(args.containers, kill, ctx)


def wait_command(args: argparse.Namespace, ctx: CliContext) -> int:
    return for_each(args.containers, lambda client, ref: str(client.wait(ref)), ctx)


def rm_command(args: argparse.Namespace, ctx: CliContext) -> int:
    def remove(client: DaemonClient, ref: str) -> str:
        client.remove(ref, force=args.force, volumes=args.volumes)
        return ref

    return for_each(args.containers, remove, ctx)


def connect_daemon(ctx: CliContext) -> DaemonClient:
    """A client of hyperd, which is started when nothing answers."""
    return connect_or_start(ctx.paths, stderr=ctx.stderr)


def for_each(refs: Sequence[str], action: Callable[[DaemonClient, str], str], ctx: CliContext) -> int:
    """Docker's multi-container commands: act on each, report failures, exit 1 if any."""
    failed = False
    with connect_daemon(ctx) as client:
        for ref in refs:
            try:
                line = action(client, ref)
            except HyperError as exc:
                print(f"hyper: {exc}", file=ctx.stderr, flush=True)
                failed = True
                continue
            print(line, file=ctx.stdout, flush=True)
    return _EXIT_SOME_FAILED if failed else 0


def _binary(stream: TextIO) -> BinaryIO:
    """The byte stream under a text one: container output is written byte for byte."""
    stream.flush()
    return stream.buffer


# ---- ps: filters ---------------------------------------------------------------


@dataclass(frozen=True)
class PsFilter:
    """`ps --filter`: values of one key are alternatives; different keys must all match,
    and so must every label filter (Docker's rules)."""

    statuses: frozenset[ContainerState] = frozenset()
    names: tuple[re.Pattern[str], ...] = ()
    ids: tuple[str, ...] = ()
    labels: tuple[tuple[str, str | None], ...] = ()

    def matches(self, container: ContainerInfo) -> bool:
        if self.statuses and container.state not in self.statuses:
            return False
        if self.names and not any(pattern.search(container.name) for pattern in self.names):
            return False
        if self.ids and not any(container.id.startswith(prefix) for prefix in self.ids):
            return False
        return all(
            key in container.labels and (value is None or container.labels[key] == value)
            for key, value in self.labels
        )


def parse_ps_filters(texts: Iterable[str]) -> PsFilter:
    statuses: set[ContainerState] = set()
    names: list[re.Pattern[str]] = []
    ids: list[str] = []
    labels: list[tuple[str, str | None]] = []
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep:
            raise InvalidArgument(
                f"bad format of filter {text!r} (expected name=value)", hint="e.g. --filter status=exited"
            )
        key = key.strip().lower()
        if key == "status":
            try:
                statuses.add(ContainerState(value))
            except ValueError:
                valid = ", ".join(state.value for state in ContainerState)
                raise InvalidArgument(
                    f"invalid filter 'status={value}'", hint=f"a status is one of {valid}"
                ) from None
        elif key == "name":
            try:
                names.append(re.compile(value))
            except re.error as exc:
                raise InvalidArgument(f"invalid filter 'name={value}': {exc}") from None
        elif key == "id":
            ids.append(value)
        elif key == "label":
            label_key, label_sep, label_value = value.partition("=")
            labels.append((label_key, label_value if label_sep else None))
        else:
            raise InvalidArgument(f"invalid filter {key!r}", hint="filter by status, name, id or label")
    return PsFilter(frozenset(statuses), tuple(names), tuple(ids), tuple(labels))


# ---- ps: formatting ------------------------------------------------------------


def short_id(container_id: str) -> str:
    return container_id[:SHORT_ID_LENGTH]


def format_created(container: ContainerInfo, now: float) -> str:
    return f"{human_duration(now - container.created)} ago"


def format_status(container: ContainerInfo, now: float) -> str:
    """Docker's STATUS column: `Up 5 seconds`, `Exited (1) 2 minutes ago`, `Created`."""
    if container.state in (ContainerState.RUNNING, ContainerState.PAUSED):
        if container.state is ContainerState.PAUSED:
            suffix = " (Paused)"
        elif container.health is not None:
            suffix = " (health: starting)" if container.health == "starting" else f" ({container.health})"
        else:
            suffix = ""
        if container.started_at is None:
            return f"Up{suffix}"
        return f"Up {human_duration(now - container.started_at)}{suffix}"
    if container.state is ContainerState.RESTARTING:
        code = container.exit_code or 0
        if container.finished_at is None:
            return f"Restarting ({code})"
        return f"Restarting ({code}) {human_duration(now - container.finished_at)} ago"
    if container.state is ContainerState.EXITED:
        exited = "Exited" if container.exit_code is None else f"Exited ({container.exit_code})"
        if container.finished_at is None:
            return exited
        return f"{exited} {human_duration(now - container.finished_at)} ago"
    return "Created"


def format_command(command: Sequence[str], *, truncate: bool = True) -> str:
    """The COMMAND column: the argv joined, cut to 20 characters with `…`, then quoted."""
    text = " ".join(command)
    if truncate and len(text) > COMMAND_WIDTH:
        text = text[: COMMAND_WIDTH - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def format_image(image: str, *, truncate: bool = True) -> str:
    # An image given by ID is shown as a short ID, as Docker does.
    if truncate and image.startswith("sha256:"):
        return image.removeprefix("sha256:")[:SHORT_ID_LENGTH]
    return image


def ps_row(container: ContainerInfo, now: float, *, truncate: bool = True) -> tuple[str, ...]:
    return (
        short_id(container.id) if truncate else container.id,
        format_image(container.image, truncate=truncate),
        format_command(container.command, truncate=truncate),
        format_created(container, now),
        format_status(container, now),
        container.name,
    )


def format_ps_table(containers: Sequence[ContainerInfo], now: float, *, truncate: bool = True) -> str:
    """Docker's `ps` table: header, then one row per container, without a final newline."""
    return format_columns([PS_HEADER, *(ps_row(c, now, truncate=truncate) for c in containers)])


def format_columns(rows: Sequence[Sequence[str]], *, min_width: int = _MIN_CELL_WIDTH) -> str:
    """Rows aligned as Docker's tabwriter does (min width 10, padding 3, last column bare)."""
    columns = len(rows[0])
    widths = [max(min_width, max(len(row[i]) for row in rows) + _CELL_PADDING) for i in range(columns - 1)]
    lines = [
        "".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + row[-1]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def format_ps_json(containers: Sequence[ContainerInfo], now: float, *, truncate: bool = True) -> list[str]:
    """`ps --format json`: one object per line, with the keys Docker uses."""
    lines = []
    for container in containers:
        created = datetime.datetime.fromtimestamp(container.created, datetime.UTC)
        record = {
            "Command": format_command(container.command, truncate=truncate),
            "CreatedAt": created.strftime("%Y-%m-%d %H:%M:%S +0000 UTC"),
            "ID": short_id(container.id) if truncate else container.id,
            "Image": format_image(container.image, truncate=truncate),
            "Labels": ",".join(f"{key}={value}" for key, value in sorted(container.labels.items())),
            "Names": container.name,
            "RunningFor": format_created(container, now),
            "State": container.state.value,
            "Status": format_status(container, now),
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    return lines


# ---- logs ----------------------------------------------------------------------


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_since(text: str, now: float) -> float:
    """Docker's `--since`: Unix seconds, an RFC 3339 time, or a duration before now (Go's `1h30m`)."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if parts and "".join(number + unit for number, unit in parts) == value:
        return now - sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"invalid --since {text!r}", hint="give Unix seconds, an RFC 3339 time, or a duration such as 10m"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def parse_tail(text: str) -> int | None:
    """`--tail`: a count of lines, or `all` (None)."""
    if text == "all":
        return None
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise InvalidArgument(f"--tail {text!r} is not a number of lines", hint="use e.g. --tail 10 or all")
    return count


def format_log_timestamp(when: float) -> str:
    """Docker's `logs -t` prefix: RFC 3339 in UTC with nine fraction digits."""
    # Split before scaling: the whole number of nanoseconds since 1970 is
    # beyond a float's precision, the fraction of a second is not.
    seconds = math.floor(when)
    nanos = round((when - seconds) * 1_000_000_000)
    if nanos == 1_000_000_000:
        seconds, nanos = seconds + 1, 0
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


class LogWriter:
    """Writes log records to stdout or stderr byte for byte, with `-t` prefixes.

    A record is a chunk of output, not necessarily a line, so the prefix goes
    at the start of every line, and a line split across records gets one.
    """

    def __init__(self, stdout: BinaryIO, stderr: BinaryIO, *, timestamps: bool) -> None:
        self._streams: Mapping[str, BinaryIO] = {"stdout": stdout, "stderr": stderr}
        self._timestamps = timestamps
        self._at_line_start = {"stdout": True, "stderr": True}

    def write(self, record: LogRecord) -> None:
        out = self._streams[record.stream]
        if not self._timestamps:
            out.write(record.data)
            return
        prefix = (format_log_timestamp(record.time) + " ").encode()
        data, start = record.data, 0
        while start < len(data):
            # Only `\n` ends a line: a `\r` (a progress bar redrawing) does not.
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline + 1
            if self._at_line_start[record.stream]:
                out.write(prefix)
            out.write(data[start:end])
            self._at_line_start[record.stream] = newline >= 0
            start = end


# ---- run -d --------------------------------------------------------------------


def parse_labels(texts: Iterable[str]) -> dict[str, str]:
    """`--label KEY=VALUE` (or a bare `KEY`, with an empty value) into a mapping."""
    labels: dict[str, str] = {}
    for text in texts:
        key, _, value = text.partition("=")
        if not key:
            raise InvalidArgument(f"--label {text!r} has no key", hint="use --label KEY=VALUE")
        labels[key] = value
    return labels
