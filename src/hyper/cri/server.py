"""The CRI's gRPC server on a unix socket, in hyperd's own event loop."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import grpc

from hyper.cri import images, runtime
from hyper.cri.service import IMAGE_SERVICE, RUNTIME_SERVICE, generic_handler
from hyper.daemon.daemon import Daemon
from hyper.errors import Unavailable

# A PullImage's answer waits for the whole pull; other messages are small. The
# kubelet's own client allows 16 MiB messages, as do these.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class CriServer:
    def __init__(self, server: grpc.aio.Server, socket: Path, runtime: runtime.RuntimeService) -> None:
        self.server = server
        self.socket = socket
        self.runtime = runtime

    async def stop(self, grace: float) -> None:
        """Stop taking calls; those under way get `grace` seconds, then are cancelled."""
        await self.server.stop(grace)
        await self.runtime.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


async def start_cri_server(daemon: Daemon, socket: Path) -> CriServer:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    service = runtime.RuntimeService(daemon)
    service.resume()  # sandboxes and containers of an earlier hyperd: their logs are copied on
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
        raise Unavailable(
            f"cannot serve the CRI on {socket}: {exc}", hint="check the socket's directory"
        ) from exc
    await server.start()
    os.chmod(socket, 0o600)  # the CRI runs VMs: only hyperd's user may use it
    return CriServer(server, socket, service)
