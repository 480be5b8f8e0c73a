"""Pulling and pushing images with registries that speak the OCI distribution protocol.

The public API is what this package exports; the modules behind it are private.
"""

from hyper.image.registry.auth import Credentials, CredentialStore, docker_config_path
from hyper.image.registry.hosts import RegistrySettings
from hyper.image.registry.login import login, logout
from hyper.image.registry.platform import Platform, host_platform, parse_platform
from hyper.image.registry.progress import ProgressCallback, ProgressEvent
from hyper.image.registry.pull import RegistryOptions, pull_image
from hyper.image.registry.push import push_image

__all__ = [
    "CredentialStore",
    "Credentials",
    "Platform",
    "ProgressCallback",
    "ProgressEvent",
    "RegistryOptions",
    "RegistrySettings",
    "docker_config_path",
    "host_platform",
    "login",
    "logout",
    "parse_platform",
    "pull_image",
    "push_image",
]
