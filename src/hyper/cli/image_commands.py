"""`hyper load`, `import`, `images` and `rmi`: the image store from the command line.

The registry and archive commands (`pull`, `push`, `save`, `tag`, `image …`) are in
`registry_commands`, registered from here.

Output follows Docker's (`Loaded image: …`, the `images` table, `Untagged:`/
`Deleted:` lines) so scripts written for `docker` keep working. Formatting is done
by pure functions over `Image` values; the command functions only call the store.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from hyper.cli import registry_commands
from hyper.cli.context import CliContext
from hyper.errors import HyperError, InvalidArgument
from hyper.image import Image, ImageConfig, ImageStore, parse_reference
from hyper.image.usage import images_in_use

_CHANGE_HINT = "use e.g. --change 'CMD [\"sh\"]', ENTRYPOINT, ENV K=V, WORKDIR, USER, LABEL"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    load = subparsers.add_parser("load", help="load images from a tar archive (docker save)")
    load.add_argument("-i", "--input", type=Path, help="read from FILE instead of stdin")
    load.add_argument("-q", "--quiet", action="store_true", help="suppress the load output")
    load.set_defaults(func=cmd_load)

    imp = subparsers.add_parser("import", help="create an image from a root filesystem tar")
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument("reference", metavar="NAME[:TAG]")
    imp.add_argument("-c", "--change", action="append", default=[], help="apply a Dockerfile instruction")
    imp.set_defaults(func=cmd_import)

    images = subparsers.add_parser("images", help="list images")
    images.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    images.add_argument("--no-trunc", action="store_true", help="show full image IDs")
    images.add_argument("--digests", action="store_true", help="show manifest digests")
    images.add_argument("--format", choices=["table", "json"], default="table")
    images.set_defaults(func=cmd_images)

    rmi = subparsers.add_parser("rmi", help="remove images")
    rmi.add_argument("images", nargs="+", metavar="IMAGE")
    rmi.add_argument("-f", "--force", action="store_true", help="remove an image with many tags or in use")
    rmi.set_defaults(func=cmd_rmi)

    registry_commands.register(subparsers)


# -- commands ------------------------------------------------------------------


def cmd_load(args: argparse.Namespace, ctx: CliContext) -> int:
    store = ImageStore(ctx.paths.images)
    if args.input is not None:
        loaded = store.load(args.input)
    else:
        if sys.stdin.isatty():
            raise InvalidArgument(
                "no image archive given and stdin is a terminal",
                hint="use `hyper load -i FILE` or pipe an archive into `hyper load`",
            )
        ingest = ctx.paths.images / "ingest"
        ingest.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=ingest, prefix="stdin-") as copy:
            shutil.copyfileobj(sys.stdin.buffer, copy, 1 << 20)
            copy.flush()
            loaded = store.load(Path(copy.name))
    for line in load_lines(loaded):
        print(line, file=ctx.stdout)
    return 0


def cmd_import(args: argparse.Namespace, ctx: CliContext) -> int:
    config = ImageConfig()
    for change in args.change:
        config = apply_change(config, change)
    image = ImageStore(ctx.paths.images).import_rootfs(args.file, args.reference, config)
    print(image.id, file=ctx.stdout)
    return 0


def cmd_images(args: argparse.Namespace, ctx: CliContext) -> int:
    images = ImageStore(ctx.paths.images).images()
    now = datetime.datetime.now(datetime.UTC)
    if args.quiet:
        lines = list(dict.fromkeys(_image_id(image, args.no_trunc) for image in images))
    elif args.format == "json":
        lines = [json.dumps(row) for row in image_rows(images, now, no_trunc=args.no_trunc)]
    else:
        lines = format_table(image_rows(images, now, no_trunc=args.no_trunc), digests=args.digests)
    for line in lines:
        print(line, file=ctx.stdout)
    return 0


def cmd_rmi(args: argparse.Namespace, ctx: CliContext) -> int:
    store = ImageStore(ctx.paths.images)
    in_use = images_in_use(ctx.paths.containers)
    failures: list[HyperError] = []
    for name in args.images:
        try:
            lines = store.remove(name, force=args.force, in_use=in_use)
        except HyperError as exc:
            failures.append(exc)
            continue
        for line in lines:
            print(line, file=ctx.stdout)
    for failure in failures[:-1]:
        print(f"hyper: {failure}", file=ctx.stderr)
    if failures:
        raise failures[-1]
    return 0


# -- pure helpers --------------------------------------------------------------


def load_lines(images: Iterable[Image]) -> list[str]:
    lines: list[str] = []
    for image in images:
        if image.repo_tags:
            lines.extend(f"Loaded image: {_familiar(tag)}" for tag in image.repo_tags)
        else:
            lines.append(f"Loaded image ID: {image.id}")
    return lines


def image_rows(
    images: Sequence[Image], now: datetime.datetime, *, no_trunc: bool = False
) -> list[dict[str, Any]]:
    """One row per tag (one `<none>` row for an untagged image), Docker's columns."""
    rows = []
    for image in images:
        names = [_split_tag(tag) for tag in image.repo_tags] or [("<none>", "<none>")]
        for repository, tag in names:
            rows.append(
                {
                    "Repository": repository,
                    "Tag": tag,
                    "ID": _image_id(image, no_trunc),
                    "CreatedAt": image.created or "",
                    "CreatedSince": human_since(image.created, now),
                    "Size": human_size(image.size),
                    "Digest": image.manifest_digest or "<none>",
                }
            )
    return rows


def format_table(rows: Sequence[dict[str, Any]], *, digests: bool = False) -> list[str]:
    header: tuple[str, ...] = ("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")
    keys: tuple[str, ...] = ("Repository", "Tag", "ID", "CreatedSince", "Size")
    if digests:
        header = (*header[:2], "DIGEST", *header[2:])
        keys = (*keys[:2], "Digest", *keys[2:])
    table = [header, *[tuple(str(row[key]) for key in keys) for row in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return [
        "   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]


def human_size(size: int) -> str:
    """Docker's decimal sizes with three significant digits: `4.26MB`."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.3g}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_since(created: str | None, now: datetime.datetime) -> str:
    if not created:
        return "N/A"
    try:
        then = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "N/A"
    if then.tzinfo is None:
        then = then.replace(tzinfo=datetime.UTC)
    seconds = int((now - then).total_seconds())
    if seconds < 1:
        return "Less than a second ago"
    for unit, length in (
        ("year", 31536000),
        ("month", 2592000),
        ("week", 604800),
        ("day", 86400),
        ("hour", 3600),
        ("minute", 60),
    ):
        if seconds >= length:
            count = seconds // length
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return f"{seconds} second{'s' if seconds > 1 else ''} ago"


def apply_change(config: ImageConfig, change: str) -> ImageConfig:
    """Apply one Dockerfile-style instruction (`docker import --change`)."""
    instruction, _, argument = change.strip().partition(" ")
    instruction, argument = instruction.upper(), argument.strip()
    if not argument:
        raise InvalidArgument(f"--change {change!r} has no argument", hint=_CHANGE_HINT)
    if instruction in ("CMD", "ENTRYPOINT"):
        command = _command_argument(argument, change)
        if instruction == "CMD":
            return replace(config, cmd=command)
        return replace(config, entrypoint=command)
    if instruction == "ENV":
        key, sep, value = argument.partition("=")
        if not sep:
            key, _, value = argument.partition(" ")
        env = tuple(e for e in config.env if e.partition("=")[0] != key)
        return replace(config, env=(*env, f"{key}={value.strip()}"))
    if instruction == "WORKDIR":
        return replace(config, working_dir=argument)
    if instruction == "USER":
        return replace(config, user=argument)
    if instruction == "STOPSIGNAL":
        return replace(config, stop_signal=argument)
    if instruction == "LABEL":
        key, _, value = argument.partition("=")
        labels = dict(config.labels)
        labels[key.strip()] = value.strip().strip('"')
        return replace(config, labels=tuple(sorted(labels.items())))
    raise InvalidArgument(f"--change {change!r}: unsupported instruction", hint=_CHANGE_HINT)


def _command_argument(argument: str, change: str) -> tuple[str, ...]:
    if argument.startswith("["):
        try:
            value = json.loads(argument)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"--change {change!r}: bad JSON: {exc}", hint=_CHANGE_HINT) from exc
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"--change {change!r}: want a list of strings", hint=_CHANGE_HINT)
        return tuple(value)
    return ("/bin/sh", "-c", argument)


def _familiar(tag: str) -> str:
    reference = parse_reference(tag)
    return f"{reference.familiar_repository}:{reference.tag}"


def _split_tag(tag: str) -> tuple[str, str]:
    reference = parse_reference(tag)
    return reference.familiar_repository, reference.tag or "<none>"


def _image_id(image: Image, no_trunc: bool) -> str:
    return image.id if no_trunc else image.id.removeprefix("sha256:")[:12]
