"""Network namespaces for networking tests: a "host" for hyperd and an "outside" world.

Tests send traffic only inside namespaces they make. `NetLab` makes two:
`host`, where hyperd runs and makes its bridges, taps and nftables rules, and
`outside`, joined to it by a veth pair (198.51.100.0/24, TEST-NET-2), which
serves an HTTP server on port 8000 and a DNS server answering `outside.test`
(everything else NXDOMAIN). The host's resolv.conf (for processes run with
`ip netns exec`, /etc/netns/NAME/resolv.conf) names the outside DNS server.
Everything is removed on close, on every path.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUTSIDE_IP = "198.51.100.1"
HOST_IP = "198.51.100.2"
HTTP_PORT = 8000
OUTSIDE_NAME = "outside.test"
OUTSIDE_PAGE = "hello from the outside\n"

DNS_SERVER = r"""
import socket, sys
import dns.message, dns.rcode, dns.rrset
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 53))
while True:
    data, peer = sock.recvfrom(4096)
    try:
        query = dns.message.from_wire(data)
    except Exception:
        continue
    reply = dns.message.make_response(query)
    name = query.question[0].name.to_text(omit_final_dot=True).lower()
    if name == sys.argv[2] and query.question[0].rdtype == 1:
        reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", sys.argv[1]))
    elif name != sys.argv[2]:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    sock.sendto(reply.to_wire(), peer)
"""


FETCH = (
    "import sys, urllib.request;"
    " print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode())"
)


def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=timeout)


class NetLab:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.host = f"hyh-{tag}"
        self.outside = f"hyo-{tag}"
        self.etc = Path("/etc/netns") / self.host
        self.www = Path(tempfile.mkdtemp(prefix="hyper-www-"))
        self._servers: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> NetLab:
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make(self) -> None:
        run("ip", "netns", "add", self.host)
        run("ip", "netns", "add", self.outside)
        run(
            "ip",
            "link",
            "add",
            "vhost0",
            "netns",
            self.host,
            "type",
            "veth",
            "peer",
            "vout0",
            "netns",
            self.outside,
        )
        for ns, dev, ip in ((self.host, "vhost0", HOST_IP), (self.outside, "vout0", OUTSIDE_IP)):
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", self.host, "route", "add", "default", "via", OUTSIDE_IP)
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text(f"nameserver {OUTSIDE_IP}\n")
        (self.www / "index.html").write_text(OUTSIDE_PAGE)
        self._serve("python3", "-m", "http.server", str(HTTP_PORT), "--bind", OUTSIDE_IP, "-d", str(self.www))
        self._serve(sys.executable, "-c", DNS_SERVER, OUTSIDE_IP, OUTSIDE_NAME)
        deadline = time.monotonic() + 30
        while self.fetch(self.host, f"http://{OUTSIDE_IP}:{HTTP_PORT}/").returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("the outside HTTP server did not start")
            time.sleep(0.1)

    def _serve(self, *command: str) -> None:
        self._servers.append(
            subprocess.Popen(
                ["ip", "netns", "exec", self.outside, *command],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def exec(
        self, ns: str, *command: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", ns, *command, check=check, timeout=timeout)

    def fetch(self, ns: str, url: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """GET `url` from namespace `ns` (Python's urllib: busybox wget -T crashes on a timeout)."""
        return run(
            "ip", "netns", "exec", ns, sys.executable, "-c", FETCH, url, str(timeout),
            check=False, timeout=timeout + 30,
        )  # fmt: skip

    def tables(self) -> list[str]:
        listing = json.loads(self.exec(self.host, "nft", "-j", "list", "tables").stdout)
        return [item["table"]["name"] for item in listing["nftables"] if "table" in item]

    def links(self) -> list[str]:
        listing = json.loads(self.exec(self.host, "ip", "-j", "link").stdout)
        return [item["ifname"] for item in listing]

    def rules(self) -> int:
        done = self.exec(self.host, "nft", "-j", "list", "table", "inet", "hyper", check=False)
        if done.returncode:
            return 0
        return sum(1 for item in json.loads(done.stdout)["nftables"] if "rule" in item)

    def listening(self) -> list[str]:
        """TCP and UDP sockets bound in the host namespace (local address:port)."""
        out = self.exec(self.host, "ss", "-H", "-tuln").stdout
        return sorted(line.split()[4] for line in out.splitlines() if line.strip())

    def close(self) -> None:
        for server in self._servers:
            with contextlib.suppress(ProcessLookupError):
                import os

                os.killpg(server.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(5)
        self._servers.clear()
        for ns in (self.host, self.outside):
            run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.etc, ignore_errors=True)
        shutil.rmtree(self.www, ignore_errors=True)
