"""The CRI's gRPC server on a unix socket, in hyperd's own event loop."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import grpc

from hyper.cri import images, runtime
from hyper.cri.cni import DEFAULT_BIN_DIRS, CniPlugins, load_network
from hyper.cri.service import IMAGE_SERVICE, RUNTIME_SERVICE, generic_handler
from hyper.cri.streaming import StreamingServer
from hyper.daemon.daemon import Daemon
from hyper.errors import FailedPrecondition, Unavailable

# A PullImage's answer waits for the whole pull; other messages are small. The
# kubelet's own client allows 16 MiB messages, as do these.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The streaming server's address: loopback, a free port (the kubelet's default is
# loopback too; a cluster whose API server proxies to it gives a routable one).
DEFAULT_STREAMING_ADDRESS = "127.0.0.1:0"


class CriServer:
    def __init__(self, server: grpc.aio.Server, socket: Path, runtime: runtime.RuntimeService) -> None:
        self.server = server
        self.socket = socket
        self.runtime = runtime

    async def stop(self, grace: float) -> None:
        """Stop taking calls; those under way get `grace` seconds, then are cancelled."""
        await self.server.stop(grace)
        if self.runtime.streaming is not None:
            await self.runtime.streaming.stop()
        await self.runtime.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


async def start_cri_server(
    daemon: Daemon,
    socket: Path,
    cni_conf_dir: Path | None = None,
    cni_bin_dirs: Sequence[Path] | None = None,
    streaming_address: str = DEFAULT_STREAMING_ADDRESS,
) -> CriServer:
    """Serve the CRI on `socket`; with `cni_conf_dir`, pods get their network from its
    first CNI configuration (else they join hyperd's own network). Exec, Attach and
    PortForward lead to the streaming server on `streaming_address`."""
    plugins = None
    if cni_conf_dir is not None:
        network = load_network(cni_conf_dir)
        if network is None:
            raise FailedPrecondition(
                f"no CNI network configuration (.conflist, .conf) in {cni_conf_dir}",
                hint="write one, or start hyperd without --cni-conf-dir to use hyperd's own network",
            )
        plugins = CniPlugins(network, cni_bin_dirs or DEFAULT_BIN_DIRS)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    service = runtime.RuntimeService(daemon, plugins)
    service.resume()  # sandboxes and containers of an earlier hyperd: their logs are copied on
    streaming = StreamingServer(service, streaming_address)
    await streaming.start()
    service.streaming = streaming
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers(
        (
            generic_handler(RUNTIME_SERVICE, service, runtime.MISSING),
            generic_handler(IMAGE_SERVICE, images.ImageService(daemon.paths), {}),
        )
    )
    try:
        server.add_insecure_port(f"unix:{socket}")
    except RuntimeError as exc:
        await streaming.stop()
        raise Unavailable(
            f"cannot serve the CRI on {socket}: {exc}", hint="check the socket's directory"
        ) from exc
    try:
        await server.start()
    except BaseException:
        await streaming.stop()
        raise
    os.chmod(socket, 0o600)  # the CRI runs VMs: only hyperd's user may use it
    return CriServer(server, socket, service)
