"""The pure parts of the registry client: challenges, scopes, platforms, credentials,
endpoints and insecure rules, the bearer-token flow over a mock transport, and
progress lines for a non-terminal."""

from __future__ import annotations

import base64
import io
import json
import stat
from pathlib import Path

import httpx
import pytest

from hyper.cli.progress import PlainProgress, progress_display
from hyper.errors import DataLoss, InvalidArgument, NotFound, PermissionDenied
from hyper.image.registry import Credentials, CredentialStore, ProgressEvent, RegistrySettings
from hyper.image.registry.auth import find_credentials, parse_challenges, repository_scope
from hyper.image.registry.client import RegistryClient
from hyper.image.registry.hosts import Endpoint, is_insecure, is_loopback
from hyper.image.registry.platform import Platform, parse_platform, platform_matches, select_manifest


def test_parse_bearer_and_basic_challenges() -> None:
    [bearer] = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"'
    )
    assert bearer.scheme == "bearer"
    assert bearer.realm == "https://auth.docker.io/token"
    assert bearer.params["service"] == "registry.docker.io"
    assert bearer.params["scope"] == "repository:library/busybox:pull"
    [basic] = parse_challenges('Basic realm="hyper-test"')
    assert (basic.scheme, basic.realm) == ("basic", "hyper-test")
    [escaped] = parse_challenges(r'Bearer realm="a\"b", error=invalid_token')
    assert escaped.realm == 'a"b' and escaped.params["error"] == "invalid_token"
    assert parse_challenges("") == []


def test_repository_scope() -> None:
    assert repository_scope("library/busybox", "pull") == "repository:library/busybox:pull"
    assert repository_scope("a/b", "pull", "push", "pull") == "repository:a/b:pull,push"


def test_platforms() -> None:
    assert parse_platform("linux/amd64") == Platform("linux", "amd64")
    assert parse_platform("linux/aarch64/v8") == Platform("linux", "arm64", "v8")
    with pytest.raises(InvalidArgument):
        parse_platform("amd64")
    assert platform_matches(Platform("linux", "arm64"), Platform("linux", "arm64", "v8"))
    assert platform_matches(Platform("linux", "arm64", "v8"), Platform("linux", "arm64"))
    assert not platform_matches(Platform("linux", "arm", "v7"), Platform("linux", "arm", "v6"))
    assert not platform_matches(Platform("linux", "amd64"), Platform("windows", "amd64"))


def _entry(digest: str, **platform: str) -> dict[str, object]:
    return {"mediaType": "m", "digest": "sha256:" + digest * 64, "size": 1, "platform": platform}


def test_select_manifest_from_index() -> None:
    index = {
        "manifests": [
            _entry("a", os="linux", architecture="arm", variant="v6"),
            _entry("b", os="linux", architecture="arm", variant="v7"),
            _entry("c", os="linux", architecture="amd64"),
            _entry("d", os="unknown", architecture="unknown"),
        ]
    }
    assert select_manifest(index, Platform("linux", "amd64"), "idx").digest == "sha256:" + "c" * 64
    assert select_manifest(index, Platform("linux", "arm", "v7"), "idx").digest == "sha256:" + "b" * 64
    with pytest.raises(NotFound, match=r"offers linux/arm/v6, linux/arm/v7, linux/amd64\)"):
        select_manifest(index, Platform("linux", "s390x"), "idx")


def test_docker_config_credentials(tmp_path: Path) -> None:
    auth = base64.b64encode(b"me:pw:with:colons").decode()
    document = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": auth},
            "https://reg.example:5000/v2/": {"auth": auth},
            "other.example": {"username": "u", "password": "p"},
        }
    }
    assert find_credentials(document, "docker.io") == Credentials("me", "pw:with:colons")
    assert find_credentials(document, "reg.example:5000") == Credentials("me", "pw:with:colons")
    assert find_credentials(document, "other.example") == Credentials("u", "p")
    assert find_credentials(document, "nowhere.example") is None
    with pytest.raises(DataLoss, match="not base64"):
        find_credentials({"auths": {"x.example": {"auth": "%%%"}}}, "x.example")


def test_credential_store_keeps_other_settings_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "docker" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"credsStore": "", "proxies": {"default": {}}}))
    store = CredentialStore(path)
    store.store("127.0.0.1:5000", Credentials("u", "p"))
    store.store("docker.io", Credentials("hub", "x"))
    document = json.loads(path.read_text())
    assert document["proxies"] == {"default": {}}
    assert set(document["auths"]) == {"127.0.0.1:5000", "https://index.docker.io/v1/"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.get("127.0.0.1:5000") == Credentials("u", "p")
    assert store.remove("127.0.0.1:5000") and not store.remove("127.0.0.1:5000")
    assert store.get("127.0.0.1:5000") is None and store.get("docker.io") == Credentials("hub", "x")


def test_insecure_rules() -> None:
    assert is_loopback("127.0.0.1:5000") and is_loopback("localhost") and is_loopback("[::1]:5000")
    assert not is_loopback("10.0.0.1:5000")
    assert is_insecure("10.1.2.3:5000", ["10.0.0.0/8"])
    assert is_insecure("reg.lan:5000", ["reg.lan:5000"]) and is_insecure("reg.lan:5000", ["reg.lan"])
    assert not is_insecure("reg.lan:5001", ["reg.lan:5000"])
    assert not is_insecure("10.1.2.3:5000", [], loopback=True)


def test_endpoints_mirrors_and_insecure() -> None:
    settings = RegistrySettings.from_document(
        {
            "insecure-registries": ["reg.lan:5000"],
            "registry-mirrors": ["https://mirror.example/"],
            "mirrors": {"ghcr.io": ["http://cache.lan"]},
        },
        "registries.json",
    )
    assert [e.url for e in settings.endpoints("docker.io")] == [
        "https://mirror.example",
        "https://registry-1.docker.io",
    ]
    assert [e.url for e in settings.endpoints("docker.io", for_push=True)] == ["https://registry-1.docker.io"]
    assert [(e.url, e.mirror) for e in settings.endpoints("ghcr.io")] == [
        ("http://cache.lan", True),
        ("https://ghcr.io", False),
    ]
    assert settings.endpoints("reg.lan:5000") == [
        Endpoint("https://reg.lan:5000", "reg.lan:5000", verify_tls=False),
        Endpoint("http://reg.lan:5000", "reg.lan:5000"),
    ]
    # Unlisted loopback: plain HTTP allowed, but HTTPS stays verified.
    assert [(e.url, e.verify_tls) for e in settings.endpoints("127.0.0.1:5000")] == [
        ("https://127.0.0.1:5000", True),
        ("http://127.0.0.1:5000", True),
    ]
    with pytest.raises(InvalidArgument, match="scheme"):
        RegistrySettings.from_document({"registry-mirrors": ["mirror.example"]}, "r.json")


def test_bearer_token_flow_over_mock_transport() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        if request.url.path == "/token":
            if request.headers.get("authorization") != Credentials("u", "p").basic_header():
                return httpx.Response(401)
            assert request.url.params.get_list("scope") == ["repository:a/b:pull"]
            assert request.url.params["service"] == "reg"
            return httpx.Response(200, json={"token": "T"})
        if request.headers.get("authorization") == "Bearer T":
            return httpx.Response(200, content=b"ok")
        challenge = 'Bearer realm="https://reg.example/token",service="reg"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    endpoint = Endpoint("https://reg.example", "reg.example")
    transport = httpx.MockTransport(handler)
    with RegistryClient(endpoint, RegistrySettings(), Credentials("u", "p"), transport=transport) as client:
        client.ping()
        response = client.request("GET", "/v2/a/b/tags/list", scopes=["repository:a/b:pull"], what="list")
        assert response.content == b"ok"
        client.request("GET", "/v2/a/b/tags/list", scopes=["repository:a/b:pull"], what="list")
    assert [auth for url, auth in seen if "/token" in url] == [Credentials("u", "p").basic_header()]
    with RegistryClient(endpoint, RegistrySettings(), Credentials("u", "bad"), transport=transport) as client:
        client.ping()
        with pytest.raises(PermissionDenied, match="rejected the credentials"):
            client.request("GET", "/v2/a/b/tags/list", scopes=["repository:a/b:pull"], what="list")


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        (None, "requires authentication"),
        (Credentials("reader", "p"), r"denied access \(the account lacks repository:a/b:pull,push\)"),
    ],
)
def test_a_token_without_the_scope_is_not_called_rejected_credentials(
    credentials: Credentials | None, message: str
) -> None:
    """The token service answers anonymous or under-privileged requests; the registry then says 401."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, json={"token": "T"})  # a token with fewer rights than asked for
        challenge = 'Bearer realm="https://reg.example/token",service="reg"'
        if request.headers.get("authorization") == "Bearer T":
            challenge += ',scope="repository:a/b:pull,push",error="insufficient_scope"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    endpoint = Endpoint("https://reg.example", "reg.example")
    transport = httpx.MockTransport(handler)
    with RegistryClient(endpoint, RegistrySettings(), credentials, transport=transport) as client:
        client.ping()
        with pytest.raises(PermissionDenied, match=message) as caught:
            client.request(
                "POST", "/v2/a/b/blobs/uploads/", scopes=["repository:a/b:pull,push"], what="upload"
            )
    assert "rejected the credentials" not in str(caught.value)


def test_plain_progress_prints_status_changes_only() -> None:
    out = io.StringIO()
    show = PlainProgress(out)
    show(ProgressEvent("abc", "Pulling fs layer", 0, 10))
    show(ProgressEvent("abc", "Downloading", 5, 10))
    show(ProgressEvent("abc", "Downloading", 7, 10))
    show(ProgressEvent("abc", "Download complete", 10, 10))
    show(ProgressEvent("abc", "Download complete", 10, 10))
    show(ProgressEvent("", "The push refers to repository [x]"))
    assert out.getvalue().splitlines() == [
        "abc: Pulling fs layer",
        "abc: Download complete",
        "The push refers to repository [x]",
    ]
    with progress_display(out, quiet=True) as quiet:
        quiet(ProgressEvent("abc", "Pull complete"))
    assert out.getvalue().count("\n") == 3
