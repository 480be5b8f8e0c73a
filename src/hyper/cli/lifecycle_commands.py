"""`hyper create`, `start`, `restart`, `pause`, `unpause` and `rename`, through hyperd.

A container's lifecycle after `run -d`, with Docker's flags and output: `create`
prints the new container's ID, the others the name they were given for each
container they acted on (`rename` prints nothing). Several containers: each
is tried, failures are reported, and the status is 1 if any failed.
`start -a` attaches before it starts, as Docker does, so no output is missed,
and exits with the container's status.
"""

from __future__ import annotations

import argparse

from hyper.cli import run_commands
from hyper.cli.client import DaemonClient
from hyper.cli.container_commands import add_stop_timeout, connect_daemon, for_each
from hyper.cli.context import CliContext
from hyper.errors import InvalidArgument


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    create = subparsers.add_parser("create", help="create a new container without starting it")
    run_commands.add_container_options(create)
    create.add_argument("image", metavar="IMAGE")
    create.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    create.set_defaults(func=create_command)

    start = subparsers.add_parser("start", help="start stopped or created containers")
    start.add_argument(
        "-a", "--attach", action="store_true", help="attach its output; exit with the container's status"
    )
    start.add_argument("-i", "--interactive", action="store_true", help="attach the container's stdin")
    start.add_argument("--detach-keys", metavar="KEYS", help="the keys that detach (default: ctrl-p,ctrl-q)")
    start.add_argument("containers", nargs="+", metavar="CONTAINER")
    start.set_defaults(func=start_command)

    restart = subparsers.add_parser("restart", help="restart containers")
    add_stop_timeout(restart)
    restart.add_argument("containers", nargs="+", metavar="CONTAINER")
    restart.set_defaults(func=restart_command)

    pause = subparsers.add_parser("pause", help="stop every vCPU of the containers' VMs")
    pause.add_argument("containers", nargs="+", metavar="CONTAINER")
    pause.set_defaults(func=pause_command)

    unpause = subparsers.add_parser("unpause", help="resume paused containers")
    unpause.add_argument("containers", nargs="+", metavar="CONTAINER")
    unpause.set_defaults(func=unpause_command)

    rename = subparsers.add_parser("rename", help="rename a container")
    rename.add_argument("container", metavar="CONTAINER")
    rename.add_argument("new_name", metavar="NEW_NAME")
    rename.set_defaults(func=rename_command)


def create_command(args: argparse.Namespace, ctx: CliContext) -> int:
    print(run_commands.create_in_daemon(args, ctx, start=False), file=ctx.stdout)
    return 0


def start_command(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.attach or args.interactive:
        if len(args.containers) > 1:
            raise InvalidArgument(
                "you cannot start and attach multiple containers at once", hint="name one container"
            )
        from hyper.cli.session_commands import start_attached

        return start_attached(args, ctx)

    def start(client: DaemonClient, ref: str) -> str:
        client.start(ref)
        return ref

    return for_each(args.containers, start, ctx)


def restart_command(args: argparse.Namespace, ctx: CliContext) -> int:
    def restart(client: DaemonClient, ref: str) -> str:
        client.restart(ref, timeout=args.timeout)
        return ref

    return for_each(args.containers, restart, ctx)


def pause_command(args: argparse.Namespace, ctx: CliContext) -> int:
    def pause(client: DaemonClient, ref: str) -> str:
        client.pause(ref)
        return ref

    return for_each(args.containers, pause, ctx)


def unpause_command(args: argparse.Namespace, ctx: CliContext) -> int:
    def unpause(client: DaemonClient, ref: str) -> str:
        client.unpause(ref)
        return ref

    return for_each(args.containers, unpause, ctx)


def rename_command(args: argparse.Namespace, ctx: CliContext) -> int:
    if not args.new_name:
        raise InvalidArgument("the new name is empty", hint="give the container a name")
    with connect_daemon(ctx) as client:
        client.rename(args.container, args.new_name)
    return 0
