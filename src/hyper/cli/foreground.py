"""A foreground `hyper run` through hyperd: Docker's `docker run`, client side.

The container is hyperd's (so a run uses its warm templates and, later, its
pool of ready VMs); the CLI only joins the local terminal or pipes to it. The
order is the docker CLI's, and it is what makes the exit status safe:

1. create the container, not started;
2. attach to its stdio (nothing it writes can come before the attachment);
3. register the wait (`condition=removed` with --rm, else `next-exit`) and
   read the answer's head, so that hyperd holds the waiter before the
   container can exit: a container that exits at once, and with --rm is
   removed at once, still reports its status;
4. start it, relay stdio until hyperd closes the stream, read the status.

Signals keep the direct path's rules (hyper.runtime.teardown): the first
SIGINT or SIGTERM is forwarded to the container; a second one, or a forwarded
one that has not ended it within 10 s, kills it (SIGKILL through hyperd, which
pulls the VM's plug when the guest does not take it) and exits 130/143 or
137. Before the container runs, the first one cancels: the container is
removed (--rm) or killed, and the exit is 130/143. With --rm the CLI returns
only once hyperd has removed everything, so the guarantee is the direct
path's; should the CLI itself be killed, hyperd still removes the container
when it ends (as with Docker).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from hyper import trace
from hyper.cli.client import ContainerInfo, daemon_socket, docker_error, error_from_body
from hyper.cli.context import CliContext
from hyper.cli.streams import open_hijacked, relay
from hyper.errors import HyperError, InternalError, InvalidArgument, NotFound, PermissionDenied, Unavailable
from hyper.runtime.stdio import FORWARDED_SIGNALS, Attachment, raw_terminal

FORCE_STOP_SECONDS = 10.0  # docker stop's default grace period, as the direct path's
EXIT_KILLED = 128 + signal.SIGKILL
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
CLEANUP_SECONDS = 120.0  # hyperd's removal of a killed container: a VM power-off under TCG
MAX_WAIT_BODY = 64 << 10
MAX_ANSWER_BYTES = 1 << 20
REQUEST_SECONDS = 60.0
START_SECONDS = 300.0  # a start boots a VM when no template or ready VM serves it: slow under TCG
DETACHED_MESSAGE = "read escape sequence"


class DaemonCalls:
    """hyperd's API over its unix socket, one HTTP/1.0 request per connection.

    Not cli.client's httpx client: httpx and what it pulls in cost about as much
    as everything else a foreground run imports, and these few small requests
    need none of it. Errors map through the same tables (hyperd's categories,
    the Docker API's statuses)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: object = None,
        timeout: float = REQUEST_SECONDS,
    ) -> bytes:
        """The answer's body; an error answer raises its `hyper.errors` class."""
        try:
            return await asyncio.wait_for(self._call(method, path, query, body), timeout)
        except TimeoutError as exc:
            raise Unavailable(
                f"hyperd did not answer {method} {path} in time", hint="see hyperd.log"
            ) from exc

    async def _call(self, method: str, path: str, query: dict[str, str] | None, body: object) -> bytes:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError as exc:
            raise Unavailable(f"cannot reach hyperd at {self.socket_path}: {exc}") from exc
        try:
            payload = b"" if body is None else json.dumps(body).encode()
            target = path + ("?" + urlencode(query) if query else "")
            writer.write(
                f"{method} {target} HTTP/1.0\r\nHost: hyperd\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            answer = b""
            while chunk := await reader.read(65536):
                answer += chunk
                if len(answer) > MAX_ANSWER_BYTES:
                    raise InternalError(f"hyperd's answer to {method} {path} is too long")
        except ConnectionError as exc:
            raise Unavailable(f"hyperd closed the connection: {exc}", hint="see hyperd.log") from exc
        finally:
            writer.close()
        head, _, content = answer.partition(b"\r\n\r\n")
        words = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(words) < 2 or not words[1].isdigit():
            raise InternalError(f"hyperd sent a malformed answer to {method} {path}: {head[:100]!r}")
        status, reason = int(words[1]), words[2].decode(errors="replace") if len(words) > 2 else ""
        if status >= 400:
            if path.startswith("/docker/"):
                raise docker_error(status, content, reason)
            raise error_from_body(status, content, reason)
        return content

    async def kill(self, container_id: str, signal_name: str) -> None:
        await self.call("POST", _v1(container_id, "kill"), query={"signal": signal_name})

    async def remove(self, container_id: str) -> None:
        await self.call("DELETE", _v1(container_id), query={"force": "1"})

    async def inspect(self, container_id: str) -> ContainerInfo:
        return ContainerInfo.from_json(json.loads(await self.call("GET", _v1(container_id))))


class DaemonUnusable(Unavailable):
    """No hyperd answers and none could be started: the run may go direct."""


@dataclass(frozen=True)
class WaitResult:
    status: int
    message: str | None  # why the container ended, when hyperd knows (a start failure's words)


class ExitWaiter:
    """Docker's `POST /containers/{id}/wait` held open: the head is read at once
    (hyperd then holds the waiter), the body when the container has exited."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def register(cls, socket_path: Path, container_id: str, condition: str) -> ExitWaiter:
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
        except OSError as exc:
            raise Unavailable(f"cannot reach hyperd at {socket_path}: {exc}") from exc
        try:
            # HTTP/1.0: the body is not chunked and ends when hyperd closes the connection.
            path = f"/docker/containers/{quote(container_id, safe='')}/wait?condition={condition}"
            writer.write(f"POST {path} HTTP/1.0\r\nHost: hyperd\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            status_line = head.split(b"\r\n", 1)[0].split()
            if len(status_line) < 2 or status_line[1] != b"200":
                body = await asyncio.wait_for(reader.read(MAX_WAIT_BODY), 10)
                raise InternalError(
                    f"hyperd refused to wait for the container: {body.decode(errors='replace')[:300]}"
                )
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            writer.close()
            raise Unavailable("hyperd closed the connection before answering", hint="see hyperd.log") from exc
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer)

    async def result(self) -> WaitResult:
        """The container's exit; Unavailable when hyperd stopped before it."""
        try:
            body = await self._reader.read(MAX_WAIT_BODY)
            while chunk := await self._reader.read(MAX_WAIT_BODY):
                body += chunk
                if len(body) > MAX_WAIT_BODY:
                    raise InternalError("hyperd's answer to a wait is too long")
        except ConnectionError:
            body = b""
        finally:
            self.close()
        if not body.strip():
            raise Unavailable(
                "hyperd stopped before the container exited; it runs on",
                hint="see `hyper ps -a` once hyperd is back",
            )
        try:
            doc = json.loads(body)
            status = doc["StatusCode"]
            error = doc.get("Error") or {}
            message = error.get("Message") if isinstance(error, dict) else None
            if not isinstance(status, int):
                raise TypeError("StatusCode is not a number")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InternalError(f"hyperd sent a malformed wait answer: {body[:200]!r}") from exc
        return WaitResult(status, message if isinstance(message, str) and message else None)

    def close(self) -> None:
        self._writer.close()


class DaemonStop:
    """SIGINT/SIGTERM for a run through hyperd (see the module's docstring)."""

    def __init__(self, task: asyncio.Task[int], grace: float = FORCE_STOP_SECONDS) -> None:
        self.task = task
        self.grace = grace
        self.forward: Callable[[int], None] | None = None  # set while the container runs
        self.kill: Callable[[], None] | None = None
        self.torn_down: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.cancelled_by: int | None = None
        self.starting: asyncio.Future[bytes] | None = None  # the start request, once sent
        self._signals = 0
        self._timer: asyncio.TimerHandle | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.on_signal, signum)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        if self._timer is not None:
            self._timer.cancel()

    def on_signal(self, signum: int) -> None:
        self._signals += 1
        if self.forward is None:
            # Not running (yet, or any more): the run is cancelled.
            if self.cancelled_by is None:
                self.cancelled_by = signum
                self.task.cancel()
            return
        if self._signals > 1:
            self.tear_down(128 + signum)
            return
        self.forward(signum)
        self._timer = asyncio.get_running_loop().call_later(self.grace, self.tear_down, EXIT_KILLED)

    def tear_down(self, status: int) -> None:
        if not self.torn_down.done():
            self.torn_down.set_result(status)
            if self.kill is not None:
                self.kill()


async def run_in_daemon(
    client: DaemonCalls,
    container_id: str,
    *,
    remove: bool,
    tty: bool,
    stdin: bool,
    attachment: Attachment,
    say: Callable[[str], None],
) -> int:
    """Attach, register the wait, start and relay (the module's docstring); the exit status."""
    task = asyncio.current_task()
    assert task is not None
    stop = DaemonStop(task)
    stop.install()
    background: set[asyncio.Task[None]] = set()

    def call(action: Callable[[], Awaitable[object]]) -> None:
        """A request to hyperd from a signal handler: in a thread, its failure ignored
        (the process may just have ended)."""

        async def quietly() -> None:
            with contextlib.suppress(HyperError):
                await action()

        spawned = asyncio.create_task(quietly())
        background.add(spawned)
        spawned.add_done_callback(background.discard)

    try:
        try:
            return await _session(
                client,
                container_id,
                remove=remove,
                tty=tty,
                stdin=stdin,
                attachment=attachment,
                stop=stop,
                call=call,
                say=say,
            )
        except asyncio.CancelledError:
            if stop.cancelled_by is None:
                raise
            await _clean_up(client, container_id, remove=remove, starting=stop.starting)
            say("interrupted; the container was " + ("removed" if remove else "killed"))
            return 128 + stop.cancelled_by
    finally:
        stop.uninstall()
        for pending in list(background):
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(pending, 10)


async def _session(
    client: DaemonCalls,
    container_id: str,
    *,
    remove: bool,
    tty: bool,
    stdin: bool,
    attachment: Attachment,
    stop: DaemonStop,
    call: Callable[[Callable[[], Awaitable[object]]], None],
    say: Callable[[str], None],
) -> int:
    query = {"stream": "1", "stdin": "1" if stdin else "0", "stdout": "1", "stderr": "1"}
    conn = await open_hijacked(
        client.socket_path, f"/docker/containers/{quote(container_id, safe='')}/attach", query=query
    )
    try:
        waiter = await ExitWaiter.register(
            client.socket_path, container_id, "removed" if remove else "next-exit"
        )
    except BaseException:
        await conn.close()
        raise
    try:
        trace.mark("start sent", container_id)
        starting = asyncio.ensure_future(
            client.call("POST", _path(container_id, "start"), timeout=START_SECONDS)
        )
        stop.starting = starting
        try:
            # Shielded: a Ctrl-C meanwhile lets the start finish, then undoes it.
            await asyncio.shield(starting)
        except HyperError as exc:
            await conn.close()
            return await _start_failed(client, container_id, waiter, exc, remove=remove, say=say)
        trace.mark("start answered", container_id)

        def forward(signum: int) -> None:
            call(lambda: client.kill(container_id, str(int(signum))))

        stop.kill = lambda: call(lambda: client.kill(container_id, "SIGKILL"))
        stop.forward = forward
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        for signum in FORWARDED_SIGNALS:
            if signum not in STOP_SIGNALS:
                loop.add_signal_handler(signum, forward, signum)
                installed.append(signum)
        if tty:

            def resize() -> None:
                rows, cols = attachment.terminal_size()
                call(
                    lambda: client.call(
                        "POST", _path(container_id, "resize"), query={"h": str(rows), "w": str(cols)}
                    )
                )

            loop.add_signal_handler(signal.SIGWINCH, resize)
            installed.append(signal.SIGWINCH)
        try:
            with raw_terminal(attachment.stdin_fd, tty and stdin):
                relaying = asyncio.create_task(relay(conn, attachment, tty=tty, stdin=stdin))
                either: set[asyncio.Future[Any]] = {relaying, stop.torn_down}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if stop.torn_down.done():
                    relaying.cancel()
                    with contextlib.suppress(asyncio.CancelledError, HyperError):
                        await relaying
                    return await _torn_down(waiter, stop.torn_down.result(), say)
                if relaying.result():
                    say(DETACHED_MESSAGE)  # the detach keys: the container runs on
                    return 0
        finally:
            stop.forward = None
            for number in installed:
                loop.remove_signal_handler(number)
        outcome = asyncio.ensure_future(waiter.result())
        ended: set[asyncio.Future[Any]] = {outcome, stop.torn_down}
        await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
        if not outcome.done():
            outcome.cancel()
            return await _torn_down(waiter, stop.torn_down.result(), say)
        trace.mark("status received", container_id)
        return outcome.result().status
    finally:
        waiter.close()
        await conn.close()


async def _start_failed(
    client: DaemonCalls,
    container_id: str,
    waiter: ExitWaiter,
    error: HyperError,
    *,
    remove: bool,
    say: Callable[[str], None],
) -> int:
    """A start that failed: a command that cannot run has exited (126/127) and hyperd's
    wait says so, with its reason; anything else is Hyper's failure (125)."""
    exited = await _has_exited(client, container_id)
    if exited:
        outcome = await asyncio.wait_for(waiter.result(), CLEANUP_SECONDS)
        say(outcome.message or error.message)
        return outcome.status
    waiter.close()
    if remove:
        await _clean_up(client, container_id, remove=True)
    raise error


async def _has_exited(client: DaemonCalls, container_id: str) -> bool:
    """Whether the container ran and exited (or, with --rm, is gone after that)."""
    try:
        info = await client.inspect(container_id)
    except NotFound:
        return True
    return info.state == "exited" and info.exit_code is not None


async def _torn_down(waiter: ExitWaiter, status: int, say: Callable[[str], None]) -> int:
    """Killed here: wait (bounded) for hyperd to finish with it, so --rm leaves nothing."""
    with contextlib.suppress(HyperError, TimeoutError):
        await asyncio.wait_for(waiter.result(), CLEANUP_SECONDS)
    say("the container was killed")
    return status


async def _clean_up(
    client: DaemonCalls, container_id: str, *, remove: bool, starting: asyncio.Future[bytes] | None = None
) -> None:
    """Undo a run cancelled before its container ran: removed with --rm (hyperd lets
    a start under way finish first), else killed once its start has ended."""
    if starting is not None and not remove:
        with contextlib.suppress(HyperError, TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(starting), CLEANUP_SECONDS)

    with contextlib.suppress(HyperError):
        if remove:
            await client.call("DELETE", _v1(container_id), query={"force": "1"}, timeout=CLEANUP_SECONDS)
        else:
            await client.kill(container_id, "SIGKILL")
    if starting is not None:
        with contextlib.suppress(HyperError, TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(starting, CLEANUP_SECONDS)  # its outcome no longer matters


def _path(container_id: str, action: str) -> str:
    return f"/docker/containers/{quote(container_id, safe='')}/{action}"


def _v1(container_id: str, action: str | None = None) -> str:
    path = f"/v1/containers/{quote(container_id, safe='')}"
    return path if action is None else f"{path}/{action}"


def run_through_daemon(args: argparse.Namespace, ctx: CliContext) -> int:
    """`hyper run` in the foreground, hyperd's container: check the options, make sure
    hyperd runs (Unavailable when it cannot), create the container, `run_in_daemon`."""
    from hyper.cli.run_commands import daemon_request, ensure_image

    attachment = Attachment()
    if args.tty and args.interactive and not attachment.stdin_is_tty():
        raise InvalidArgument("the input device is not a TTY", hint="drop -t, or run from a terminal")
    # The image is looked for up front only when it matters how (--pull, --platform);
    # otherwise hyperd's create says when it is missing, as dockerd's does.
    checked = args.pull != "missing" or args.platform is not None
    request = daemon_request(args, ctx, start=False, check_image=checked)
    if args.tty:
        request = dataclasses.replace(request, console_size=attachment.terminal_size())
    try:
        client = DaemonCalls(daemon_socket(ctx.paths, stderr=ctx.stderr))
    except (Unavailable, PermissionDenied) as exc:
        raise DaemonUnusable(exc.message, hint=exc.hint) from exc

    def say(message: str) -> None:
        print(f"hyper: {message}", file=ctx.stderr, flush=True)

    async def create() -> str:
        trace.mark("create sent")
        try:
            answer = await client.call("POST", "/v1/containers", body=request.to_json())
        except NotFound:
            if checked:
                raise
            # Pulled when missing (the store says whether it is), then asked once more.
            await asyncio.to_thread(ensure_image, args.image, args.pull, ctx, quiet=args.quiet)
            answer = await client.call("POST", "/v1/containers", body=request.to_json())
        container_id = json.loads(answer).get("id")
        if not isinstance(container_id, str):
            raise InternalError("hyperd's answer to a create has no ID")
        trace.mark("create answered", container_id)
        return container_id

    async def run() -> int:
        container_id = await create()
        try:
            return await run_in_daemon(
                client,
                container_id,
                remove=args.rm,
                tty=args.tty,
                stdin=args.interactive,
                attachment=attachment,
                say=say,
            )
        except BaseException:
            # Whatever failed before the container was under way: --rm still leaves nothing.
            if args.rm:
                with contextlib.suppress(HyperError):
                    await client.remove(container_id)
            raise

    return asyncio.run(run())
