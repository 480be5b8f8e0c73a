"""Entry point of the `hyper` command: builds the parser, runs one command,
and turns errors into Docker's exit statuses (125 when Hyper itself fails)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from hyper import __version__, trace
from hyper.cli.context import CliContext
from hyper.errors import HyperError
from hyper.paths import default_paths
from hyper.paths import prepare as prepare_paths

# Docker's convention: 125 is "the runtime failed", 126 "cannot invoke",
# 127 "not found"; anything else is the container's own status.
EXIT_HYPER_FAILED = 125

CommandFunc = Callable[[argparse.Namespace, CliContext], int]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; for `run` (given as `command`) the parser of
    `run` alone, whose modules are all it imports: the CLI's own cost is part
    of every run's."""
    from hyper.cli import run_commands

    if command == "run":
        parser = argparse.ArgumentParser(prog="hyper")
        run_commands.register(parser.add_subparsers(dest="command", metavar="COMMAND"))
        return parser
    from hyper.cli import (
        container_commands,
        copy_commands,
        image_commands,
        inspect_commands,
        kube_commands,
        lifecycle_commands,
        network_commands,
        pod_commands,
        session_commands,
        tenant_commands,
        volume_commands,
    )

    parser = argparse.ArgumentParser(
        prog="hyper",
        description="Run OCI/Docker images inside their own lightweight virtual machines.",
    )
    parser.add_argument("--version", action="version", version=f"hyper {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    run_commands.register(subparsers)
    image_commands.register(subparsers)
    container_commands.register(subparsers)
    lifecycle_commands.register(subparsers)
    session_commands.register(subparsers)
    inspect_commands.register(subparsers)
    copy_commands.register(subparsers)
    network_commands.register(subparsers)
    volume_commands.register(subparsers)
    pod_commands.register(subparsers)
    kube_commands.register(subparsers)
    tenant_commands.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    trace.set_role("cli")
    trace.mark("cli started")  # the interpreter and this module's imports are behind
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(words[0] if words else None)
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:
        # argparse exits 2 on a bad flag; Docker says 125 for that.
        code = exc.code if isinstance(exc.code, int) else 1
        return 0 if code == 0 else EXIT_HYPER_FAILED
    trace.mark("command parsed")  # and the command's modules imported
    func: CommandFunc | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    ctx = CliContext(paths=default_paths())
    # Containers' environments, logs and disks are this user's alone.
    os.umask(0o077)
    try:
        prepare_paths(ctx.paths)
        return func(args, ctx)
    except HyperError as exc:
        print(f"hyper: {exc}", file=sys.stderr)
        return EXIT_HYPER_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A bug or an unforeseen system error: one line, Docker's 125, and the
        # traceback for whoever debugs it.
        if os.environ.get("HYPER_DEBUG"):
            raise
        detail = f"{type(exc).__name__}: {exc}"
        print(f"hyper: unexpected error: {detail} (set HYPER_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_HYPER_FAILED
    finally:
        trace.mark("cli exiting")


if __name__ == "__main__":
    sys.exit(main())
