"""How hyperd records a container: the record a create makes, and the VM spec
kept to adopt the container's VM after hyperd restarts.

`new_record` is Docker's create, as a pure function: the image's stop signal,
health check, shell and labels merged into what the request asked for, and
the process that will run decided once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hyper.daemon import health
from hyper.daemon.logs import log_limits
from hyper.daemon.requests import CreateRequest, parse_signal
from hyper.daemon.state import ContainerRecord
from hyper.errors import InvalidArgument
from hyper.image import Image
from hyper.image.model import healthcheck_to_json
from hyper.image.registry.platform import image_platform, require_image_runnable
from hyper.runtime import spec as specs
from hyper.vm.accel import Accel
from hyper.vm.driver import DiskSpec, VmSpec
from hyper.vm.jail import JailSpec


def new_record(request: CreateRequest, image: Image, container_id: str, now: float) -> ContainerRecord:
    """The record of a container created from `image`, with Docker's merges."""
    require_image_runnable(request.options.image, image_platform(image.os, image.architecture))
    options = dataclasses.replace(
        request.options, stop_signal=request.options.stop_signal or image.config.stop_signal
    )
    if options.stop_signal is not None:
        parse_signal(options.stop_signal)
    if options.stop_timeout is not None and options.stop_timeout < -1:
        raise InvalidArgument("the stop timeout must be a number of seconds (-1: wait as long as it takes)")
    check = health.merge(health.requested(options), image.config.healthcheck)
    if check is not None:
        health.validate(check)
    shell = request.shell or image.config.shell or ()
    process = specs.process_spec(image.config, options, {})
    log_limits(options.log_opts)  # refused at create, not at the first output
    return ContainerRecord(
        id=container_id,
        name=options.name or container_id[:12],
        image=options.image,
        image_id=image.id,
        command=list(process.args),
        created=now,
        state=specs.ContainerState.CREATED.value,
        options=dataclasses.asdict(options),
        # The image's labels, overridden by the container's own.
        labels=dict(image.config.labels) | request.labels,
        restart_policy=request.restart.document(),
        auto_remove=request.auto_remove,
        stdin_once=request.stdin_once,
        process={"env": list(process.env), "cwd": process.cwd, "user": process.user},
        healthcheck=None if check is None else healthcheck_to_json(check),
        shell=list(shell) or None,
        console_size=None if request.console_size is None else list(request.console_size),
        recorded=request.recorded,
    )


def vm_document(spec: VmSpec) -> dict[str, Any]:
    doc: dict[str, Any] = json_safe(dataclasses.asdict(dataclasses.replace(spec, jail=None)))
    doc["jail"] = spec.jail.document() if spec.jail is not None else None  # its uid and cgroup
    return doc


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Accel):
        return value.value
    return value


def vm_spec_from(doc: dict[str, Any]) -> VmSpec:
    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value)

    return VmSpec(
        name=doc["name"],
        kernel=Path(doc["kernel"]),
        initrd=Path(doc["initrd"]),
        cmdline=doc["cmdline"],
        accel=Accel(doc["accel"]),
        memory_mib=doc["memory_mib"],
        cpus=doc["cpus"],
        run_dir=Path(doc["run_dir"]),
        disks=tuple(DiskSpec(Path(d["path"]), d["serial"], d["read_only"]) for d in doc["disks"]),
        memory_file=path(doc.get("memory_file")),
        memory_shared=bool(doc.get("memory_shared")),
        incoming_state=path(doc.get("incoming_state")),
        jail=JailSpec.from_document(doc.get("jail")),
        file_share=bool(doc.get("file_share")),
        scsi=bool(doc.get("scsi")),
    )
