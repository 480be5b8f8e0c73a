"""Pod networking through CNI, as containerd and CRI-O do it.

hyperd makes the pod's network namespace, then runs the plugins of the first
network configuration in the CNI configuration directory (`--cni-conf-dir`;
a `.conflist`, or a single plugin's `.conf`) with the CNI protocol: each
plugin an executable found in the CNI binary directories, told the command,
the container ID, the namespace and the interface name in its environment,
given its configuration (with the previous plugin's result) on stdin, and
answering a result or an error as JSON on stdout. DEL runs the plugins in
reverse order with the result ADD gave, and is run on every path that tears
a sandbox down. hyper.cri.netns then joins the VM to the interface the
plugins made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, ip_interface
from pathlib import Path
from typing import Any

from hyper.cri.records import Metadata, PortMapping
from hyper.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unavailable

DEFAULT_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
INTERFACE = "eth0"
PLUGIN_SECONDS = 60.0  # a plugin that hangs (a DHCP wait) fails the sandbox rather than holding it
_SUFFIXES = (".conflist", ".conf", ".json")


@dataclass(frozen=True)
class CniNetwork:
    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    source: Path


@dataclass(frozen=True)
class PodAttachment:
    """Which pod a plugin call is for: the sandbox, its namespace, its name and its ports."""

    sandbox_id: str
    netns: Path
    pod: Metadata
    ports: tuple[PortMapping, ...] = ()


@dataclass(frozen=True)
class CniAddress:
    """The pod's address from a CNI result: what the VM's NIC takes."""

    interface: IPv4Interface
    gateway: IPv4Address | None


def load_network(conf_dir: Path) -> CniNetwork | None:
    """The first network configuration in `conf_dir` (in name order, as containerd
    and CRI-O pick it), or None."""
    if not conf_dir.is_dir():
        return None
    for path in sorted(p for p in conf_dir.iterdir() if p.suffix in _SUFFIXES and p.is_file()):
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"CNI configuration {path} is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise InvalidArgument(f"CNI configuration {path} is not a JSON object")
        plugins = document.get("plugins") if path.suffix == ".conflist" else [document]
        if (
            not isinstance(plugins, list)
            or not plugins
            or not all(isinstance(p, dict) and p.get("type") for p in plugins)
        ):
            raise InvalidArgument(f"CNI configuration {path} has no plugins with a type")
        name, version = document.get("name"), document.get("cniVersion")
        if not isinstance(name, str) or not isinstance(version, str):
            raise InvalidArgument(f"CNI configuration {path} needs a name and a cniVersion")
        return CniNetwork(name, version, tuple(plugins), path)
    return None


def address_of(result: Mapping[str, Any]) -> CniAddress:
    """The IPv4 address (and gateway) a CNI result gives the pod's interface."""
    sandbox_interfaces = {
        index
        for index, interface in enumerate(result.get("interfaces") or [])
        if isinstance(interface, dict) and interface.get("sandbox")
    }
    for entry in result.get("ips") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            continue
        if sandbox_interfaces and entry.get("interface") not in sandbox_interfaces:
            continue
        address = ip_interface(entry["address"])
        if isinstance(address, IPv4Interface):
            gateway = entry.get("gateway")
            return CniAddress(address, IPv4Address(gateway) if isinstance(gateway, str) else None)
    raise Unavailable(
        "the CNI plugins gave the pod no IPv4 address", hint="check the network's IPAM configuration"
    )


def plugin_config(
    network: CniNetwork,
    plugin: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    ports: Sequence[PortMapping],
) -> dict[str, Any]:
    """What one plugin reads on stdin: its configuration with the network's name and
    version, the previous result, and the runtime configuration it asks for."""
    config = dict(plugin, name=network.name, cniVersion=network.cni_version)
    if previous is not None:
        config["prevResult"] = previous
    capabilities = plugin.get("capabilities") or {}
    if isinstance(capabilities, dict) and capabilities.get("portMappings") and ports:
        config["runtimeConfig"] = {
            "portMappings": [
                {
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": p.protocol,
                    "hostIP": p.host_ip,
                }
                for p in ports
                if p.host_port
            ]
        }
    return config


class CniPlugins:
    def __init__(self, network: CniNetwork, bin_dirs: Sequence[Path] = DEFAULT_BIN_DIRS) -> None:
        self.network = network
        self.bin_dirs = tuple(bin_dirs)

    def _binary(self, plugin_type: str) -> Path:
        if "/" in plugin_type:
            raise InvalidArgument(f"CNI plugin type {plugin_type!r} is not a plain name")
        for directory in self.bin_dirs:
            candidate = directory / plugin_type
            if os.access(candidate, os.X_OK):
                return candidate
        raise FailedPrecondition(
            f"CNI plugin {plugin_type!r} (network {self.network.name}) is in none of "
            f"{', '.join(map(str, self.bin_dirs))}",
            hint="install Debian's containernetworking-plugins or give --cni-bin-dir",
        )

    async def add(self, pod: PodAttachment) -> dict[str, Any]:
        """ADD through every plugin in order; on a failure, DEL what was added, then raise."""
        result: dict[str, Any] | None = None
        try:
            for plugin in self.network.plugins:
                answer = await self._run("ADD", plugin, result, pod)
                result = answer or result
        except BaseException:
            with contextlib.suppress(Exception):  # the ADD's failure is the one to report
                await asyncio.shield(self.delete(pod, result))
            raise
        if result is None:
            raise Unavailable(f"the CNI plugins of network {self.network.name} gave no result")
        return result

    async def delete(self, pod: PodAttachment, result: Mapping[str, Any] | None) -> None:
        """DEL through every plugin in reverse order; each is tried, the first failure raised after."""
        failure: BaseException | None = None
        for plugin in reversed(self.network.plugins):
            try:
                await self._run("DEL", plugin, result, pod)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    async def _run(
        self, command: str, plugin: Mapping[str, Any], previous: Mapping[str, Any] | None, pod: PodAttachment
    ) -> dict[str, Any] | None:
        plugin_type = str(plugin["type"])
        binary = self._binary(plugin_type)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": pod.sandbox_id,
            "CNI_NETNS": str(pod.netns),
            "CNI_IFNAME": INTERFACE,
            "CNI_PATH": os.pathsep.join(map(str, self.bin_dirs)),
            "CNI_ARGS": (
                f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.pod.namespace};K8S_POD_NAME={pod.pod.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={pod.sandbox_id};K8S_POD_UID={pod.pod.uid}"
            ),
        }
        stdin = json.dumps(plugin_config(self.network, plugin, previous, pod.ports)).encode()
        process = await asyncio.create_subprocess_exec(
            str(binary),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), PLUGIN_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise DeadlineExceeded(
                f"CNI plugin {plugin_type} {command} took over {PLUGIN_SECONDS:.0f} s"
            ) from None
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        if process.returncode != 0:
            reason = _plugin_error(out, err)
            raise Unavailable(
                f"CNI plugin {plugin_type} {command} failed (network {self.network.name}): {reason}"
            )
        if command != "ADD" or not out.strip():
            return None
        try:
            answer = json.loads(out)
        except ValueError as exc:
            raise Unavailable(f"CNI plugin {plugin_type} answered no JSON result: {out[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise Unavailable(f"CNI plugin {plugin_type} answered a result that is not an object")
        return answer


def _plugin_error(out: bytes, err: bytes) -> str:
    try:
        document = json.loads(out)
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("msg"):
        details = f" ({document['details']})" if document.get("details") else ""
        return f"{document['msg']}{details}"
    text = (err or out).decode(errors="replace").strip()
    return text[-500:] or "no message"
