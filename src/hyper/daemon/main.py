"""`hyperd`: serve the API on a unix socket until SIGTERM or SIGINT.

Stopping hyperd leaves its VMs running; the next hyperd adopts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from hyper import trace
from hyper.api import tenant_admin
from hyper.api.docker.server import make_docker_app
from hyper.api.server import make_app
from hyper.api.tenant_gate import parse_listen, tls_context
from hyper.api.tls import SERVER_LOGGER, TLSSite
from hyper.daemon.daemon import Daemon
from hyper.errors import HyperError, InvalidArgument
from hyper.paths import HyperPaths, default_paths
from hyper.paths import prepare as prepare_paths
from hyper.runtime.pool import DEFAULT_MEMORY_MIB, DEFAULT_SIZE, PoolConfig, config_from
from hyper.runtime.settings import Settings
from hyper.tenants.keystone import KeystoneValidator, ServiceCredentials
from hyper.tenants.service import TenantService

SHUTDOWN_GRACE_SECONDS = 5.0


def socket_path(paths: HyperPaths) -> Path:
    return paths.runtime / "hyperd.sock"


async def _claim(socket: Path) -> None:
    socket.parent.mkdir(parents=True, exist_ok=True)
    if socket.exists():
        if await _answers(socket):
            raise SystemExit(f"hyperd: another hyperd already serves {socket}")
        socket.unlink()  # left by a hyperd that was killed


async def _serve_app(app: web.Application, socket: Path) -> web.AppRunner:
    # At a stop, the requests that wait (wait, events) end at once; any other
    # still running after SHUTDOWN_GRACE seconds is cancelled.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await runner.setup()
    site = web.UnixSite(runner, str(socket))
    await site.start()
    os.chmod(socket, 0o600)  # the API runs VMs: only this user may use it
    return runner


@dataclass(frozen=True)
class TenantListener:
    """Where tenants reach the Docker Engine API: HOST:PORT, over TLS."""

    host: str
    port: int
    tls: ssl.SSLContext


async def _serve_tenants(app: web.Application, listener: TenantListener) -> web.AppRunner:
    # Requests aiohttp cannot parse are logged in one line (SERVER_LOGGER), not with a traceback.
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, logger=SERVER_LOGGER
    )
    await runner.setup()
    site = TLSSite(runner, listener.host, listener.port, listener.tls)  # TLS that half-closes, as Go's
    await site.start()
    return runner


async def serve(
    paths: HyperPaths,
    socket: Path,
    docker_socket: Path | None = None,
    cri_socket: Path | None = None,
    cni: tuple[Path | None, list[Path]] = (None, []),
    *,
    cri_streaming: str | None = None,
    pool: PoolConfig | None = None,
    tenant_listener: TenantListener | None = None,
    keystone: KeystoneValidator | None = None,
) -> None:
    prepare_paths(paths)
    sockets = [path for path in (socket, docker_socket, cri_socket) if path is not None]
    for path in sockets:
        await _claim(path)
    daemon = Daemon(paths, Settings.from_env(), pool)
    await daemon.adopt_all()
    tenants = TenantService(daemon, keystone)
    await tenants.start()
    app = make_app(daemon)
    tenant_admin.add_routes(app, tenants)  # `hyper tenant …`, the admin's alone
    # The hyper CLI's exec, attach, cp, inspect, top and stats use the Docker
    # Engine API's streams, which hyperd's own socket serves under /docker.
    app.add_subapp("/docker", make_docker_app(daemon))
    runners = [await _serve_app(app, socket)]
    if docker_socket is not None:
        runners.append(await _serve_app(make_docker_app(daemon), docker_socket))
    served = str(socket)
    if docker_socket is not None:
        served += f" and the Docker Engine API on {docker_socket}"
    cri = None
    if cri_socket is not None:
        from hyper.cri import start_cri_server  # grpc loads only where the CRI is served

        conf_dir, bin_dirs = cni
        cri = await start_cri_server(
            daemon, cri_socket, conf_dir, bin_dirs or None, *([cri_streaming] if cri_streaming else [])
        )
        served += f" and the CRI on {cri_socket}"
    if tenant_listener is not None:
        runners.append(await _serve_tenants(make_docker_app(daemon, tenants), tenant_listener))
        served += f", and to tenants on {tenant_listener.host}:{tenant_listener.port} (TLS)"
    print(f"hyperd: serving {served} (pid {os.getpid()}, state {paths.state})", file=sys.stderr, flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        daemon.stopping.set()  # waiting requests end, so the runners' cleanup does not wait on them
        if cri is not None:
            await cri.stop(SHUTDOWN_GRACE_SECONDS)
        for runner in runners:
            await runner.cleanup()
        await tenants.close()
        await daemon.shutdown()
        for path in sockets:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        await _let_background_work_end()


async def _let_background_work_end() -> None:
    """Let what the shutdown started (closing each VM's QMP connection) finish
    rather than be cancelled at the loop's end; each such step bounds itself."""
    pending = asyncio.all_tasks() - {asyncio.current_task()}
    if pending:
        await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_SECONDS)


async def _answers(socket: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket)), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def main(argv: list[str] | None = None) -> int:
    trace.set_role("hyperd")
    parser = argparse.ArgumentParser(prog="hyperd", description=__doc__)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--runtime-dir", type=Path)
    parser.add_argument("--socket", type=Path, help="the API socket (default: RUNTIME_DIR/hyperd.sock)")
    parser.add_argument(
        "--docker-socket",
        type=Path,
        help="also serve the Docker Engine API on this socket (e.g. DOCKER_HOST=unix:///run/hyper/docker.sock)",
    )
    parser.add_argument(
        "--cri-socket",
        type=Path,
        help="also serve the Kubernetes CRI (v1) on this socket, for a kubelet or crictl (docs/cri.md)",
    )
    parser.add_argument(
        "--cri-streaming-address",
        metavar="HOST:PORT",
        help="with --cri-socket: where the exec, attach and port-forward streams are served "
        "(default 127.0.0.1 and a free port)",
    )
    parser.add_argument(
        "--cni-conf-dir",
        type=Path,
        help="with --cri-socket: give pods the network of the first CNI configuration here "
        "(e.g. /etc/cni/net.d); without it pods join hyperd's own network",
    )
    parser.add_argument(
        "--cni-bin-dir",
        type=Path,
        action="append",
        default=[],
        help="where the CNI plugins are (repeatable; default /usr/lib/cni and /opt/cni/bin)",
    )
    parser.add_argument(
        "--pool",
        type=int,
        metavar="N",
        help=f"ready VMs kept per VM shape, so a run needs no VM start (default {DEFAULT_SIZE}: off; "
        "also HYPER_POOL)",
    )
    parser.add_argument(
        "--pool-memory",
        metavar="SIZE",
        help=f"the most guest RAM the ready VMs hold together (default {DEFAULT_MEMORY_MIB}m; "
        "also HYPER_POOL_MEMORY)",
    )
    parser.add_argument(
        "--tenant-listen",
        metavar="HOST:PORT",
        help="serve the Docker Engine API to tenants on this TCP address, over TLS (docs/tenants.md)",
    )
    parser.add_argument("--tls-cert", type=Path, help="the tenant listener's certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the tenant listener's private key (PEM)")
    parser.add_argument(
        "--keystone-url", help="accept OpenStack Keystone tokens (X-Auth-Token), checked by this Keystone"
    )
    parser.add_argument(
        "--keystone-credentials",
        type=Path,
        help="a JSON file with the service user hyperd checks tokens as (default: tokens check themselves)",
    )
    args = parser.parse_args(argv)
    defaults = default_paths()
    paths = HyperPaths(
        state=args.state_dir or defaults.state,
        cache=args.cache_dir or defaults.cache,
        runtime=args.runtime_dir or defaults.runtime,
    )
    os.umask(0o077)  # containers' environments, logs and disks are hyperd's user's alone
    try:
        listener = _tenant_listener(args)
        keystone = None
        if args.keystone_url:
            credentials = (
                ServiceCredentials.load(args.keystone_credentials) if args.keystone_credentials else None
            )
            keystone = KeystoneValidator(args.keystone_url, credentials)
        asyncio.run(
            serve(
                paths,
                args.socket or socket_path(paths),
                args.docker_socket,
                args.cri_socket,
                (args.cni_conf_dir, args.cni_bin_dir),
                cri_streaming=args.cri_streaming_address,
                pool=config_from(args.pool, args.pool_memory),
                tenant_listener=listener,
                keystone=keystone,
            )
        )
    except HyperError as exc:
        print(f"hyperd: {exc}", file=sys.stderr)
        return 1
    return 0


def _tenant_listener(args: argparse.Namespace) -> TenantListener | None:
    if not args.tenant_listen:
        if args.tls_cert or args.tls_key or args.keystone_url:
            raise InvalidArgument("--tls-cert, --tls-key and --keystone-url go with --tenant-listen")
        return None
    if not (args.tls_cert and args.tls_key):
        raise InvalidArgument(
            "--tenant-listen needs --tls-cert and --tls-key: tenants' tokens never cross a network in clear",
            hint="make a pair for a trial with `hyper tenant cert --host HOST`",
        )
    host, port = parse_listen(args.tenant_listen)
    return TenantListener(host, port, tls_context(args.tls_cert, args.tls_key))


if __name__ == "__main__":
    sys.exit(main())
