"""A SPDY/3.1 client for the streaming server's tests: npm's spdy-transport, driven
through tests/support/spdy_client.js (installed by the Makefile under .venv).

The test says which streams to open and what to write; the client reports
what came back on each, its end, and the connection's end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("spdy_client.js")
NODE_MODULES = Path(sys.prefix) / "node_modules"
EVENT_SECONDS = 120.0


class SpdyClient:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.data: dict[str, bytearray] = {}
        self.ended: set[str] = set()
        self.replied: set[str] = set()
        self.errors: list[str] = []
        self.closed = False
        self.protocol = ""
        self.refused: tuple[int, str] | None = None

    @classmethod
    async def connect(cls, url: str, *protocols: str, window: int | None = None) -> SpdyClient:
        if not (NODE_MODULES / "spdy-transport").is_dir():
            raise RuntimeError(f"spdy-transport is not in {NODE_MODULES}: run `make test-deps`")
        args = [url, ",".join(protocols)] + ([str(window)] if window else [])
        process = await asyncio.create_subprocess_exec(
            "node", str(SCRIPT), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
            limit=16 * 1024 * 1024,
        )  # fmt: skip
        client = cls(process)
        await client.until(lambda c: bool(c.protocol) or c.refused is not None)
        return client

    def __repr__(self) -> str:
        data = {name: bytes(value[-300:]) for name, value in self.data.items()}
        return f"<SPDY client: data {data}, ended {self.ended}, errors {self.errors}, closed {self.closed}>"

    def of(self, stream: str) -> bytes:
        return bytes(self.data.get(stream, b""))

    async def _command(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()

    async def open(self, name: str, **headers: str) -> None:
        await self._command(op="open", id=name, headers=headers)

    async def write(self, name: str, data: bytes) -> None:
        await self._command(op="write", id=name, data=base64.b64encode(data).decode())

    async def end(self, name: str) -> None:
        await self._command(op="end", id=name)

    async def close(self) -> None:
        await self._command(op="close")

    async def until(self, done: Callable[[SpdyClient], bool] | None = None) -> None:
        """Events until `done(self)` holds, or until the connection closed."""
        assert self.process.stdout is not None
        while not (done is not None and done(self)) and not self.closed:
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), EVENT_SECONDS)
            except TimeoutError:
                raise AssertionError(f"nothing from the server in {EVENT_SECONDS} s: {self}") from None
            if not line:
                self.closed = True
                break
            event = json.loads(line)
            kind, name = event["ev"], event.get("id", "")
            if kind == "upgraded":
                self.protocol = event["protocol"]
            elif kind == "refused":
                self.refused = (event["status"], event["body"])
            elif kind == "reply":
                self.replied.add(name)
            elif kind == "data":
                self.data.setdefault(name, bytearray()).extend(base64.b64decode(event["data"]))
            elif kind == "end":
                self.ended.add(name)
            elif kind == "error":
                self.errors.append(f"{name}: {event['message']}")
            elif kind == "closed":
                self.closed = True

    async def finish(self) -> None:
        """The client's end: its process exits."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    async def __aenter__(self) -> SpdyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.finish()
