"""`hyper volume create|ls|inspect|rm|prune`: the local volume store, used directly (no hyperd needed)."""

from __future__ import annotations

import argparse
import json

from hyper.cli.context import CliContext
from hyper.cli.image_commands import human_size
from hyper.errors import HyperError, InvalidArgument
from hyper.storage.volumes import VolumeStore


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    volume = subparsers.add_parser("volume", help="manage volumes")
    commands = volume.add_subparsers(dest="volume_command", metavar="COMMAND", required=True)

    create = commands.add_parser("create", help="create a volume")
    create.add_argument("name", nargs="?", metavar="NAME", help="a random name when left out")
    create.add_argument("-d", "--driver", default="local", help="only local")
    create.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE")
    create.set_defaults(func=cmd_create)

    ls = commands.add_parser("ls", aliases=["list"], help="list volumes")
    ls.add_argument("-q", "--quiet", action="store_true", help="only names")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.set_defaults(func=cmd_ls)

    inspect = commands.add_parser("inspect", help="show volumes as JSON")
    inspect.add_argument("names", nargs="+", metavar="NAME")
    inspect.set_defaults(func=cmd_inspect)

    rm = commands.add_parser("rm", aliases=["remove"], help="remove volumes")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.add_argument("-f", "--force", action="store_true", help="remove volumes in use too")
    rm.set_defaults(func=cmd_rm)

    prune = commands.add_parser("prune", help="remove unused anonymous volumes (-a: all unused)")
    prune.add_argument("-a", "--all", action="store_true", help="named volumes too")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask (Hyper never asks)")
    prune.set_defaults(func=cmd_prune)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or (not sep and what == "option"):
            raise InvalidArgument(f"invalid {what} {item!r}", hint="use KEY=VALUE")
        result[key] = value
    return result


def _store(ctx: CliContext) -> VolumeStore:
    return VolumeStore(ctx.paths.volumes, ctx.paths.containers)


def cmd_create(args: argparse.Namespace, ctx: CliContext) -> int:
    with _store(ctx) as store:
        volume = store.create(
            args.name,
            labels=_pairs(args.label, "label"),
            options=_pairs(args.opt, "option"),
            driver=args.driver,
        )
    print(volume.name, file=ctx.stdout)
    return 0


def cmd_ls(args: argparse.Namespace, ctx: CliContext) -> int:
    with _store(ctx) as store:
        volumes = store.all()
    if args.quiet:
        lines = [v.name for v in volumes]
    elif args.format == "json":
        lines = [
            json.dumps({"Driver": "local", "Name": v.name, "Mountpoint": str(v.mountpoint)}) for v in volumes
        ]
    else:
        width = max([len("VOLUME NAME"), *(len(v.name) for v in volumes)])
        lines = [f"{'DRIVER':<10}{'VOLUME NAME':<{width}}"] + [
            f"{'local':<10}{v.name:<{width}}" for v in volumes
        ]
    for line in lines:
        print(line.rstrip(), file=ctx.stdout)
    return 0


def cmd_inspect(args: argparse.Namespace, ctx: CliContext) -> int:
    documents, failures = [], []
    with _store(ctx) as store:
        for name in args.names:
            try:
                volume = store.get(name)
            except HyperError as exc:
                failures.append(exc)
                continue
            documents.append(volume.document())
    print(json.dumps(documents, indent=4), file=ctx.stdout)
    for failure in failures[:-1]:
        print(f"hyper: {failure}", file=ctx.stderr)
    if failures:
        raise failures[-1]
    return 0


def cmd_rm(args: argparse.Namespace, ctx: CliContext) -> int:
    failures = []
    with _store(ctx) as store:
        for name in args.names:
            try:
                store.remove(name, force=args.force)
            except HyperError as exc:
                failures.append(exc)
                continue
            print(name, file=ctx.stdout)
    for failure in failures[:-1]:
        print(f"hyper: {failure}", file=ctx.stderr)
    if failures:
        raise failures[-1]
    return 0


def cmd_prune(args: argparse.Namespace, ctx: CliContext) -> int:
    with _store(ctx) as store:
        removed, reclaimed = store.prune(all_volumes=args.all)
    if removed:
        print("Deleted Volumes:", file=ctx.stdout)
        for name in removed:
            print(name, file=ctx.stdout)
        print(file=ctx.stdout)
    print(f"Total reclaimed space: {human_size(reclaimed)}", file=ctx.stdout)
    return 0
