"""Docker's JSON for images, as pure functions over the store's `Image` values.

What `GET /images/json`, `/images/{name}/json` and `/history` answer, the
filters of the image list, the progress messages of pull and push, and the
`X-Registry-Auth` header: Docker Engine API 1.43 shapes, built here without
touching the store so that each can be tested on its own.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hyper.api.docker.labels import label_matches
from hyper.errors import DataLoss, HyperError, InvalidArgument
from hyper.image import Image, Reference, parse_reference
from hyper.image.registry import Credentials, ProgressEvent
from hyper.image.registry.auth import decode_auth
from hyper.image.store import familiar_name, repo_digests

LIST_FILTERS = frozenset({"reference", "dangling", "label", "before", "since"})
TRANSFER_STATUSES = frozenset({"Downloading", "Pushing", "Extracting"})
ZERO_TIME = "0001-01-01T00:00:00Z"
_BAR_WIDTH = 50

# The part of Docker's container.Config an image inspect shows, with Docker's defaults.
_CONFIG_DEFAULTS: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "User": "",
    "AttachStdin": False,
    "AttachStdout": False,
    "AttachStderr": False,
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "Env": None,
    "Cmd": None,
    "Image": "",
    "Volumes": None,
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": None,
}
_CONFIG_OPTIONAL = ("ExposedPorts", "Healthcheck", "ArgsEscaped", "StopSignal", "StopTimeout", "Shell")


# -- names -----------------------------------------------------------------------------


def familiar(reference: Reference) -> str:
    """`busybox:latest`, `127.0.0.1:5000/app:v1` or `busybox@sha256:…`, as Docker prints a reference."""
    name = reference.familiar_repository
    if reference.digest is not None:
        return f"{name}@{reference.digest}"
    return f"{name}:{reference.tag}" if reference.tag else name


def pull_reference(from_image: str, tag: str) -> Reference:
    """The reference `POST /images/create?fromImage=…&tag=…` asks for (the tag may be a digest)."""
    if not from_image:
        raise InvalidArgument("fromImage is empty", hint="name the image to pull, e.g. fromImage=busybox")
    base = parse_reference(from_image)
    if tag:
        separator = "@" if tag.startswith("sha256:") else ":"
        return parse_reference(f"{base.repository}{separator}{tag}")
    if base.digest is None and not has_explicit_tag(from_image):
        raise InvalidArgument(
            f"pulling every tag of {base.familiar_repository} is not supported",
            hint="name one tag, e.g. tag=latest (docker pull without --all-tags)",
        )
    return base


def has_explicit_tag(text: str) -> bool:
    """Whether `text` names a tag itself (`app:v1`, `host:5000/app:v1`), not only a repository."""
    return ":" in text.split("@", 1)[0].rsplit("/", 1)[-1]


def tag_target(repo: str, tag: str) -> str:
    """The new name `POST /images/{name}/tag?repo=…&tag=…` gives (Docker's default tag: latest)."""
    if not repo:
        raise InvalidArgument("repository name must have at least one component", hint="give repo=NAME")
    base = parse_reference(repo)
    if base.digest is not None:
        raise InvalidArgument(f"cannot tag as {repo!r}: a digest cannot be a tag", hint="give NAME[:TAG]")
    return str(parse_reference(f"{base.repository}:{tag}")) if tag else str(base)


# -- times -----------------------------------------------------------------------------


def created_seconds(created: str | None) -> int:
    """An RFC 3339 time as Unix seconds (0 when missing or unreadable, as Docker shows it)."""
    return int(created_time(created))


def created_time(created: str | None) -> float:
    """An RFC 3339 time as a Unix timestamp, 0.0 when missing or unreadable."""
    moment = _parse_time(created)
    return moment.timestamp() if moment is not None else 0.0


def _parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    # Go writes nanoseconds; Python reads at most microseconds.
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    try:
        moment = datetime.datetime.fromisoformat(trimmed)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


# -- the image list ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageFilters:
    """The `filters` of `GET /images/json`; before/since are given as the named images' created times."""

    references: tuple[str, ...] = ()
    dangling: bool | None = None
    labels: tuple[str, ...] = ()
    before: float | None = None
    since: float | None = None


def check_list_filters(wanted: Mapping[str, Sequence[str]]) -> None:
    for key in wanted:
        if key not in LIST_FILTERS:
            raise InvalidArgument(
                f"invalid filter {key!r}", hint=f"filter images by {', '.join(sorted(LIST_FILTERS))}"
            )
    dangling = wanted.get("dangling", ())
    if any(value.lower() not in ("true", "false", "1", "0") for value in dangling):
        raise InvalidArgument(f"invalid filter 'dangling={dangling[0]}'", hint="use dangling=true or false")


def dangling_filter(values: Sequence[str]) -> bool | None:
    if not values:
        return None
    return any(value.lower() in ("true", "1") for value in values)


def reference_matches(pattern: str, tag: str) -> bool:
    """Docker's reference filter: a glob on `name:tag` or on the name alone (`busy*`, `*/app`)."""
    reference = parse_reference(tag)
    glob = _glob_regex(pattern)
    return bool(glob.fullmatch(familiar(reference)) or glob.fullmatch(reference.familiar_repository))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Go's `path.Match` as a regex: `*` and `?` stop at `/`, `[…]` classes, `\\` escapes."""
    out: list[str] = []
    position = 0
    while position < len(pattern):
        char = pattern[position]
        position += 1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and position < len(pattern):
            out.append(re.escape(pattern[position]))
            position += 1
        elif char == "[":
            end = pattern.find("]", position + 1)
            if end == -1:
                raise InvalidArgument(f"invalid reference filter {pattern!r}: unclosed [", hint="close the [")
            body = pattern[position:end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            escaped = body.replace("\\", "\\\\").replace("^", "\\^")
            out.append(f"[{'^' if negate else ''}{escaped}]")
            position = end + 1
        else:
            out.append(re.escape(char))
    return re.compile("".join(out))


def image_summaries(images: Sequence[Image], wanted: ImageFilters) -> list[dict[str, Any]]:
    """`GET /images/json`: one entry per image, newest first, Docker's filters applied."""
    found: list[dict[str, Any]] = []
    for image in images:
        created = created_time(image.created)
        labels = dict(image.config.labels)
        if wanted.before is not None and created >= wanted.before:
            continue
        if wanted.since is not None and created <= wanted.since:
            continue
        if not all(label_matches(labels, label) for label in wanted.labels):
            continue
        tags = list(image.repo_tags)
        if wanted.references:
            tags = [t for t in tags if any(reference_matches(p, t) for p in wanted.references)]
            if not tags:
                continue
        if wanted.dangling is not None and wanted.dangling == bool(image.repo_tags):
            continue
        repo_tags = [familiar_name(tag) for tag in tags]
        digests = repo_digests(dataclasses.replace(image, repo_tags=tuple(tags)))
        found.append(
            {
                "Id": image.id,
                "ParentId": "",
                # API 1.43 shows an untagged image with Docker's placeholders.
                "RepoTags": repo_tags or ["<none>:<none>"],
                "RepoDigests": digests or ["<none>@<none>"],
                "Created": int(created),
                "Size": image.size,
                "SharedSize": -1,
                "VirtualSize": image.size,
                "Labels": labels,
                "Containers": -1,
            }
        )
    return found


# -- inspect and history ---------------------------------------------------------------------


def _container_config(raw: Any) -> dict[str, Any]:
    inner = raw if isinstance(raw, dict) else {}
    config = dict(_CONFIG_DEFAULTS)
    for key in _CONFIG_DEFAULTS:
        if key in inner and inner[key] is not None:
            config[key] = inner[key]
    for key in _CONFIG_OPTIONAL:
        if inner.get(key) not in (None, "", {}):
            config[key] = inner[key]
    return config


def inspect_document(image: Image, config: Mapping[str, Any]) -> dict[str, Any]:
    """`GET /images/{name}/json` (Docker's ImageInspect) from the image and its config blob."""
    document: dict[str, Any] = {
        "Id": image.id,
        "RepoTags": [familiar_name(tag) for tag in image.repo_tags],
        "RepoDigests": repo_digests(image),
        "Parent": "",
        "Comment": str(config.get("comment") or ""),
        "Created": image.created or ZERO_TIME,
        "Container": "",
        "ContainerConfig": _container_config(None),
        "DockerVersion": str(config.get("docker_version") or ""),
        "Author": str(config.get("author") or ""),
        "Config": _container_config(config.get("config")),
        "Architecture": image.architecture,
        "Os": image.os,
        "Size": image.size,
        "VirtualSize": image.size,
        "GraphDriver": {"Name": "hyper-layerdisk", "Data": {"Layers": " ".join(image.layers)}},
        "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)},
        "Metadata": {"LastTagTime": ZERO_TIME},
    }
    if config.get("variant"):
        document["Variant"] = str(config["variant"])
    if config.get("os.version"):
        document["OsVersion"] = str(config["os.version"])
    return document


def history_entries(
    image: Image, config: Mapping[str, Any], layer_sizes: Sequence[int]
) -> list[dict[str, Any]]:
    """`GET /images/{name}/history`: newest first; an entry that made a layer gets its size."""
    history = config.get("history")
    entries = [e for e in history if isinstance(e, dict)] if isinstance(history, list) else []
    if not entries:
        entries = [{"created": image.created} for _ in image.diff_ids] or [{"created": image.created}]
    sizes = iter(layer_sizes)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        rows.append(
            {
                "Id": "<missing>",
                "Created": created_seconds(str(entry.get("created") or "")),
                "CreatedBy": str(entry.get("created_by") or ""),
                "Tags": None,
                "Size": 0 if entry.get("empty_layer") else next(sizes, 0),
                "Comment": str(entry.get("comment") or ""),
            }
        )
    rows.reverse()
    rows[0]["Id"] = image.id
    rows[0]["Tags"] = [familiar_name(tag) for tag in image.repo_tags] or None
    return rows


# -- progress streams --------------------------------------------------------------------------


def human_size(size: float) -> str:
    """Docker's `units.HumanSize`: decimal units, four significant digits (`1.234MB`)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.4g}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def progress_bar(current: int, total: int | None) -> str:
    """The `progress` text of a JSON message: `[====>     ]  1.2MB/3.4MB`."""
    if not total or total <= 0:
        return f"{human_size(current):>8}" if current > 0 else ""
    filled = min(_BAR_WIDTH, int(current / total * 100) // 2)
    bar = f"[{'=' * filled}>{' ' * (_BAR_WIDTH - filled)}] "
    counts = f"{human_size(current):>8}/{human_size(total)}" if current <= total else ""
    return bar + counts


def progress_message(event: ProgressEvent) -> dict[str, Any]:
    """One line of Docker's JSON progress stream for a pull or push event."""
    message: dict[str, Any] = {"status": event.status}
    if event.id:
        detail: dict[str, int] = {}
        if event.status in TRANSFER_STATUSES:
            detail["current"] = event.current
            if event.total:
                detail["total"] = event.total
            message["progress"] = progress_bar(event.current, event.total)
        message["progressDetail"] = detail
        message["id"] = event.id
    return message


def error_text(error: BaseException) -> str:
    if isinstance(error, HyperError):
        return str(error)  # the message, and the hint in parentheses
    return f"{type(error).__name__}: {error}"


def error_message(error: BaseException) -> dict[str, Any]:
    """A failure inside a progress stream; `docker pull` prints it and exits non-zero."""
    text = error_text(error)
    return {"errorDetail": {"message": text}, "error": text}


def coalesce(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop transfer updates that a later one for the same layer in the batch supersedes."""
    kept: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for message in reversed(messages):
        status, ident = message.get("status"), message.get("id")
        if isinstance(status, str) and isinstance(ident, str) and status in TRANSFER_STATUSES:
            if (ident, status) in seen:
                continue
            seen.add((ident, status))
        kept.append(message)
    kept.reverse()
    return kept


# -- registry credentials ------------------------------------------------------------------------


def registry_auth(header: str | None) -> Credentials | None:
    """The user name and password of an `X-Registry-Auth` header (base64url JSON), if it has them.

    Docker ignores a header it cannot decode; so does this. An identity token
    (an OAuth refresh token) cannot be used by Hyper's registry client and is
    ignored too, so the stored credentials apply.
    """
    if not header or not header.strip():
        return None
    text = header.strip()
    try:
        document = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    username, password = document.get("username"), document.get("password")
    if isinstance(username, str) and isinstance(password, str) and username and password:
        return Credentials(username, password)
    auth = document.get("auth")
    if isinstance(auth, str) and auth:
        try:
            return decode_auth(auth, "X-Registry-Auth")
        except DataLoss:
            return None
    return None
