"""Image references (`busybox`, `localhost/app:v2`, `name@sha256:…`), normalized like Docker.

Tags are stored in their fully qualified form (`docker.io/library/busybox:latest`) so
that two spellings of one name find the same image. The grammar follows the
distribution project's `reference` package: a domain is the first component when it
contains `.` or `:`, is `localhost`, or has an upper-case letter; otherwise the name
lives on Docker Hub, where one-component names get the `library/` prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hyper.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
LOCAL_DOMAIN = "localhost"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_SHA256_HEX = re.compile(r"[a-f0-9]{64}")

_HINT = "use NAME[:TAG] or NAME@sha256:DIGEST, e.g. busybox or localhost/app:v1"


@dataclass(frozen=True)
class Reference:
    """A parsed, normalized image reference."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """The name without tag or digest: `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_repository(self) -> str:
        """The short name Docker shows: `busybox` for `docker.io/library/busybox`."""
        if self.domain != DEFAULT_DOMAIN:
            return self.repository
        if self.path.startswith(OFFICIAL_REPO_PREFIX):
            return self.path[len(OFFICIAL_REPO_PREFIX) :]
        return self.path

    def __str__(self) -> str:
        text = self.repository
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse and normalize `text`; a name without tag or digest gets `:latest`."""
    reference, _ = _parse(text)
    return reference


def lookup_candidates(text: str) -> tuple[Reference, ...]:
    """The references to try, in order, when a user names a local image.

    A name written without a domain means Docker Hub, but an image imported as
    `localhost/NAME` is found by plain `NAME` too (podman's habit for local images).
    """
    reference, explicit_domain = _parse(text)
    if explicit_domain:
        return (reference,)
    path = reference.path
    if path.startswith(OFFICIAL_REPO_PREFIX):
        path = path[len(OFFICIAL_REPO_PREFIX) :]
    local = Reference(LOCAL_DOMAIN, path, reference.tag, reference.digest)
    return (reference, local)


def _parse(text: str) -> tuple[Reference, bool]:
    if not text or text != text.strip():
        raise InvalidArgument(f"invalid image reference {text!r}: empty or padded", hint=_HINT)
    remainder, digest = text, None
    if "@" in remainder:
        remainder, digest = remainder.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise InvalidArgument(f"invalid digest in image reference {text!r}", hint=_HINT)
        algorithm, encoded = digest.split(":", 1)
        if algorithm == "sha256" and not _SHA256_HEX.fullmatch(encoded):
            raise InvalidArgument(
                f"invalid sha256 digest in image reference {text!r}: want 64 lowercase hex digits",
                hint=_HINT,
            )
    name, tag = remainder, None
    last_colon, last_slash = remainder.rfind(":"), remainder.rfind("/")
    if last_colon > last_slash:
        name, tag = remainder[:last_colon], remainder[last_colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(f"invalid tag {tag!r} in image reference {text!r}", hint=_HINT)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"image name in {text!r} is longer than {MAX_NAME_LENGTH} characters", hint=_HINT
        )
    domain, path, explicit_domain = _split_domain(name)
    if not _DOMAIN.fullmatch(domain):
        raise InvalidArgument(f"invalid registry {domain!r} in image reference {text!r}", hint=_HINT)
    for component in path.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            lowercase_hint = " (repository names must be lowercase)" if component.lower() != component else ""
            raise InvalidArgument(
                f"invalid repository name {path!r} in image reference {text!r}{lowercase_hint}",
                hint=_HINT,
            )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest), explicit_domain


def _split_domain(name: str) -> tuple[str, str, bool]:
    first, sep, rest = name.partition("/")
    is_domain = sep and ("." in first or ":" in first or first == LOCAL_DOMAIN or first.lower() != first)
    if not is_domain:
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path, bool(is_domain)
