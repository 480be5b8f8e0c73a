"""`hyper pull`, `push`, `login`, `logout`, `tag`, `save` and `hyper image inspect|history|prune`.

Output follows Docker's (`latest: Pulling from library/busybox`, per-layer
statuses, `Digest:` and `Status:` lines, the pushed digest) so that scripts
written against `docker` keep working.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from hyper.cli.context import CliContext
from hyper.errors import InvalidArgument, NotFound
from hyper.image import Image, ImageStore, parse_reference
from hyper.image.save import FORMAT_DOCKER, FORMATS
from hyper.image.store import familiar_name, repo_digests
from hyper.image.usage import images_in_use

# The registry client (httpx) and the progress display (rich) are imported by
# the commands that use them: every other `hyper` command starts faster.
if TYPE_CHECKING:
    from hyper.image.registry.platform import Platform


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pull = subparsers.add_parser("pull", help="pull an image from a registry")
    pull.add_argument("image", metavar="NAME[:TAG|@DIGEST]")
    pull.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="pull for another platform")
    pull.add_argument("-q", "--quiet", action="store_true", help="print only the image name")
    pull.set_defaults(func=cmd_pull)

    push = subparsers.add_parser("push", help="push an image to a registry")
    push.add_argument("image", metavar="NAME[:TAG]")
    push.add_argument("-q", "--quiet", action="store_true", help="print only the digest")
    push.set_defaults(func=cmd_push)

    login_parser = subparsers.add_parser("login", help="log in to a registry")
    login_parser.add_argument("server", nargs="?", metavar="SERVER")
    login_parser.add_argument("-u", "--username")
    login_parser.add_argument("-p", "--password")
    login_parser.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login_parser.set_defaults(func=cmd_login)

    logout_parser = subparsers.add_parser("logout", help="log out from a registry")
    logout_parser.add_argument("server", nargs="?", metavar="SERVER")
    logout_parser.set_defaults(func=cmd_logout)

    tag = subparsers.add_parser("tag", help="give an image another name")
    tag.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    tag.add_argument("target", metavar="TARGET_IMAGE[:TAG]")
    tag.set_defaults(func=cmd_tag)

    save = subparsers.add_parser("save", help="write images to a tar archive")
    save.add_argument("images", nargs="+", metavar="IMAGE")
    save.add_argument("-o", "--output", type=Path, help="write to FILE instead of stdout")
    save.add_argument("--format", choices=FORMATS, default=FORMAT_DOCKER, help="archive format")
    save.set_defaults(func=cmd_save)

    image = subparsers.add_parser("image", help="manage images")
    image_commands = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    inspect = image_commands.add_parser("inspect", help="show images in detail (JSON)")
    inspect.add_argument("images", nargs="+", metavar="IMAGE")
    inspect.set_defaults(func=cmd_inspect)
    history = image_commands.add_parser("history", help="show how an image was built")
    history.add_argument("image", metavar="IMAGE")
    history.add_argument("--no-trunc", action="store_true")
    history.add_argument("--format", choices=["table", "json"], default="table")
    history.set_defaults(func=cmd_history)
    prune = image_commands.add_parser("prune", help="remove unused images")
    prune.add_argument("-a", "--all", action="store_true", help="remove every image no container uses")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask (accepted for Docker's sake)")
    prune.set_defaults(func=cmd_prune)


# -- commands ------------------------------------------------------------------


def cmd_pull(args: argparse.Namespace, ctx: CliContext) -> int:
    from hyper.image.registry import parse_platform

    platform = parse_platform(args.platform) if args.platform else None
    store = ImageStore(ctx.paths.images)
    pull_with_display(store, args.image, ctx.stdout, quiet=args.quiet, platform=platform)
    print(str(parse_reference(args.image)), file=ctx.stdout)
    return 0


def pull_with_display(
    store: ImageStore, text: str, stream: TextIO, *, quiet: bool = False, platform: Platform | None = None
) -> Image:
    """Pull `text` showing Docker's lines and per-layer progress on `stream`; `hyper run` uses it too."""
    from hyper.cli.progress import progress_display
    from hyper.image.registry import pull_image

    reference = parse_reference(text)
    before = _current_id(store, str(reference))
    name = familiar_name(str(reference)) if reference.digest is None else text
    with progress_display(stream, quiet=quiet) as progress:
        if not quiet:
            if "@" not in text and ":" not in text.rsplit("/", 1)[-1]:
                print("Using default tag: latest", file=stream)
            target = reference.tag or reference.digest
            print(f"{target}: Pulling from {reference.familiar_repository}", file=stream, flush=True)
        image = pull_image(store, text, platform=platform, progress=progress)
    if not quiet:
        print(f"Digest: {image.manifest_digest}", file=stream)
        state = "Image is up to date" if before == image.id else "Downloaded newer image"
        print(f"Status: {state} for {name}", file=stream, flush=True)
    return image


def cmd_push(args: argparse.Namespace, ctx: CliContext) -> int:
    from hyper.cli.progress import progress_display
    from hyper.image.registry import push_image

    store = ImageStore(ctx.paths.images)
    with progress_display(ctx.stdout, quiet=args.quiet) as progress:
        result = push_image(store, args.image, progress=progress)
    if args.quiet:
        print(result.digest, file=ctx.stdout)
    else:
        tag = parse_reference(result.reference).tag
        print(f"{tag}: digest: {result.digest} size: {result.size}", file=ctx.stdout)
    return 0


def cmd_login(args: argparse.Namespace, ctx: CliContext) -> int:
    from hyper.image.registry import Credentials, login

    username = args.username
    if args.password_stdin:
        if args.password:
            raise InvalidArgument("--password and --password-stdin are exclusive", hint="give one of them")
        if not username:
            raise InvalidArgument("--password-stdin needs --username", hint="add -u USER")
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not username:
            if not sys.stdin.isatty():
                raise InvalidArgument("no user name given", hint="use -u USER --password-stdin")
            username = input("Username: ").strip()
        password = args.password or getpass.getpass("Password: ")
    if not username or not password:
        raise InvalidArgument("a user name and a password are needed", hint="use -u USER --password-stdin")
    login(args.server, Credentials(username, password))
    print("Login Succeeded", file=ctx.stdout)
    return 0


def cmd_logout(args: argparse.Namespace, ctx: CliContext) -> int:
    from hyper.image.registry import logout

    host, removed = logout(args.server)
    if removed:
        print(f"Removing login credentials for {host}", file=ctx.stdout)
    else:
        print(f"Not logged in to {host}", file=ctx.stdout)
    return 0


def cmd_tag(args: argparse.Namespace, ctx: CliContext) -> int:
    ImageStore(ctx.paths.images).tag(args.source, args.target)
    return 0


def cmd_save(args: argparse.Namespace, ctx: CliContext) -> int:
    from hyper.image.save import save_images

    store = ImageStore(ctx.paths.images)
    if args.output is not None:
        save_images(store, args.images, args.output, fmt=args.format)
        return 0
    if sys.stdout.isatty():
        raise InvalidArgument(
            "refusing to write an archive to a terminal", hint="use -o FILE or redirect stdout"
        )
    scratch = ctx.paths.images / "ingest"
    scratch.mkdir(parents=True, exist_ok=True)
    target = scratch / f"save-stdout-{id(args)}.tar"
    try:
        save_images(store, args.images, target, fmt=args.format)
        with target.open("rb") as source:
            while chunk := source.read(1 << 20):
                sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    finally:
        target.unlink(missing_ok=True)
    return 0


def cmd_inspect(args: argparse.Namespace, ctx: CliContext) -> int:
    store = ImageStore(ctx.paths.images)
    documents = []
    missing: list[str] = []
    for name in args.images:
        try:
            image = store.get(name)
        except NotFound:
            missing.append(name)
            continue
        documents.append(inspect_document(image, store.config_document(image)))
    print(json.dumps(documents, indent=4), file=ctx.stdout)
    if missing:
        raise NotFound(f"no such image: {', '.join(missing)}", hint="list images with `hyper images`")
    return 0


def cmd_history(args: argparse.Namespace, ctx: CliContext) -> int:
    store = ImageStore(ctx.paths.images)
    image = store.get(args.image)
    rows = history_rows(image, store.config_document(image), store.layer_sizes(image))
    if args.format == "json":
        for row in rows:
            print(json.dumps(row), file=ctx.stdout)
        return 0
    from hyper.cli.image_commands import human_size

    header = ("IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT")
    table = [header]
    for row in rows:
        created_by = row["CreatedBy"] if args.no_trunc else _truncate(row["CreatedBy"], 45)
        table.append((row["ID"], row["CreatedAt"], created_by, human_size(row["Size"]), row["Comment"]))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=ctx.stdout)
    return 0


def cmd_prune(args: argparse.Namespace, ctx: CliContext) -> int:
    store = ImageStore(ctx.paths.images)
    report = store.prune(all_unused=args.all, in_use=images_in_use(ctx.paths.containers))
    if report.deleted:
        print("Deleted Images:", file=ctx.stdout)
        for name in report.untagged:
            print(f"untagged: {name}", file=ctx.stdout)
        for image_id in report.deleted:
            print(f"deleted: {image_id}", file=ctx.stdout)
        print(file=ctx.stdout)
    from hyper.cli.image_commands import human_size

    print(f"Total reclaimed space: {human_size(report.reclaimed_bytes)}", file=ctx.stdout)
    return 0


# -- pure helpers --------------------------------------------------------------


def _current_id(store: ImageStore, reference: str) -> str | None:
    try:
        return store.get(reference).id
    except NotFound:
        return None


def inspect_document(image: Image, config: dict[str, Any]) -> dict[str, Any]:
    """Docker's `image inspect` shape, from the store's view of the image and its config blob."""
    return {
        "Id": image.id,
        "RepoTags": [familiar_name(tag) for tag in image.repo_tags],
        "RepoDigests": repo_digests(image),
        "Created": image.created or "",
        "Author": config.get("author", ""),
        "Architecture": image.architecture,
        "Variant": config.get("variant", ""),
        "Os": image.os,
        "Size": image.size,
        "Config": config.get("config") or {},
        "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)},
        "Metadata": {"ManifestDigest": image.manifest_digest, "Layers": list(image.layers)},
    }


def history_rows(image: Image, config: dict[str, Any], layer_sizes: list[int]) -> list[dict[str, Any]]:
    """Newest first, like Docker; an entry that made a layer gets that layer's size."""
    history = config.get("history")
    entries = [entry for entry in history if isinstance(entry, dict)] if isinstance(history, list) else []
    if not entries:
        entries = [{} for _ in image.diff_ids]
    sizes = iter(layer_sizes)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        empty = bool(entry.get("empty_layer"))
        rows.append(
            {
                "ID": "<missing>",
                "CreatedAt": str(entry.get("created", "")),
                "CreatedBy": str(entry.get("created_by", "")),
                "Size": 0 if empty else next(sizes, 0),
                "Comment": str(entry.get("comment", "")),
            }
        )
    rows.reverse()
    if rows:
        rows[0]["ID"] = image.id.removeprefix("sha256:")[:12]
    return rows


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
