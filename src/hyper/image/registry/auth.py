"""Registry credentials and authentication challenges.

Credentials live where Docker keeps them, `$DOCKER_CONFIG/config.json` (else
`~/.docker/config.json`), as base64 `user:password` under `auths`, so that
`docker login` and `hyper login` share them. Docker Hub's key is its legacy
`https://index.docker.io/v1/`; every other registry is keyed by `host[:port]`
(a key written with a scheme or path is found too). Credential helpers
(`credsStore`, `credHelpers`) are not run.

A registry says how to authenticate in `WWW-Authenticate` (RFC 7235):
`Basic realm=…` or `Bearer realm=…,service=…,scope=…`; a bearer token is
then fetched from the realm for the scopes a request needs.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyper.errors import DataLoss, InvalidArgument
from hyper.image.index import write_atomically
from hyper.image.reference import DEFAULT_DOMAIN

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_PARAM = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: Mapping[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return f"Basic {token}"


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges in one `WWW-Authenticate` value; unparsable parts are skipped."""
    challenges: list[Challenge] = []
    rest = header.strip()
    while rest:
        match = re.match(r"([A-Za-z][\w-]*)(?:\s+|$)", rest)
        if not match:
            break
        scheme, rest = match.group(1).lower(), rest[match.end() :]
        params: dict[str, str] = {}
        while True:
            param = _PARAM.match(rest)
            # A bare word followed by a space starts the next challenge, not a parameter.
            if not param:
                break
            quoted, bare = param.group(2), param.group(3)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
            params[param.group(1).lower()] = value
            rest = rest[param.end() :]
        challenges.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return challenges


def repository_scope(repository_path: str, *actions: str) -> str:
    """`repository:library/busybox:pull,push` for a token request."""
    return f"repository:{repository_path}:{','.join(dict.fromkeys(actions))}"


# -- the Docker config file ----------------------------------------------------------


def docker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    directory = env.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    return Path(env.get("HOME") or Path.home()) / ".docker" / "config.json"


def auth_key(domain: str) -> str:
    return DOCKER_HUB_AUTH_KEY if domain == DEFAULT_DOMAIN else domain


def _host_of_key(key: str) -> str:
    host = re.sub(r"^[a-z]+://", "", key).split("/", 1)[0]
    return DEFAULT_DOMAIN if host in ("index.docker.io", "registry-1.docker.io", "docker.io") else host


def _read_document(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        document = json.loads(data) if data.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataLoss(f"{path} is not valid JSON: {exc}", hint=f"fix or remove {path}") from exc
    if not isinstance(document, dict):
        raise DataLoss(f"{path} is not a JSON object", hint=f"fix or remove {path}")
    return document


def decode_auth(value: str, source: str) -> Credentials:
    try:
        text = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise DataLoss(f"{source}: 'auth' is not base64", hint="log in again with `hyper login`") from exc
    username, sep, password = text.partition(":")
    if not sep:
        raise DataLoss(f"{source}: 'auth' is not user:password", hint="log in again with `hyper login`")
    return Credentials(username, password)


def find_credentials(
    document: Mapping[str, Any], domain: str, source: str = "config.json"
) -> Credentials | None:
    """The credentials for registry `domain` in a parsed Docker config document."""
    auths = document.get("auths")
    if not isinstance(auths, dict):
        return None
    exact = auths.get(auth_key(domain))
    entries = [exact] if isinstance(exact, dict) else []
    entries += [v for k, v in auths.items() if isinstance(v, dict) and _host_of_key(k) == domain]
    for entry in entries:
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            return decode_auth(entry["auth"], f"{source} entry for {domain}")
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(entry["username"], entry["password"])
    return None


class CredentialStore:
    """Reads and writes the `auths` of a Docker config file, keeping everything else in it."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or docker_config_path()

    def get(self, domain: str) -> Credentials | None:
        return find_credentials(_read_document(self.path), domain, str(self.path))

    def store(self, domain: str, credentials: Credentials) -> None:
        if ":" in credentials.username:
            raise InvalidArgument("a user name cannot contain ':'", hint="check the user name")
        document = _read_document(self.path)
        auths = document.get("auths")
        if not isinstance(auths, dict):
            auths = {}
        auth = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
        auths[auth_key(domain)] = {"auth": auth}
        document["auths"] = auths
        self._write(document)

    def remove(self, domain: str) -> bool:
        document = _read_document(self.path)
        auths = document.get("auths")
        if not isinstance(auths, dict):
            return False
        keys = [k for k in auths if k == auth_key(domain) or _host_of_key(k) == domain]
        for key in keys:
            del auths[key]
        if keys:
            self._write(document)
        return bool(keys)

    def _write(self, document: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self.path, json.dumps(document, indent="\t").encode() + b"\n")
        os.chmod(self.path, 0o600)
