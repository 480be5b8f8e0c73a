"""`hyper pod create|start|stop|rm|ps|inspect|logs`: pods of several
containers in one VM, through hyperd (hyper.daemon.named_pods). Containers
join a pod with `hyper run -d --pod NAME` or `hyper create --pod NAME`."""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from hyper.cli.container_commands import connect_daemon, parse_labels
from hyper.cli.context import CliContext
from hyper.cli.documents import LogRecord
from hyper.errors import HyperError, InternalError
from hyper.runtime import spec as specs


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pod = subparsers.add_parser("pod", help="manage pods: containers sharing one VM")
    commands = pod.add_subparsers(dest="pod_command", metavar="COMMAND", required=True)

    create = commands.add_parser("create", help="create a pod (its VM starts with its first container)")
    create.add_argument("name", nargs="?", metavar="NAME")
    create.add_argument("--name", dest="name_option", metavar="NAME")
    create.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:CONTAINER")
    create.add_argument("--network", "--net", default="", metavar="NETWORK")
    create.add_argument("--hostname", metavar="NAME", help="the pod's hostname (default: its name)")
    create.add_argument("-m", "--memory", metavar="SIZE", help="the VM's RAM (default: from its containers)")
    create.add_argument("--cpus", type=int, metavar="N", help="the VM's vCPUs (default: from its containers)")
    create.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument(
        "--share", default="", metavar="NAMESPACES", help="pid: one PID namespace for its containers"
    )
    create.set_defaults(func=cmd_create)

    start = commands.add_parser("start", help="start pods: their VM, then their containers")
    start.add_argument("pods", nargs="+", metavar="POD")
    start.set_defaults(func=cmd_start)

    stop = commands.add_parser("stop", help="stop pods: their containers, then their VM")
    stop.add_argument("pods", nargs="+", metavar="POD")
    stop.add_argument("-t", "--time", "--timeout", dest="timeout", type=int, metavar="SECONDS")
    stop.set_defaults(func=cmd_stop)

    rm = commands.add_parser("rm", aliases=["remove"], help="remove pods with their containers")
    rm.add_argument("pods", nargs="+", metavar="POD")
    rm.add_argument("-f", "--force", action="store_true", help="running ones too")
    rm.set_defaults(func=cmd_rm)

    ps = commands.add_parser("ps", aliases=["ls", "list"], help="list pods")
    ps.add_argument("-q", "--quiet", action="store_true", help="only IDs")
    ps.add_argument("--format", choices=["table", "json"], default="table")
    ps.set_defaults(func=cmd_ps)

    inspect = commands.add_parser("inspect", help="show pods as JSON")
    inspect.add_argument("pods", nargs="+", metavar="POD")
    inspect.set_defaults(func=cmd_inspect)

    logs = commands.add_parser("logs", help="the output of a pod's containers, each line named")
    logs.add_argument("pod", metavar="POD")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-c", "--container", metavar="NAME", help="only this container's")
    logs.set_defaults(func=cmd_logs)


def _document(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    return client.api_request(method, path, **kwargs).json()


def cmd_create(args: argparse.Namespace, ctx: CliContext) -> int:
    name = args.name_option or args.name
    body: dict[str, Any] = {
        "name": name,
        "labels": parse_labels(args.label),
        "hostname": args.hostname,
        "network": args.network,
        "publish": args.publish,
        "memory_mib": None if args.memory is None else specs.parse_memory(args.memory),
        "cpus": args.cpus,
        "share": [name for name in args.share.split(",") if name],
    }
    with connect_daemon(ctx) as client:
        answer = _document(client, "POST", "/v1/pods", json=body)
    print(answer["id"], file=ctx.stdout)
    return 0


def _each(args: argparse.Namespace, ctx: CliContext, method: str, action: str | None, **kwargs: Any) -> int:
    failed = False
    with connect_daemon(ctx) as client:
        for ref in args.pods:
            path = f"/v1/pods/{ref}" + (f"/{action}" if action else "")
            try:
                client.api_request(method, path, **kwargs)
            except HyperError as exc:
                print(f"hyper: {exc}", file=ctx.stderr)
                failed = True
            else:
                print(ref, file=ctx.stdout)
    return 1 if failed else 0


def cmd_start(args: argparse.Namespace, ctx: CliContext) -> int:
    return _each(args, ctx, "POST", "start", timeout=None)


def cmd_stop(args: argparse.Namespace, ctx: CliContext) -> int:
    params = {} if args.timeout is None else {"t": str(args.timeout)}
    return _each(args, ctx, "POST", "stop", params=params, timeout=None)


def cmd_rm(args: argparse.Namespace, ctx: CliContext) -> int:
    return _each(args, ctx, "DELETE", None, params={"force": "1" if args.force else "0"}, timeout=None)


def cmd_ps(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        pods = _document(client, "GET", "/v1/pods")
    if not isinstance(pods, list):
        raise InternalError("hyperd's pod list is not a JSON array")
    if args.quiet:
        for pod in pods:
            print(pod["Id"][:12], file=ctx.stdout)
    elif args.format == "json":
        for pod in pods:
            print(json.dumps(pod), file=ctx.stdout)
    else:
        rows = [("POD ID", "NAME", "STATUS", "CREATED", "# OF CONTAINERS")]
        now = time.time()
        for pod in pods:
            age = max(0, int(now - pod["Created"]))
            rows.append(
                (pod["Id"][:12], pod["Name"], pod["State"], f"{age} seconds ago", str(len(pod["Containers"])))
            )
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            print(
                "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
                file=ctx.stdout,
            )
    return 0


def cmd_inspect(args: argparse.Namespace, ctx: CliContext) -> int:
    with connect_daemon(ctx) as client:
        documents = [_document(client, "GET", f"/v1/pods/{ref}") for ref in args.pods]
    print(json.dumps(documents, indent=4), file=ctx.stdout)
    return 0


def cmd_logs(args: argparse.Namespace, ctx: CliContext) -> int:
    """Each container's output, its lines named `NAME | `; with -f, as it comes."""
    with connect_daemon(ctx) as client:
        pod = _document(client, "GET", f"/v1/pods/{args.pod}")
    containers = [(c["Id"], c["Name"]) for c in pod["Containers"]]
    if args.container is not None:
        containers = [
            (i, n) for i, n in containers if args.container in (i, n) or i.startswith(args.container)
        ]
        if not containers:
            raise HyperError(f"pod {pod['Name']} has no container {args.container}")
    width = max((len(name) for _, name in containers), default=0)
    lock = threading.Lock()
    out = ctx.stdout.buffer if hasattr(ctx.stdout, "buffer") else None

    def write(name: str, record: LogRecord, pending: dict[str, bytes]) -> None:
        data = pending.pop(record.stream, b"") + record.data
        *lines, rest = data.split(b"\n")
        if rest:
            pending[record.stream] = rest
        with lock:
            for line in lines:
                text = name.ljust(width).encode() + b" | " + line + b"\n"
                if out is not None:
                    out.write(text)
                    out.flush()
                else:
                    ctx.stdout.write(text.decode(errors="replace"))

    if not args.follow:
        records: list[tuple[float, str, LogRecord]] = []
        with connect_daemon(ctx) as client:
            for container_id, name in containers:
                records.extend((r.time, name, r) for r in client.logs(container_id))
        pending: dict[str, dict[str, bytes]] = {}
        for _, name, record in sorted(records, key=lambda item: item[0]):
            write(name, record, pending.setdefault(name, {}))
        return 0

    errors: list[HyperError] = []

    def follow(container_id: str, name: str) -> None:
        pending: dict[str, bytes] = {}
        try:
            with connect_daemon(ctx) as client:
                for record in client.logs(container_id, follow=True):
                    write(name, record, pending)
        except HyperError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=follow, args=c, daemon=True) for c in containers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return 0
