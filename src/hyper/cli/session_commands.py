"""`hyper exec`, `attach` and `start -a`: the local terminal joined to a process
in a container, over the Docker API's hijacked connections (cli.streams).

As in Docker: with a TTY the local terminal is raw and its window size
follows SIGWINCH; without one stdout and stderr stay apart and, for attach,
signals the CLI receives are passed to the container (`--sig-proxy`). The
detach keys (ctrl-p,ctrl-q by default) leave the session with the process
running, and the exit status is then 0; otherwise it is the process's own:
an exec's from the exec's record (126/127 when it could not start), a
container's from waiting for it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

from hyper.cli.client import DaemonClient, ExecConfig
from hyper.cli.container_commands import connect_daemon
from hyper.cli.context import CliContext
from hyper.cli.run_commands import client_env
from hyper.cli.streams import open_hijacked, relay
from hyper.errors import FailedPrecondition, HyperError, InvalidArgument
from hyper.runtime.detach import parse_detach_keys
from hyper.runtime.stdio import FORWARDED_SIGNALS, Attachment, raw_terminal

# What `--sig-proxy` passes on: what a foreground `hyper run` forwards.
PROXIED_SIGNALS = FORWARDED_SIGNALS
DETACHED_MESSAGE = "read escape sequence"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    exec_ = subparsers.add_parser("exec", help="run a command in a running container")
    exec_.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    exec_.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    exec_.add_argument("-d", "--detach", action="store_true", help="run the command in the background")
    exec_.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE")
    exec_.add_argument("-w", "--workdir", metavar="DIR")
    exec_.add_argument("-u", "--user", metavar="USER[:GROUP]")
    exec_.add_argument("--detach-keys", metavar="KEYS", help="the keys that detach (default: ctrl-p,ctrl-q)")
    exec_.add_argument("container", metavar="CONTAINER")
    exec_.add_argument("command", metavar="COMMAND")
    exec_.add_argument("args", nargs=argparse.REMAINDER, metavar="ARG")
    exec_.set_defaults(func=exec_command)

    attach = subparsers.add_parser("attach", help="attach the terminal to a running container")
    attach.add_argument("--no-stdin", action="store_true", help="do not attach stdin")
    attach.add_argument("--detach-keys", metavar="KEYS", help="the keys that detach (default: ctrl-p,ctrl-q)")
    attach.add_argument(
        "--sig-proxy",
        type=_boolean,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="pass the signals hyper receives to the container (default: true; not with a TTY)",
    )
    attach.add_argument("container", metavar="CONTAINER")
    attach.set_defaults(func=attach_command)


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


# ---- exec ------------------------------------------------------------------------------


def exec_command(args: argparse.Namespace, ctx: CliContext) -> int:
    attachment = Attachment()
    if args.interactive and args.tty and not args.detach and not attachment.stdin_is_tty():
        raise InvalidArgument("the input device is not a TTY", hint="drop -t, or run from a terminal")
    if args.detach_keys:
        parse_detach_keys(args.detach_keys)
    config = ExecConfig(
        command=(args.command, *args.args),
        env=client_env(args.env, os.environ),
        workdir=args.workdir,
        user=args.user,
        tty=args.tty,
        stdin=args.interactive,
        detach=args.detach,
        detach_keys=args.detach_keys,
    )
    with connect_daemon(ctx) as client:
        exec_id = client.create_exec(args.container, config)
        if args.detach:
            client.start_exec_detached(exec_id, tty=args.tty)
            return 0
        detached = asyncio.run(_exec_session(client, exec_id, config, attachment))
        if detached:
            print(DETACHED_MESSAGE, file=ctx.stderr)
            return 0
        details = client.exec_details(exec_id)
    return 0 if details.exit_code is None else details.exit_code


async def _exec_session(
    client: DaemonClient, exec_id: str, config: ExecConfig, attachment: Attachment
) -> bool:
    body: dict[str, object] = {"Detach": False, "Tty": config.tty}
    if config.tty:
        body["ConsoleSize"] = list(attachment.terminal_size())
    conn = await open_hijacked(client.socket_path, f"/docker/exec/{quote(exec_id, safe='')}/start", body=body)
    keys = parse_detach_keys(config.detach_keys) if config.stdin else None

    def resize(rows: int, cols: int) -> None:
        client.resize_exec(exec_id, rows, cols)

    with (
        _window_size_forwarded(resize, attachment, config.tty),
        raw_terminal(attachment.stdin_fd, config.tty and config.stdin),
    ):
        return await relay(conn, attachment, tty=config.tty, stdin=config.stdin, detach_keys=keys)


# ---- attach and start -a -----------------------------------------------------------------


def attach_command(args: argparse.Namespace, ctx: CliContext) -> int:
    attachment = Attachment()
    parse_detach_keys(args.detach_keys)
    with connect_daemon(ctx) as client:
        details = client.container_details(args.container)
        if details.paused:
            raise FailedPrecondition("You cannot attach to a paused container, unpause it first")
        if not details.running:
            raise FailedPrecondition("You cannot attach to a stopped container, start it first")
        stdin = details.open_stdin and not args.no_stdin
        if details.tty and stdin and not attachment.stdin_is_tty():
            raise InvalidArgument(
                "the input device is not a TTY", hint="use --no-stdin, or attach from a terminal"
            )
        session = _AttachSession(
            client, details.id, details.tty, stdin, detach_keys=args.detach_keys, attachment=attachment
        )
        detached = asyncio.run(session.run(start=False, sig_proxy=args.sig_proxy))
        return _after_attach(client, details.id, detached, ctx)


def start_attached(args: argparse.Namespace, ctx: CliContext) -> int:
    """`start -a [-i]`: attach first, then start, so no output is missed."""
    attachment = Attachment()
    parse_detach_keys(args.detach_keys)
    with connect_daemon(ctx) as client:
        details = client.container_details(args.containers[0])
        stdin = args.interactive and details.open_stdin
        if details.tty and stdin and not attachment.stdin_is_tty():
            raise InvalidArgument(
                "the input device is not a TTY", hint="drop -i, or start it from a terminal"
            )
        session = _AttachSession(
            client, details.id, details.tty, stdin, detach_keys=args.detach_keys, attachment=attachment
        )
        detached = asyncio.run(session.run(start=True, sig_proxy=True))
        return _after_attach(client, details.id, detached, ctx)


def _after_attach(client: DaemonClient, container_id: str, detached: bool, ctx: CliContext) -> int:
    if detached:
        print(DETACHED_MESSAGE, file=ctx.stderr)
        return 0
    return client.wait(container_id)


@dataclass(frozen=True)
class _AttachSession:
    """The terminal joined to a container's main process (attach, start -a)."""

    client: DaemonClient
    container_id: str
    tty: bool
    stdin: bool
    detach_keys: str | None
    attachment: Attachment

    async def run(self, *, start: bool, sig_proxy: bool) -> bool:
        query = {"stream": "1", "stdin": "1" if self.stdin else "0", "stdout": "1", "stderr": "1"}
        if self.detach_keys:
            query["detachKeys"] = self.detach_keys
        path = f"/docker/containers/{quote(self.container_id, safe='')}/attach"
        conn = await open_hijacked(self.client.socket_path, path, query=query)
        if start:
            # The container's input is read only once it runs: nothing typed is lost.
            try:
                await asyncio.to_thread(self.client.start, self.container_id)
            except BaseException:
                await conn.close()
                raise
        if self.tty:
            await asyncio.to_thread(self._resize, *self.attachment.terminal_size())
        keys = parse_detach_keys(self.detach_keys) if self.stdin else None
        with (
            _window_size_forwarded(self._resize, self.attachment, self.tty),
            _signals_proxied(self.client, self.container_id, sig_proxy and not self.tty),
            raw_terminal(self.attachment.stdin_fd, self.tty and self.stdin),
        ):
            return await relay(conn, self.attachment, tty=self.tty, stdin=self.stdin, detach_keys=keys)

    def _resize(self, rows: int, cols: int) -> None:
        self.client.resize_container(self.container_id, rows, cols)


# ---- signals -------------------------------------------------------------------------------


def _quietly(action: Callable[[], None]) -> None:
    # A resize or a proxied signal that fails (the process just ended) changes nothing.
    with contextlib.suppress(HyperError):
        action()


@contextlib.contextmanager
def _in_background(handlers: dict[int, Callable[[], None]]) -> Iterator[None]:
    """Run each signal's handler in a thread (they make requests) while the block runs."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Future[None]] = set()

    def on_signal(action: Callable[[], None]) -> None:
        task = asyncio.ensure_future(asyncio.to_thread(_quietly, action))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for signum, action in handlers.items():
        loop.add_signal_handler(signum, on_signal, action)
    try:
        yield
    finally:
        for signum in handlers:
            loop.remove_signal_handler(signum)
        for task in tasks:
            task.cancel()


def _window_size_forwarded(
    resize: Callable[[int, int], None], attachment: Attachment, enabled: bool
) -> contextlib.AbstractContextManager[None]:
    if not enabled:
        return contextlib.nullcontext()
    return _in_background({signal.SIGWINCH: lambda: resize(*attachment.terminal_size())})


def _signals_proxied(
    client: DaemonClient, container_id: str, enabled: bool
) -> contextlib.AbstractContextManager[None]:
    if not enabled:
        return contextlib.nullcontext()

    def sender(signum: int) -> Callable[[], None]:
        return lambda: client.kill(container_id, signal=str(int(signum)))

    return _in_background({signum: sender(signum) for signum in PROXIED_SIGNALS})
