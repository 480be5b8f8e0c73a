"""Docker's JSON for containers, to and from Hyper's types. Pure functions.

What Hyper cannot honour (host devices, sysctls, Windows options, …) is
refused by name rather than ignored (hyper.api.docker.fields): a container
that silently lacks what it asked for is a wrong result.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from hyper.api.docker import fields, networks
from hyper.api.docker.common import rfc3339
from hyper.api.docker.labels import label_matches
from hyper.daemon import health
from hyper.daemon.logs import log_driver, log_limits
from hyper.daemon.policy import RestartPolicy
from hyper.daemon.requests import CreateRequest
from hyper.daemon.state import ContainerRecord
from hyper.errors import InvalidArgument
from hyper.humanize import human_duration
from hyper.image import Healthcheck, ImageConfig
from hyper.runtime import spec as specs
from hyper.runtime.security import ulimit_from_api
from hyper.runtime.settings import Settings
from hyper.storage import mounts as storage_mounts

DEFAULT_SHM_BYTES = 64 << 20
NS = 1_000_000_000
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


def number(value: Any, what: str, *, minimum: int = 0) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidArgument(f"{what} must be an integer of at least {minimum}")
    return value


def create_request(body: dict[str, Any], name: str | None, settings: Settings | None = None) -> CreateRequest:
    """POST /containers/create's body as Hyper's CreateRequest; what Hyper
    cannot honour is refused by name (hyper.api.docker.fields). A VM size not
    given is the configuration's (`settings`)."""
    settings = settings or Settings()
    image = body.get("Image")
    if not isinstance(image, str) or not image:
        raise InvalidArgument("the container config has no Image", hint="give an image to run")
    fields.check_create_body(body)
    host = body.get("HostConfig") or {}
    _check_host(host)

    entrypoint_parts = body.get("Entrypoint")
    entrypoint_list = strings(entrypoint_parts, "Entrypoint")
    command = strings(body.get("Cmd"), "Cmd")
    entrypoint: str | None = None
    if entrypoint_parts is not None:
        # Hyper's entrypoint is one word; Docker's may be several: the rest lead the command.
        entrypoint = entrypoint_list[0] if entrypoint_list else ""
        command = entrypoint_list[1:] + command

    memory_bytes = number(host.get("Memory"), "HostConfig.Memory")
    memory = memory_bytes // (1 << 20) if memory_bytes else settings.default_memory_mib
    if memory < specs.MIN_MEMORY_MIB:
        raise InvalidArgument(
            f"memory {memory_bytes} bytes is below the minimum of {specs.MIN_MEMORY_MIB}m for a VM"
        )
    swap = host.get("MemorySwap") or 0
    if not isinstance(swap, int) or isinstance(swap, bool) or swap < -1:
        raise InvalidArgument("HostConfig.MemorySwap must be a number of bytes, or -1")
    if swap > 0 and not memory_bytes:
        raise InvalidArgument(
            "You should always set the Memory limit when using Memoryswap limit, see usage",
            hint="add --memory",
        )
    nano_cpus = number(host.get("NanoCpus"), "HostConfig.NanoCpus")
    cpus = max(1, -(-nano_cpus // 1_000_000_000)) if nano_cpus else settings.default_cpus
    pids_limit = host.get("PidsLimit") or 0
    if not isinstance(pids_limit, int) or isinstance(pids_limit, bool):
        raise InvalidArgument("HostConfig.PidsLimit must be an integer")

    labels = body.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("Labels must map names to strings")
    stop_timeout = body.get("StopTimeout")
    if stop_timeout is not None:
        number(stop_timeout, "StopTimeout", minimum=-1)
    healthcheck = _healthcheck(body.get("Healthcheck"))
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
        nano_cpus=nano_cpus,
        cpuset_cpus=text(host.get("CpusetCpus"), "HostConfig.CpusetCpus") or "",
        pids_limit=max(pids_limit, 0),
        memory_swap=swap,
        hostname=text(body.get("Hostname"), "Hostname"),
        name=name or None,
        cap_add=strings(host.get("CapAdd"), "HostConfig.CapAdd"),
        cap_drop=strings(host.get("CapDrop"), "HostConfig.CapDrop"),
        privileged=bool(host.get("Privileged")),
        security_opt=strings(host.get("SecurityOpt"), "HostConfig.SecurityOpt"),
        ulimits=_ulimits(host.get("Ulimits")),
        group_add=strings(host.get("GroupAdd"), "HostConfig.GroupAdd"),
        sysctls=_sysctls(host.get("Sysctls")),
        log_opts=log_options(host),
        shm_size=number(host.get("ShmSize"), "HostConfig.ShmSize"),
        init=bool(host.get("Init")),
        stop_signal=text(body.get("StopSignal"), "StopSignal"),
        stop_timeout=stop_timeout,
        health_test=healthcheck.test,
        health_interval=healthcheck.interval,
        health_timeout=healthcheck.timeout,
        health_start_period=healthcheck.start_period,
        health_retries=healthcheck.retries,
        mounts=api_mounts(body, host),
        read_only=bool(host.get("ReadonlyRootfs")),
        volumes_from=storage_mounts.check_volumes_from(
            strings(host.get("VolumesFrom"), "HostConfig.VolumesFrom")
        ),
        storage_opt=storage_options(host.get("StorageOpt")),
        **networks.run_option_fields(body),
    )
    recorded = {key: body[key] for key in RECORDED_CONFIG if not fields.empty(body.get(key))}
    for key in ("Binds", "Mounts", "Tmpfs"):  # as given, for inspect's HostConfig
        if not fields.empty(host.get(key)):
            recorded[key] = host[key]
    if host.get("ContainerIDFile"):
        recorded["ContainerIDFile"] = text(host["ContainerIDFile"], "HostConfig.ContainerIDFile")
    return CreateRequest(
        options=options,
        labels=dict(labels),
        restart=RestartPolicy.from_document(host.get("RestartPolicy")),
        auto_remove=bool(host.get("AutoRemove")),
        stdin_once=bool(body.get("StdinOnce")),
        shell=strings(body.get("Shell"), "Shell"),
        console_size=_console_size(host.get("ConsoleSize")),
        recorded=recorded,
    )


def storage_options(value: Any) -> tuple[str, ...]:
    """HostConfig.StorageOpt ({"size": "1G"}) as --storage-opt texts, checked."""
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument("HostConfig.StorageOpt must map names to strings")
    options = tuple(f"{key}={text}" for key, text in value.items())
    storage_mounts.storage_size(options)
    return options


def api_mounts(body: dict[str, Any], host: dict[str, Any]) -> tuple[str, ...]:
    """HostConfig's Binds, Mounts and Tmpfs, then Config.Volumes (anonymous
    volumes where nothing else is mounted), as canonical --mount strings."""
    tmpfs = host.get("Tmpfs") or {}
    volumes = body.get("Volumes") or {}
    if not isinstance(tmpfs, dict) or not all(isinstance(v, str) for v in tmpfs.values()):
        raise InvalidArgument("HostConfig.Tmpfs must map paths to option strings")
    if not isinstance(volumes, dict):
        raise InvalidArgument("Volumes must be an object of paths")
    mounts = host.get("Mounts") or []
    if not isinstance(mounts, list):
        raise InvalidArgument("HostConfig.Mounts must be a list")
    parsed = [storage_mounts.parse_volume(b) for b in strings(host.get("Binds"), "HostConfig.Binds")]
    parsed += [storage_mounts.from_api_mount(m) for m in mounts]
    parsed += [storage_mounts.tmpfs_mount(target, options) for target, options in tmpfs.items()]
    resolved = storage_mounts.with_image_volumes(storage_mounts.check_unique(parsed), volumes)
    return tuple(m.canonical() for m in resolved)


RECORDED_CONFIG = ("AttachStdin", "AttachStdout", "AttachStderr", "ExposedPorts")


def log_options(host: dict[str, Any]) -> tuple[str, ...]:
    """HostConfig.LogConfig as --log-opt words: json-file or local, max-size and max-file."""
    log = host.get("LogConfig") or {}
    if not isinstance(log, dict):
        raise InvalidArgument("HostConfig.LogConfig must be an object")
    driver = log.get("Type") or None
    if driver is not None and not isinstance(driver, str):
        raise InvalidArgument("HostConfig.LogConfig.Type must be a string")
    log_driver(driver)
    config = log.get("Config") or {}
    if not isinstance(config, dict) or not all(isinstance(v, str) for v in config.values()):
        raise InvalidArgument("HostConfig.LogConfig.Config must map option names to strings")
    options = tuple(f"{key}={value}" for key, value in sorted(config.items()))
    log_limits(options)
    return options


def _check_host(host: dict[str, Any]) -> None:
    """The honoured HostConfig settings that take only some values."""
    log_options(host)
    for key, allowed in (("Runtime", ("", "hyper")), ("Isolation", ("", "default"))):
        if (host.get(key) or "") not in allowed:
            raise InvalidArgument(
                f"Hyper does not support the {key.lower()} {host[key]!r} (HostConfig.{key})",
                hint=f"every container is a VM: leave --{key.lower()} out",
            )


def _healthcheck(value: Any) -> Healthcheck:
    """Docker's Healthcheck (durations in ns) in seconds; unset fields stay zero."""
    if value is None:
        return Healthcheck()
    if not isinstance(value, dict):
        raise InvalidArgument("Healthcheck must be an object")
    if value.get("StartInterval"):
        raise InvalidArgument(
            "Hyper does not support the health check's start interval yet (Healthcheck.StartInterval)",
            hint="it is an API 1.44 setting; Hyper serves API 1.43",
        )

    def seconds(key: str) -> float:
        return number(value.get(key), f"Healthcheck.{key}") / NS

    return Healthcheck(
        test=strings(value.get("Test"), "Healthcheck.Test"),
        interval=seconds("Interval"),
        timeout=seconds("Timeout"),
        start_period=seconds("StartPeriod"),
        retries=number(value.get("Retries"), "Healthcheck.Retries"),
    )


def _sysctls(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument("HostConfig.Sysctls must map names to string values")
    return tuple(f"{name}={setting}" for name, setting in value.items())


def _ulimits(value: Any) -> tuple[str, ...]:
    """Docker's [{"Name", "Soft", "Hard"}] in `--ulimit`'s NAME=SOFT:HARD form."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InvalidArgument("HostConfig.Ulimits must be a list of {Name, Soft, Hard}")
    limits = (ulimit_from_api(item) for item in value)
    return tuple(f"{limit.name}={limit.soft}:{limit.hard}" for limit in limits)


def _console_size(value: Any) -> tuple[int, int] | None:
    if value is None or value == [0, 0]:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidArgument("HostConfig.ConsoleSize must be [height, width]")
    rows, cols = (number(v, "HostConfig.ConsoleSize") for v in value)
    return (rows, cols) if rows and cols else None


def statustext(record: ContainerRecord, now: float) -> str:
    state = record.state
    if state in ("running", "paused"):
        text = f"Up {human_duration(now - (record.started_at or now))}"
        if state == "paused":
            return f"{text} (Paused)"
        status = health_status(record)
        if status is None:
            return text
        return f"{text} (health: starting)" if status == "starting" else f"{text} ({status})"
    if state == "restarting":
        return f"Restarting ({record.exit_code or 0}) {human_duration(now - (record.finished_at or now))} ago"
    if state == "exited":
        return f"Exited ({record.exit_code or 0}) {human_duration(now - (record.finished_at or now))} ago"
    return "Created"


def health_status(record: ContainerRecord) -> str | None:
    """starting, healthy or unhealthy for a container with a health check; else None."""
    if health.configured(record) is None:
        return None
    state = health.from_record(record.health)
    return state.status.value if state is not None else health.HealthStatus.STARTING.value


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
            "OOMKilled": record.oom_killed,
            "Dead": False,
            "Pid": record.qemu_pid if running and record.qemu_pid else 0,
            "ExitCode": record.exit_code or 0,
            "Error": "" if record.oom_killed else record.reason or "",
            "StartedAt": rfc3339(record.started_at),
            "FinishedAt": rfc3339(record.finished_at),
        }
        | health_state(record),
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
            "NanoCpus": int(options.get("nano_cpus") or 0) or int(options.get("cpus") or 1) * 1_000_000_000,
            "MemorySwap": int(options.get("memory_swap") or 0),
            "CpusetCpus": options.get("cpuset_cpus") or "",
            "PidsLimit": int(options.get("pids_limit") or 0) or None,
            "Runtime": "hyper",
            "Isolation": "",
            "Binds": record.recorded.get("Binds"),
            "Mounts": record.recorded.get("Mounts"),
            "Tmpfs": record.recorded.get("Tmpfs"),
            "ReadonlyRootfs": bool(options.get("read_only")),
            "VolumesFrom": list(options.get("volumes_from") or ()) or None,
            "StorageOpt": dict(o.partition("=")[::2] for o in options.get("storage_opt") or ()) or None,
            "PortBindings": {},
            "LogConfig": {
                "Type": "json-file",
                "Config": dict(o.partition("=")[::2] for o in options.get("log_opts") or ()),
            },
            "ContainerIDFile": record.recorded.get("ContainerIDFile", ""),
            "ConsoleSize": record.console_size or [0, 0],
        }
        | confinement(options),
        "GraphDriver": {"Name": "overlay-in-vm", "Data": None},
        "Mounts": [],
        "Config": {
            "Hostname": options.get("hostname") or record.id[:12],
            "Domainname": "",
            "User": user,
            "AttachStdin": bool(record.recorded.get("AttachStdin")),
            "AttachStdout": bool(record.recorded.get("AttachStdout")),
            "AttachStderr": bool(record.recorded.get("AttachStderr")),
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
        }
        | optional_config(record),
        "NetworkSettings": {"Networks": {}, "Ports": {}, "IPAddress": "", "Gateway": "", "MacAddress": ""},
    }


def mount_documents(options: dict[str, Any], volumes_root: Path) -> list[dict[str, Any]]:
    """Inspect's `Mounts`: each bind, volume and tmpfs (volumes with their name and
    their directory under `volumes_root`, STATE/volumes)."""
    documents = []
    for text in options.get("mounts") or ():
        mount = storage_mounts.parse_mount(text)
        document = mount.document()
        if mount.type is storage_mounts.MountType.VOLUME:
            source = str(volumes_root / mount.source / "_data") if mount.source else ""
            document |= {"Name": mount.source, "Source": source, "Driver": "local"}
        else:
            document["Source"] = mount.source
        documents.append(document)
    return documents


def health_state(record: ContainerRecord) -> dict[str, Any]:
    """State.Health, for a container with a health check (Docker's shape)."""
    state = health.from_record(record.health)
    if health.configured(record) is None:
        return {}
    state = state or health.HealthState()
    log = [
        {"Start": rfc3339(r.start), "End": rfc3339(r.end), "ExitCode": r.exit_code, "Output": r.output}
        for r in state.log
    ]
    return {"Health": {"Status": state.status.value, "FailingStreak": state.failing_streak, "Log": log}}


def confinement(options: dict[str, Any]) -> dict[str, Any]:
    """HostConfig's capabilities, privileges, security options, ulimits, shm size and init."""
    limits = []
    for text in options.get("ulimits") or ():
        name, _, values = text.partition("=")
        soft, _, hard = values.partition(":")
        limits.append({"Name": name, "Soft": int(soft), "Hard": int(hard or soft)})
    document: dict[str, Any] = {
        "CapAdd": list(options.get("cap_add") or ()) or None,
        "CapDrop": list(options.get("cap_drop") or ()) or None,
        "Privileged": bool(options.get("privileged")),
        "SecurityOpt": list(options.get("security_opt") or ()) or None,
        "Ulimits": limits,
        "ShmSize": int(options.get("shm_size") or DEFAULT_SHM_BYTES),
    }
    if options.get("init"):
        document["Init"] = True
    if options.get("group_add"):
        document["GroupAdd"] = list(options["group_add"])
    if options.get("sysctls"):
        document["Sysctls"] = dict(text.partition("=")[::2] for text in options["sysctls"])
    return document


def optional_config(record: ContainerRecord) -> dict[str, Any]:
    """The Config fields Docker shows only when set."""
    options = record.options
    document: dict[str, Any] = {}
    if options.get("stop_signal"):
        document["StopSignal"] = options["stop_signal"]
    if options.get("stop_timeout") is not None:
        document["StopTimeout"] = options["stop_timeout"]
    if record.healthcheck:
        document["Healthcheck"] = record.healthcheck
    if record.shell:
        document["Shell"] = record.shell
    if record.recorded.get("ExposedPorts"):
        document["ExposedPorts"] = record.recorded["ExposedPorts"]
    return document


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
    """GET /containers/json?filters=: id, name, status, label, ancestor, exited, health, volume."""
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
        elif key == "health":
            ok = (health_status(record) or "none") in values
        elif key == "volume":  # a volume's name, a bind's host path, or a mount's destination
            mounts = [storage_mounts.parse_mount(text) for text in record.options.get("mounts") or ()]
            ok = any(v in (m.source, m.target) for m in mounts for v in values)
        else:
            raise InvalidArgument(
                f"invalid filter {key!r}",
                hint="Hyper filters containers by id, name, status, label, ancestor, exited, health, volume",
            )
        if not ok:
            return False
    return True
