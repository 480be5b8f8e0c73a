"""Platforms (`linux/amd64`, `linux/arm/v7`) and choosing one manifest from an image index.

Pure functions: the puller hands the index document here and gets back the
descriptor to fetch, or an error that names what the index does offer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hyper.errors import InvalidArgument, NotFound
from hyper.image.model import Descriptor, host_architecture, parse_descriptor

_COMPONENT = re.compile(r"[a-z0-9_.-]+")
# Architectures whose variant matters when the user does not give one (containerd's defaults).
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


def host_platform() -> Platform:
    return Platform("linux", host_architecture())


def parse_platform(text: str) -> Platform:
    """`os/arch[/variant]` as `--platform` takes it."""
    parts = text.strip().lower().split("/")
    if not 2 <= len(parts) <= 3 or not all(_COMPONENT.fullmatch(part) for part in parts):
        raise InvalidArgument(
            f"invalid platform {text!r}", hint="use OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8"
        )
    os_name, arch = parts[0], {"x86_64": "amd64", "aarch64": "arm64"}.get(parts[1], parts[1])
    return Platform(os_name, arch, parts[2] if len(parts) == 3 else None)


def platform_matches(wanted: Platform, offered: Platform) -> bool:
    if (wanted.os, wanted.architecture) != (offered.os, offered.architecture):
        return False
    if wanted.variant is None:
        return True
    default = _DEFAULT_VARIANT.get(wanted.architecture)
    return (offered.variant or default) == (wanted.variant or default)


def _platform_of(entry: dict[str, Any]) -> Platform | None:
    value = entry.get("platform")
    if not isinstance(value, dict):
        return None
    os_name, arch, variant = value.get("os"), value.get("architecture"), value.get("variant")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        return None
    return Platform(os_name, arch, variant if isinstance(variant, str) and variant else None)


def select_manifest(index: dict[str, Any], wanted: Platform, source: str) -> Descriptor:
    """The descriptor in an image index (manifest list) for `wanted`.

    Entries without a platform are skipped (attestation manifests carry
    `unknown/unknown`); among matches the first wins, as in containerd, except
    that an exact variant match beats a variant-less entry.
    """
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise NotFound(f"{source} lists no manifests", hint="the image index is empty or malformed")
    offered: list[Platform] = []
    candidates: list[tuple[int, Descriptor]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        platform = _platform_of(entry)
        if platform is None:
            continue
        offered.append(platform)
        if platform_matches(wanted, platform):
            exact = 0 if platform.variant == wanted.variant else 1
            candidates.append((exact, parse_descriptor(entry, source)))
    if candidates:
        return min(candidates, key=lambda pair: pair[0])[1]
    raise NotFound(
        f"no image for {wanted} in {source} (it offers {describe(offered) or 'no platform'})",
        hint="pick one of the offered platforms with --platform",
    )


def describe(platforms: Sequence[Platform]) -> str:
    return ", ".join(dict.fromkeys(str(p) for p in platforms if p.os != "unknown"))


def image_platform(os_name: str, architecture: str, variant: str | None = None) -> Platform | None:
    """An image's platform from its config; None when the config does not say."""
    if not os_name or not architecture:
        return None
    return Platform(os_name, architecture, variant or None)


def require_runnable(wanted: Platform) -> None:
    """Hyper's VMs are the host's architecture (QEMU runs them without translating
    instructions): refuse any other platform, as a mismatch that cannot run."""
    host = host_platform()
    if (wanted.os, wanted.architecture) != (host.os, host.architecture):
        raise InvalidArgument(
            f"Hyper cannot run {wanted} containers: its VMs are {host}",
            hint=f"use an image for {host} (--platform {host}, or leave --platform out)",
        )


def require_image_runnable(image_name: str, platform: Platform | None) -> None:
    """Refuse an image built for another platform than the VMs' (an image whose
    config names no platform is let through)."""
    if platform is None:
        return
    host = host_platform()
    if (platform.os, platform.architecture) != (host.os, host.architecture):
        raise InvalidArgument(
            f"the image {image_name} is for {platform}, and Hyper's VMs are {host}",
            hint=f"pull the {host} variant: pull --platform {host} {image_name}",
        )
