"""`hyperd`: serve the API on a unix socket until SIGTERM or SIGINT.

Stopping hyperd leaves its VMs running; the next hyperd adopts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from hyper.api.server import make_app
from hyper.daemon.daemon import Daemon
from hyper.errors import HyperError
from hyper.paths import HyperPaths, default_paths
from hyper.runtime.settings import Settings


def socket_path(paths: HyperPaths) -> Path:
    return paths.runtime / "hyperd.sock"


async def serve(paths: HyperPaths, socket: Path) -> None:
    for directory in (paths.state, paths.runtime, socket.parent):
        directory.mkdir(parents=True, exist_ok=True)
    if socket.exists():
        if await _answers(socket):
            raise SystemExit(f"hyperd: another hyperd already serves {socket}")
        socket.unlink()  # left by a hyperd that was killed
    daemon = Daemon(paths, Settings.from_env())
    await daemon.adopt_all()
    runner = web.AppRunner(make_app(daemon), handle_signals=False)
    await runner.setup()
    site = web.UnixSite(runner, str(socket))
    await site.start()
    os.chmod(socket, 0o600)  # the API runs VMs: only this user may use it
    print(f"hyperd: serving {socket} (pid {os.getpid()}, state {paths.state})", file=sys.stderr, flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()
        await daemon.shutdown()
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()


async def _answers(socket: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket)), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyperd", description=__doc__)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--runtime-dir", type=Path)
    parser.add_argument("--socket", type=Path, help="the API socket (default: RUNTIME_DIR/hyperd.sock)")
    args = parser.parse_args(argv)
    defaults = default_paths()
    paths = HyperPaths(
        state=args.state_dir or defaults.state,
        cache=args.cache_dir or defaults.cache,
        runtime=args.runtime_dir or defaults.runtime,
    )
    try:
        asyncio.run(serve(paths, args.socket or socket_path(paths)))
    except HyperError as exc:
        print(f"hyperd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
