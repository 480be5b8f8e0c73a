"""The image store's value types and the pure functions that read and write OCI JSON.

Everything here is a frozen dataclass or a function from bytes/dataclasses to
dataclasses/bytes; nothing touches the disk. Malformed JSON from an archive is
reported as DataLoss with the name of the file it came from.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyper.errors import DataLoss

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_MEDIA_TYPES = frozenset({MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST_LIST})

_REPORT_HINT = "the image archive is corrupt; export it again (docker save / skopeo copy)"


@dataclass(frozen=True)
class Healthcheck:
    """Docker's HEALTHCHECK: the probe (`("CMD", arg…)`, `("CMD-SHELL", command)`, or
    `("NONE",)` to disable one inherited) and its timing, in seconds. A zero
    duration or retry count means "not set": the image's, then Docker's default."""

    test: tuple[str, ...] = ()
    interval: float = 0.0
    timeout: float = 0.0
    start_period: float = 0.0
    retries: int = 0
    start_interval: float = 0.0


@dataclass(frozen=True)
class ImageConfig:
    """What a container started from the image inherits (the config's `config` object)."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    stop_signal: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    healthcheck: Healthcheck | None = None
    shell: tuple[str, ...] | None = None  # Dockerfile SHELL: what CMD-SHELL health checks run in
    exposed_ports: tuple[str, ...] = ()  # EXPOSE, as "80/tcp": what -P publishes
    volumes: tuple[str, ...] = ()  # VOLUME: each path an anonymous volume unless mounted otherwise


@dataclass(frozen=True)
class Image:
    id: str
    repo_tags: tuple[str, ...]
    manifest_digest: str | None
    layers: tuple[str, ...]
    diff_ids: tuple[str, ...]
    config: ImageConfig
    created: str | None
    architecture: str
    os: str
    size: int


@dataclass(frozen=True)
class LayerDisk:
    diff_id: str
    path: Path
    fs_type: str


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ParsedConfig:
    """The parts of an OCI image config blob the store needs."""

    config: ImageConfig
    diff_ids: tuple[str, ...]
    created: str | None
    architecture: str
    os: str


def host_architecture() -> str:
    """The host's architecture in OCI (Go) spelling."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def decode_json_object(data: bytes, source: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataLoss(f"{source} is not valid JSON: {exc}", hint=_REPORT_HINT) from exc
    if not isinstance(value, dict):
        raise DataLoss(f"{source} is not a JSON object", hint=_REPORT_HINT)
    return value


def _strings(value: Any, what: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DataLoss(f"{source}: {what} is not a list of strings", hint=_REPORT_HINT)
    return tuple(value)


def _optional_strings(value: Any, what: str, source: str) -> tuple[str, ...] | None:
    return None if value is None else _strings(value, what, source)


def parse_config(data: bytes, source: str) -> ParsedConfig:
    """Read an OCI/Docker image config blob."""
    document = decode_json_object(data, source)
    inner = document.get("config") or {}
    if not isinstance(inner, dict):
        raise DataLoss(f"{source}: 'config' is not an object", hint=_REPORT_HINT)
    rootfs = document.get("rootfs")
    if not isinstance(rootfs, dict):
        raise DataLoss(f"{source}: 'rootfs' is missing", hint=_REPORT_HINT)
    labels_value = inner.get("Labels") or {}
    if not isinstance(labels_value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels_value.items()
    ):
        raise DataLoss(f"{source}: 'Labels' is not a string map", hint=_REPORT_HINT)
    stop_signal = inner.get("StopSignal")
    healthcheck = parse_healthcheck(inner.get("Healthcheck"), source)
    created = document.get("created")
    config = ImageConfig(
        env=_strings(inner.get("Env") or [], "Env", source),
        entrypoint=_optional_strings(inner.get("Entrypoint"), "Entrypoint", source),
        cmd=_optional_strings(inner.get("Cmd"), "Cmd", source),
        working_dir=str(inner.get("WorkingDir") or ""),
        user=str(inner.get("User") or ""),
        stop_signal=stop_signal if isinstance(stop_signal, str) and stop_signal else None,
        labels=tuple(sorted(labels_value.items())),
        healthcheck=healthcheck,
        shell=_optional_strings(inner.get("Shell"), "Shell", source) or None,
        exposed_ports=_exposed_ports(inner.get("ExposedPorts")),
        volumes=_exposed_ports(inner.get("Volumes")),
    )
    return ParsedConfig(
        config=config,
        diff_ids=_strings(rootfs.get("diff_ids") or [], "rootfs.diff_ids", source),
        created=created if isinstance(created, str) else None,
        architecture=str(document.get("architecture") or ""),
        os=str(document.get("os") or ""),
    )


_NS = 1_000_000_000
_HEALTH_DURATIONS = (
    ("Interval", "interval"),
    ("Timeout", "timeout"),
    ("StartPeriod", "start_period"),
    ("StartInterval", "start_interval"),
)


def parse_healthcheck(value: Any, source: str) -> Healthcheck | None:
    """The config's `Healthcheck` (durations in nanoseconds, as Docker writes them)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DataLoss(f"{source}: 'Healthcheck' is not an object", hint=_REPORT_HINT)
    durations: dict[str, float] = {}
    for key, name in _HEALTH_DURATIONS:
        raw = value.get(key) or 0
        if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
            raise DataLoss(f"{source}: Healthcheck.{key} is not a duration in nanoseconds", hint=_REPORT_HINT)
        durations[name] = raw / _NS
    retries = value.get("Retries") or 0
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise DataLoss(f"{source}: Healthcheck.Retries is not a count", hint=_REPORT_HINT)
    test = _strings(value.get("Test") or [], "Healthcheck.Test", source)
    return Healthcheck(test=test, retries=retries, **durations)


def healthcheck_to_json(healthcheck: Healthcheck) -> dict[str, Any]:
    """Docker's `Healthcheck` object; unset durations and retries are left out."""
    result: dict[str, Any] = {"Test": list(healthcheck.test)}
    for key, name in _HEALTH_DURATIONS:
        seconds = getattr(healthcheck, name)
        if seconds:
            result[key] = round(seconds * _NS)
    if healthcheck.retries:
        result["Retries"] = healthcheck.retries
    return result


def config_to_json(config: ImageConfig) -> dict[str, Any]:
    """The inverse of the `config` part of `parse_config`, in Docker's key names."""
    result: dict[str, Any] = {}
    if config.env:
        result["Env"] = list(config.env)
    if config.entrypoint is not None:
        result["Entrypoint"] = list(config.entrypoint)
    if config.cmd is not None:
        result["Cmd"] = list(config.cmd)
    if config.working_dir:
        result["WorkingDir"] = config.working_dir
    if config.user:
        result["User"] = config.user
    if config.stop_signal:
        result["StopSignal"] = config.stop_signal
    if config.labels:
        result["Labels"] = dict(config.labels)
    if config.healthcheck is not None:
        result["Healthcheck"] = healthcheck_to_json(config.healthcheck)
    if config.shell:
        result["Shell"] = list(config.shell)
    if config.exposed_ports:
        result["ExposedPorts"] = {port: {} for port in config.exposed_ports}
    if config.volumes:
        result["Volumes"] = {path: {} for path in config.volumes}
    return result


def build_config_blob(config: ImageConfig, diff_ids: Sequence[str], created: str, comment: str) -> bytes:
    """A new image config for a single-tree image (`hyper import`)."""
    document = {
        "architecture": host_architecture(),
        "os": "linux",
        "created": created,
        "config": config_to_json(config),
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": created, "created_by": comment}],
    }
    return canonical_json(document)


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Deterministic JSON, so that synthesizing a manifest twice gives one digest."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def parse_descriptor(value: Any, source: str) -> Descriptor:
    if not isinstance(value, dict):
        raise DataLoss(f"{source}: descriptor is not an object", hint=_REPORT_HINT)
    digest, size = value.get("digest"), value.get("size")
    if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
        raise DataLoss(f"{source}: descriptor lacks a digest or size", hint=_REPORT_HINT)
    return Descriptor(str(value.get("mediaType") or ""), digest, size)


def parse_manifest(data: bytes, source: str) -> Manifest:
    document = decode_json_object(data, source)
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise DataLoss(f"{source}: manifest has no 'layers' list", hint=_REPORT_HINT)
    return Manifest(
        config=parse_descriptor(document.get("config"), source),
        layers=tuple(parse_descriptor(layer, source) for layer in layers),
    )


def manifest_blob(manifest: Manifest) -> bytes:
    def descriptor(d: Descriptor) -> dict[str, Any]:
        return {"mediaType": d.media_type, "digest": d.digest, "size": d.size}

    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": descriptor(manifest.config),
            "layers": [descriptor(layer) for layer in manifest.layers],
        }
    )


def _exposed_ports(value: object) -> tuple[str, ...]:
    """The image config's ExposedPorts ({"80/tcp": {}}) or Volumes ({"/data": {}})
    as its keys; malformed is none."""
    if not isinstance(value, dict):
        return ()
    return tuple(sorted(key for key in value if isinstance(key, str)))
