"""Docker's JSON for containers, to and from Hyper's types. Pure functions.

What Hyper cannot honour (bind mounts, published ports, privileged mode, …)
is refused by name rather than ignored: a container that silently lacks its
volume is a wrong result.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from hyper.api.docker.common import rfc3339
from hyper.api.docker.labels import label_matches
from hyper.daemon.pods import CreateRequest
from hyper.daemon.policy import RestartPolicy
from hyper.daemon.state import ContainerRecord
from hyper.errors import InvalidArgument
from hyper.humanize import human_duration
from hyper.image import ImageConfig
from hyper.runtime import spec as specs

# HostConfig fields whose non-empty value needs something Hyper does not do yet.
UNSUPPORTED_HOST_CONFIG = {
    "Binds": "bind mounts (-v/--mount)",
    "Mounts": "mounts (--mount)",
    "PortBindings": "published ports (-p)",
    "PublishAllPorts": "published ports (-P)",
    "Privileged": "privileged containers",
    "Devices": "host devices (--device)",
    "VolumesFrom": "--volumes-from",
    "Links": "--link",
    "ReadonlyRootfs": "read-only root file systems (--read-only)",
    "Tmpfs": "--tmpfs",
    "ExtraHosts": "--add-host",
    "Dns": "--dns",
    "CapAdd": "--cap-add",
    "Init": "--init (a container's first process is PID 1 of its own PID namespace; see docs/docker-api.md)",
}
NETWORK_MODES = ("", "default", "bridge", "none")
DOCKER_TYPE_BITS = {  # Go's os.FileMode type bits, which Docker's path stat uses
    0o040000: 1 << 31,  # directory
    0o120000: 1 << 27,  # symlink
    0o010000: 1 << 25,  # named pipe
    0o140000: 1 << 24,  # socket
    0o060000: 1 << 26,  # block device
    0o020000: (1 << 26) | (1 << 21),  # character device
}


def strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{what} must be a list of strings")
    return tuple(value)


def text(value: Any, what: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string")
    return value


def create_request(body: dict[str, Any], name: str | None) -> CreateRequest:
    """POST /containers/create's body as Hyper's CreateRequest."""
    image = body.get("Image")
    if not isinstance(image, str) or not image:
        raise InvalidArgument("the container config has no Image", hint="give an image to run")
    host = body.get("HostConfig")
    host = {} if host is None else host
    if not isinstance(host, dict):
        raise InvalidArgument("HostConfig must be an object")
    for key, what in UNSUPPORTED_HOST_CONFIG.items():
        if host.get(key):
            raise InvalidArgument(f"Hyper does not support {what} yet (HostConfig.{key})")
    network = host.get("NetworkMode") or ""
    if network not in NETWORK_MODES:
        raise InvalidArgument(
            f"Hyper does not support the network mode {network!r}",
            hint="containers have loopback only for now; use the default network mode",
        )
    if body.get("Volumes"):
        raise InvalidArgument("Hyper does not support volumes yet (Config.Volumes)")

    entrypoint_parts = body.get("Entrypoint")
    entrypoint_list = strings(entrypoint_parts, "Entrypoint")
    command = strings(body.get("Cmd"), "Cmd")
    entrypoint: str | None = None
    if entrypoint_parts is not None:
        # Hyper's entrypoint is one word; Docker's may be several: the rest lead the command.
        entrypoint = entrypoint_list[0] if entrypoint_list else ""
        command = entrypoint_list[1:] + command

    memory_bytes = host.get("Memory") or 0
    if not isinstance(memory_bytes, int) or memory_bytes < 0:
        raise InvalidArgument("HostConfig.Memory must be a number of bytes")
    memory = memory_bytes // (1 << 20) if memory_bytes else specs.DEFAULT_MEMORY_MIB
    if memory < specs.MIN_MEMORY_MIB:
        raise InvalidArgument(
            f"memory {memory_bytes} bytes is below the minimum of {specs.MIN_MEMORY_MIB}m for a VM"
        )
    nano_cpus = host.get("NanoCpus") or 0
    if not isinstance(nano_cpus, int) or nano_cpus < 0:
        raise InvalidArgument("HostConfig.NanoCpus must be a non-negative integer")
    cpus = max(1, -(-nano_cpus // 1_000_000_000)) if nano_cpus else 1

    labels = body.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("Labels must map names to strings")
    options = specs.RunOptions(
        image=image,
        command=command,
        entrypoint=entrypoint,
        env=strings(body.get("Env"), "Env"),
        workdir=text(body.get("WorkingDir"), "WorkingDir"),
        user=text(body.get("User"), "User"),
        tty=bool(body.get("Tty")),
        interactive=bool(body.get("OpenStdin")),
        memory_mib=memory,
        cpus=cpus,
        hostname=text(body.get("Hostname"), "Hostname"),
        name=name or None,
    )
    return CreateRequest(
        options=options,
        labels=dict(labels),
        restart=RestartPolicy.from_document(host.get("RestartPolicy")),
        auto_remove=bool(host.get("AutoRemove")),
        stdin_once=bool(body.get("StdinOnce")),
    )


def statustext(record: ContainerRecord, now: float) -> str:
    state = record.state
    if state in ("running", "paused"):
        text = f"Up {human_duration(now - (record.started_at or now))}"
        return text + " (Paused)" if state == "paused" else text
    if state == "restarting":
        return f"Restarting ({record.exit_code or 0}) {human_duration(now - (record.finished_at or now))} ago"
    if state == "exited":
        return f"Exited ({record.exit_code or 0}) {human_duration(now - (record.finished_at or now))} ago"
    return "Created"


def summary(record: ContainerRecord, now: float | None = None) -> dict[str, Any]:
    """One entry of GET /containers/json."""
    return {
        "Id": record.id,
        "Names": [f"/{record.name}"],
        "Image": record.image,
        "ImageID": record.image_id,
        "Command": shlex.join(record.command),
        "Created": int(record.created),
        "Ports": [],
        "Labels": record.labels,
        "State": record.state,
        "Status": statustext(record, time.time() if now is None else now),
        "HostConfig": {"NetworkMode": "none"},
        "NetworkSettings": {"Networks": {}},
        "Mounts": [],
    }


def effective_config(
    record: ContainerRecord, image: ImageConfig | None
) -> tuple[list[str] | None, list[str] | None, str]:
    """Config.Entrypoint, Config.Cmd and Config.User as Docker reports them: the
    user's where given, else the image's (Docker merges them at create)."""
    options = record.options
    command = list(options.get("command") or [])
    entrypoint = options.get("entrypoint")
    user = options.get("user") or (image.user if image is not None else "")
    if entrypoint is not None:  # --entrypoint also drops the image's CMD
        return ([entrypoint] if entrypoint else None), (command or None), user
    if image is None:  # the image is gone: the whole command line is the best guess
        return None, (command or list(record.command) or None), user
    image_entrypoint = list(image.entrypoint) if image.entrypoint else None
    return image_entrypoint, (command or list(image.cmd or ()) or None), user


def inspect(
    record: ContainerRecord, exec_ids: list[str], log_path: str, image: ImageConfig | None = None
) -> dict[str, Any]:
    """GET /containers/{id}/json; `image` is the config of the container's image, if still there."""
    options = record.options
    process = record.process or {}
    policy = RestartPolicy.from_document(record.restart_policy).document()
    running = record.state in ("running", "paused")
    entrypoint, command, user = effective_config(record, image)
    return {
        "Id": record.id,
        "Created": rfc3339(record.created),
        "Path": record.command[0] if record.command else "",
        "Args": record.command[1:],
        "State": {
            "Status": record.state,
            "Running": running,
            "Paused": record.state == "paused",
            "Restarting": record.state == "restarting",
            "OOMKilled": False,
            "Dead": False,
            "Pid": record.qemu_pid if running and record.qemu_pid else 0,
            "ExitCode": record.exit_code or 0,
            "Error": record.reason or "",
            "StartedAt": rfc3339(record.started_at),
            "FinishedAt": rfc3339(record.finished_at),
        },
        "Image": record.image_id,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": log_path,
        "Name": f"/{record.name}",
        "RestartCount": record.restart_count,
        "Driver": "overlay-in-vm",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": exec_ids or None,
        "HostConfig": {
            "NetworkMode": "none",
            # Docker reports the default policy as "no" (the docker CLI sends it so).
            "RestartPolicy": policy | {"Name": policy["Name"] or "no"},
            "AutoRemove": record.auto_remove,
            "Memory": int(options.get("memory_mib") or specs.DEFAULT_MEMORY_MIB) << 20,
            "NanoCpus": int(options.get("cpus") or 1) * 1_000_000_000,
            "Runtime": "hyper",
            "Isolation": "",
            "Binds": None,
            "PortBindings": {},
            "LogConfig": {"Type": "json-file", "Config": {}},
        },
        "GraphDriver": {"Name": "overlay-in-vm", "Data": None},
        "Mounts": [],
        "Config": {
            "Hostname": options.get("hostname") or record.id[:12],
            "Domainname": "",
            "User": user,
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
            "Tty": bool(options.get("tty")),
            "OpenStdin": bool(options.get("interactive")),
            "StdinOnce": record.stdin_once,
            "Env": process.get("env", []),
            "Cmd": command,
            "Image": record.image,
            "Volumes": None,
            "WorkingDir": process.get("cwd", ""),
            "Entrypoint": entrypoint,
            "OnBuild": None,
            "Labels": record.labels,
        },
        "NetworkSettings": {"Networks": {}, "Ports": {}, "IPAddress": "", "Gateway": "", "MacAddress": ""},
    }


def path_stat(stat: dict[str, Any]) -> dict[str, Any]:
    """The agent's archive_stat answer as Docker's X-Docker-Container-Path-Stat document."""
    st_mode = int(stat.get("mode", 0))
    mode = st_mode & 0o777
    mode |= DOCKER_TYPE_BITS.get(st_mode & 0o170000, 0)
    if st_mode & 0o4000:
        mode |= 1 << 23
    if st_mode & 0o2000:
        mode |= 1 << 22
    if st_mode & 0o1000:
        mode |= 1 << 20
    return {
        "name": str(stat.get("name", "")),
        "size": int(stat.get("size", 0)),
        "mode": mode,
        "mtime": rfc3339(float(stat.get("mtime", 0))),
        "linkTarget": str(stat.get("link_target", "")),
    }


def matches_filters(record: ContainerRecord, wanted: dict[str, list[str]]) -> bool:
    """GET /containers/json?filters=: id, name, status, label, ancestor, exited."""
    for key, values in wanted.items():
        if key == "id":
            ok = any(record.id.startswith(v) for v in values)
        elif key == "name":
            ok = any(v.lstrip("/") in record.name for v in values)
        elif key == "status":
            ok = record.state in values
        elif key == "label":
            ok = all(label_matches(record.labels, v) for v in values)
        elif key == "ancestor":
            ok = any(v in (record.image, record.image_id) or record.image_id.endswith(v) for v in values)
        elif key == "exited":
            ok = record.state == "exited" and str(record.exit_code) in values
        else:
            raise InvalidArgument(
                f"invalid filter {key!r}",
                hint="Hyper filters containers by id, name, status, label, ancestor, exited",
            )
        if not ok:
            return False
    return True
