"""`hyper inspect`, `top` and `stats`: what runs in a container, and what it costs.

They read the Docker API's documents that hyperd serves under `/docker`, and
print them as Docker does: `inspect` a JSON array (or `--format` applied to
each), `top` the `ps` table from inside the VM, `stats` Docker's table with
CPU % computed Docker's way. Formatting is pure, tested without a daemon.

`--format` takes the part of Go's templates that scripts use with `docker
inspect`: `{{.State.Status}}`-style dotted paths and `{{json .Config}}`, with
text around them; anything else is refused by name rather than misread.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from hyper.cli.client import DaemonClient, StatsSample
from hyper.cli.container_commands import SHORT_ID_LENGTH, connect_daemon, format_columns
from hyper.cli.context import CliContext
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument

STATS_HEADER = ("CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS")
TOP_MIN_WIDTH = 20  # docker top's tabwriter
STATS_INTERVAL = 1.0
CLEAR_SCREEN = "\x1b[2J\x1b[H"
_EXIT_SOME_FAILED = 1
_MAX_PARALLEL = 8


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    inspect = subparsers.add_parser("inspect", help="show containers' details as JSON")
    inspect.add_argument(
        "-f", "--format", metavar="TEMPLATE", help="e.g. '{{.State.Status}}' or '{{json .Config}}', or json"
    )
    inspect.add_argument("containers", nargs="+", metavar="CONTAINER")
    inspect.set_defaults(func=inspect_command)

    top = subparsers.add_parser("top", help="show the processes running in a container")
    top.add_argument("container", metavar="CONTAINER")
    top.set_defaults(func=top_command)

    stats = subparsers.add_parser("stats", help="show containers' resource usage")
    stats.add_argument("--no-stream", action="store_true", help="print once instead of every second")
    stats.add_argument("containers", nargs="*", metavar="CONTAINER", help="default: every running one")
    stats.set_defaults(func=stats_command)


# ---- inspect -------------------------------------------------------------------------------


def inspect_command(args: argparse.Namespace, ctx: CliContext) -> int:
    render = None if args.format in (None, "json") else compile_template(args.format)
    documents: list[Mapping[str, object]] = []
    failed = False
    with connect_daemon(ctx) as client:
        for ref in args.containers:
            try:
                documents.append(client.container_details(ref).document)
            except HyperError as exc:
                print(f"hyper: {exc}", file=ctx.stderr, flush=True)
                failed = True
    if render is not None:
        for document in documents:
            print(render(document), file=ctx.stdout)
    elif args.format == "json":
        for document in documents:
            print(go_json(document), file=ctx.stdout)
    else:
        print(go_json(documents, indent=4), file=ctx.stdout)
    return _EXIT_SOME_FAILED if failed else 0


def go_json(value: object, *, indent: int | None = None) -> str:
    """JSON as Go's encoder writes it: compact (or indented), `<`, `>` and `&` escaped."""
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(value, indent=indent, separators=separators, ensure_ascii=False)
    # Those characters occur only inside strings, where the escapes mean the same.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_PATH = re.compile(r"\.(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)?")
# Docker's maps, where a missing key is `<no value>` rather than an error.
_MAP_FIELDS = frozenset({"Labels", "Annotations", "Options", "Data", "Networks", "Ports"})


def compile_template(template: str) -> Callable[[object], str]:
    """A `--format` template as a function of one inspect document."""
    parts: list[str | tuple[bool, str]] = []  # text, or (as_json, path)
    position = 0
    trim_next = False
    for match in _ACTION.finditer(template):
        text = template[position : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        parts.append(text)
        parts.append(_parse_action(match.group(2)))
        trim_next = bool(match.group(3))
        position = match.end()
    rest = template[position:]
    if "{{" in rest:
        raise InvalidArgument(f"template {template!r} has an unclosed action", hint="close it with }}")
    parts.append(rest.lstrip() if trim_next else rest)

    def render(document: object) -> str:
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            as_json, path = part
            value = lookup(document, path)
            if as_json:
                out.append("null" if isinstance(value, _NoValue) else go_json(value))
            else:
                out.append(go_format(value))
        return "".join(out)

    return render


def _parse_action(action: str) -> tuple[bool, str]:
    words = action.split()
    as_json = len(words) == 2 and words[0] == "json"
    path = words[1] if as_json else (words[0] if len(words) == 1 else "")
    if not _PATH.fullmatch(path):
        raise InvalidArgument(
            f"hyper's --format does not support {{{{{action}}}}}",
            hint="use fields such as {{.State.Status}}, or {{json .Config}}",
        )
    return as_json, path


def lookup(document: object, path: str) -> object:
    """`.State.Status` in the document; a missing field is an error, as in Docker's."""
    value = document
    parent = ""
    for key in path.split(".")[1:] if path != "." else []:
        if not isinstance(value, dict):
            raise InvalidArgument(f"template: {path}: can't evaluate field {key} in {go_format(value)!r}")
        if key not in value:
            if parent in _MAP_FIELDS:
                return _NO_VALUE
            raise InvalidArgument(f"template: {path}: the container has no field {key}")
        value, parent = value[key], key
    return value


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"


_NO_VALUE = _NoValue()


def go_format(value: object) -> str:
    """A value as Go's templates print it (`%v`): true, 3, map[a:b], [x y], <nil>."""
    if value is None:
        return "<nil>"
    if isinstance(value, _NoValue):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, list):
        return "[" + " ".join(go_format(item) for item in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{key}:{go_format(value[key])}" for key in sorted(value)) + "]"
    return str(value)


# ---- top -----------------------------------------------------------------------------------


def top_command(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        table = client.top(args.container)
    if table.titles:
        print(format_columns([table.titles, *table.processes], min_width=TOP_MIN_WIDTH), file=ctx.stdout)
    return 0


# ---- stats ---------------------------------------------------------------------------------


def cpu_percent(sample: StatsSample) -> float:
    """Docker's: the container's share of the host's CPU time between two readings, times CPUs."""
    cpu_delta = sample.cpu_total - sample.precpu_total
    system_delta = sample.system_cpu - sample.presystem_cpu
    if cpu_delta <= 0 or system_delta <= 0:
        return 0.0
    return cpu_delta / system_delta * max(sample.online_cpus, 1) * 100.0


def memory_usage(sample: StatsSample) -> int:
    """Docker's: usage without the inactive page cache (cgroup v1 or v2 names)."""
    for key in ("total_inactive_file", "inactive_file"):
        inactive = sample.memory_stats.get(key)
        if inactive is not None and inactive < sample.memory_usage:
            return sample.memory_usage - inactive
    return sample.memory_usage


def memory_percent(sample: StatsSample) -> float:
    if sample.memory_limit <= 0:
        return 0.0
    return memory_usage(sample) / sample.memory_limit * 100.0


def _scaled(size: float, base: float, units: Sequence[str]) -> tuple[float, str]:
    index = 0
    while size >= base and index < len(units) - 1:
        size /= base
        index += 1
    return size, units[index]


def bytes_size(size: float) -> str:
    """go-units' BytesSize: binary units, four significant digits (`1.5MiB`, `512MiB`)."""
    value, unit = _scaled(size, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"))
    return f"{value:.4g}{unit}"


def human_size(size: float) -> str:
    """go-units' HumanSizeWithPrecision(size, 3): decimal units (`1.23kB`, `648B`)."""
    value, unit = _scaled(size, 1000.0, ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"))
    return f"{value:.3g}{unit}"


def stats_row(sample: StatsSample) -> tuple[str, ...]:
    return (
        sample.id[:SHORT_ID_LENGTH],
        sample.name,
        f"{cpu_percent(sample):.2f}%",
        f"{bytes_size(memory_usage(sample))} / {bytes_size(sample.memory_limit)}",
        f"{memory_percent(sample):.2f}%",
        f"{human_size(sample.network_rx)} / {human_size(sample.network_tx)}",
        f"{human_size(sample.block_read)} / {human_size(sample.block_write)}",
        str(sample.pids),
    )


def idle_row(container_id: str, name: str) -> tuple[str, ...]:
    """A container that does not run: Docker's row of zeros."""
    return (container_id[:SHORT_ID_LENGTH], name, "0.00%", "0B / 0B", "0.00%", "0B / 0B", "0B / 0B", "0")


def format_stats_table(rows: Sequence[Sequence[str]]) -> str:
    return format_columns([STATS_HEADER, *rows])


def _stats_row_of(client: DaemonClient, ref: str) -> tuple[str, ...]:
    try:
        return stats_row(client.stats(ref))
    except FailedPrecondition:
        container = client.inspect(ref)  # stopped or paused: shown, with nothing to show
        return idle_row(container.id, container.name)


def collect_stats(client: DaemonClient, refs: Sequence[str]) -> tuple[list[tuple[str, ...]], list[str]]:
    """One row per container, read at once (each reading takes hyperd a second); the errors."""
    if not refs:
        return [], []
    rows: list[tuple[str, ...]] = []
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=min(_MAX_PARALLEL, len(refs))) as pool:
        futures = [pool.submit(_stats_row_of, client, ref) for ref in refs]
        for future in futures:
            try:
                rows.append(future.result())
            except HyperError as exc:
                failures.append(str(exc))
    return rows, failures


def stats_command(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        try:
            while True:
                started = time.monotonic()
                refs = args.containers or [container.id for container in client.list_containers()]
                rows, failures = collect_stats(client, refs)
                table = format_stats_table(rows)
                for failure in failures:
                    print(f"hyper: {failure}", file=ctx.stderr, flush=True)
                if args.no_stream or failures:
                    print(table, file=ctx.stdout, flush=True)
                    return _EXIT_SOME_FAILED if failures else 0
                print(CLEAR_SCREEN + table, file=ctx.stdout, flush=True)
                time.sleep(max(0.0, STATS_INTERVAL - (time.monotonic() - started)))
        except KeyboardInterrupt:
            return 0
