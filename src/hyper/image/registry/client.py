"""An HTTP client for one registry endpoint: authentication, retries, error mapping.

Everything the distribution protocol needs below the level of manifests and
blobs lives here: the `/v2/` ping that finds the endpoint and its challenge,
bearer tokens fetched per scope and cached, Basic credentials, retries with
exponential backoff on 5xx, 429 and dropped connections, and the mapping of
httpx errors and registry error bodies to Hyper's error categories (done here
once, so nothing above looks at status codes or exception types of httpx).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx

from hyper import __version__
from hyper.errors import (
    FailedPrecondition,
    HyperError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from hyper.image.registry.auth import Challenge, Credentials, parse_challenges
from hyper.image.registry.hosts import Endpoint, RegistrySettings

USER_AGENT = f"hyper/{__version__}"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
Sleep = Callable[[float], None]


class RegistryClient:
    """Talks to one endpoint of one registry; safe to share among threads."""

    def __init__(
        self,
        endpoint: Endpoint,
        settings: RegistrySettings,
        credentials: Credentials | None,
        *,
        attempts: int = 5,
        backoff: float = 0.25,
        timeout: float = 60.0,
        sleep: Sleep = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.credentials = credentials
        self.attempts = attempts
        self.backoff = backoff
        self._sleep = sleep
        # The system's CAs (and certs.d) even for a plain-HTTP endpoint, which may
        # redirect to HTTPS; httpx's own default would also load certifi's bundle.
        verify: Any = settings.ssl_context(endpoint)
        self._http = httpx.Client(
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
            transport=transport,  # tests pass httpx.MockTransport
        )
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], str] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.endpoint.host

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.endpoint.url}{path}"

    # -- connecting ------------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/ once (no retries): learns the auth challenge; raises Unavailable if unreachable."""
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._http.get(self.url("/v2/"))
            except httpx.HTTPError as exc:
                error = Unavailable(
                    f"cannot reach registry {self.name} at {self.endpoint.url}: {_reason(exc)}",
                    hint=_unreachable_hint(self.endpoint),
                )
                error.certificate_rejected = "CERTIFICATE_VERIFY_FAILED" in str(exc)  # type: ignore[attr-defined]
                raise error from exc
            if response.status_code not in RETRY_STATUS or attempt == self.attempts:
                break
            self._sleep(_retry_after(response) or self.backoff * 2 ** (attempt - 1))
        if response.status_code == 401:
            self._challenge = _pick_challenge(response)
        elif response.status_code >= 400 and response.status_code != 404:
            raise Unavailable(
                f"registry {self.name} answered /v2/ with HTTP {response.status_code}",
                hint="check that the address is a Docker/OCI registry",
            )

    # -- requests --------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        params: Mapping[str, str] | None = None,
        ok: Sequence[int] = (200,),
        what: str,
        retry_body: bool = True,
    ) -> httpx.Response:
        """Send and read the whole answer; statuses not in `ok` become Hyper errors."""
        with self.stream(
            method,
            path,
            scopes=scopes,
            headers=headers,
            content=content,
            params=params,
            ok=ok,
            what=what,
            retry_body=retry_body,
        ) as response:
            response.read()
            return response

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        params: Mapping[str, str] | None = None,
        ok: Sequence[int] = (200,),
        what: str,
        retry_body: bool = True,
    ) -> Iterator[httpx.Response]:
        """Send with authentication and retries; yield the response with its body unread.

        A body given as an iterator cannot be sent twice, so `retry_body=False`
        (uploads of chunks) gives up after the first transport failure.
        """
        response = self._send(
            method,
            path,
            scopes=scopes,
            headers=headers,
            content=content,
            params=params,
            what=what,
            retry_body=retry_body,
        )
        try:
            if response.status_code not in ok:
                response.read()
                raise self._status_error(response, what)
            yield response
        finally:
            response.close()

    def _status_error(self, response: httpx.Response, what: str) -> HyperError:
        """`status_error`, except that a 401 after authenticating says why it came.

        A token service hands out tokens without credentials (anonymous) or
        with fewer actions than asked for; the registry then answers 401 with
        `error="insufficient_scope"`. Neither means the credentials were wrong.
        """
        if response.status_code == 401 and self._challenge is not None:
            if self.credentials is None:
                return PermissionDenied(
                    f"{what}: registry {self.name} requires authentication",
                    hint=f"log in with `hyper login {self.name}`",
                )
            challenge = _pick_challenge(response)
            if challenge is not None and challenge.params.get("error") == "insufficient_scope":
                needed = challenge.params.get("scope")
                return PermissionDenied(
                    f"{what}: registry {self.name} denied access"
                    + (f" (the account lacks {needed})" if needed else ""),
                    hint="check that your account may access this repository with these rights",
                )
        return status_error(response, what, self.name)

    def _send(
        self,
        method: str,
        path: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None,
        content: bytes | Iterator[bytes] | None,
        params: Mapping[str, str] | None,
        what: str,
        retry_body: bool,
    ) -> httpx.Response:
        attempts = self.attempts if retry_body else 1
        authenticated_again = False
        attempt = 0
        while True:
            attempt += 1
            request_headers = dict(headers or {})
            authorization = self._authorization(scopes)
            if authorization:
                request_headers["Authorization"] = authorization
            request = self._http.build_request(
                method, self.url(path), headers=request_headers, content=content, params=params
            )
            try:
                response = self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                if attempt >= attempts or not _retryable(exc):
                    raise Unavailable(
                        f"{what} from {self.name} failed: {_reason(exc)}",
                        hint=_unreachable_hint(self.endpoint),
                    ) from exc
                self._sleep(self.backoff * 2 ** (attempt - 1))
                continue
            if response.status_code == 401 and not authenticated_again:
                challenge = _pick_challenge(response)
                response.close()
                if challenge is None:
                    raise PermissionDenied(
                        f"registry {self.name} refused {what} without saying how to authenticate",
                        hint="check the registry's authentication set-up",
                    )
                self._challenge = challenge
                self._tokens.pop(tuple(scopes), None)
                authenticated_again = True
                attempt -= 1
                continue
            if response.status_code in RETRY_STATUS and attempt < attempts:
                delay = _retry_after(response) or self.backoff * 2 ** (attempt - 1)
                response.close()
                self._sleep(min(delay, 30.0))
                continue
            return response

    # -- authentication ----------------------------------------------------------------

    def _authorization(self, scopes: Sequence[str]) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            if self.credentials is None:
                raise PermissionDenied(
                    f"registry {self.name} requires a user name and password",
                    hint=f"log in with `hyper login {self.name}`",
                )
            return self.credentials.basic_header()
        key = tuple(scopes)
        token = self._tokens.get(key)
        if token is None:
            token = self._fetch_token(challenge, scopes)
            self._tokens[key] = token
        return f"Bearer {token}"

    def _fetch_token(self, challenge: Challenge, scopes: Sequence[str]) -> str:
        realm = challenge.realm
        if not realm or not realm.startswith(("http://", "https://")):
            raise PermissionDenied(
                f"registry {self.name} sent a bearer challenge without a usable realm",
                hint="check the registry's token service set-up",
            )
        params: list[tuple[str, str | int | float | bool | None]] = []
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        params += [("scope", scope) for scope in scopes]
        headers = {"Authorization": self.credentials.basic_header()} if self.credentials else {}
        try:
            response = self._http.get(realm, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"cannot reach the token service {realm} of {self.name}: {_reason(exc)}",
                hint="check the network and the registry's token service",
            ) from exc
        if response.status_code in (401, 403):
            raise PermissionDenied(
                f"registry {self.name} rejected the credentials (HTTP {response.status_code} from {realm})",
                hint=f"check the user name and password; log in again with `hyper login {self.name}`",
            )
        if response.status_code != 200:
            raise Unavailable(
                f"token service {realm} answered HTTP {response.status_code}",
                hint="try again later",
            )
        try:
            document = response.json()
        except ValueError as exc:
            raise Unavailable(f"token service {realm} sent invalid JSON", hint="try again later") from exc
        token = document.get("token") or document.get("access_token") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            raise Unavailable(f"token service {realm} sent no token", hint="try again later")
        return token


def _pick_challenge(response: httpx.Response) -> Challenge | None:
    challenges = [
        c for value in response.headers.get_list("www-authenticate") for c in parse_challenges(value)
    ]
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


def _retryable(exc: httpx.HTTPError) -> bool:
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE" in str(exc).upper():
        return False
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def _unreachable_hint(endpoint: Endpoint) -> str:
    if endpoint.plain_http or not endpoint.verify_tls:
        return "check that the registry is running and the address is right"
    return (
        "check that the registry is running; for a private CA put its certificate in "
        f"/etc/hyper/certs.d/{endpoint.url.split('://', 1)[1]}/ca.crt, or list the registry "
        "in insecure-registries"
    )


class TransferInterrupted(Unavailable):
    """The connection failed while a response body was being read."""


def iter_body(response: httpx.Response) -> Iterator[bytes]:
    """The raw (not content-decoded) body as it arrives, with transport failures mapped.

    No re-chunking: bytes received before a dropped connection must reach the
    caller, so that a resumed download starts after them.
    """
    try:
        yield from response.iter_raw()
    except httpx.HTTPError as exc:
        raise TransferInterrupted(
            f"connection to {response.request.url.host} failed mid-transfer: {_reason(exc)}",
            hint="check the network and try again",
        ) from exc


def registry_errors(response: httpx.Response) -> list[tuple[str, str]]:
    """(code, message) pairs of a registry's JSON error body, if it has one."""
    try:
        document = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return []
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return []
    return [
        (str(error.get("code", "")), str(error.get("message", "")))
        for error in errors
        if isinstance(error, dict)
    ]


def status_error(response: httpx.Response, what: str, registry: str) -> HyperError:
    """The Hyper error for an unexpected status (error category by status, detail from the body)."""
    status = response.status_code
    details = "; ".join(
        f"{code}: {message}" if message else code for code, message in registry_errors(response)
    )
    suffix = f" ({details})" if details else ""
    if status == 404:
        return NotFound(
            f"{what}: not found in registry {registry}{suffix}",
            hint="check the repository name and tag; log in if the repository is private",
        )
    if status == 401:
        return PermissionDenied(
            f"{what}: registry {registry} rejected the credentials{suffix}",
            hint=f"log in with `hyper login {registry}`",
        )
    if status == 403:
        return PermissionDenied(
            f"{what}: registry {registry} denied access{suffix}",
            hint="check that your account may access this repository",
        )
    if status in (400, 405, 409, 412, 413, 416, 422):
        error = InvalidArgument if status in (400, 422) else FailedPrecondition
        return error(
            f"{what}: registry {registry} refused the request with HTTP {status}{suffix}",
            hint="the registry may not support this operation or content",
        )
    return Unavailable(
        f"{what}: registry {registry} answered HTTP {status}{suffix}",
        hint="the registry is failing; try again later",
    )


def connect(
    host: str,
    settings: RegistrySettings,
    credentials: Credentials | None,
    *,
    for_push: bool = False,
    **options: Any,
) -> Iterator[RegistryClient]:
    """Pinged clients for `host`, in order of preference (mirrors first when pulling).

    An insecure registry's HTTPS endpoint that fails is skipped for its plain
    HTTP one; if nothing answers, the last endpoint's error is raised (or a
    certificate rejection, which explains more than what failed after it).
    """
    chosen_error: HyperError | None = None
    yielded = False
    for endpoint in settings.endpoints(host, for_push=for_push):
        client = RegistryClient(endpoint, settings, credentials, **options)
        try:
            client.ping()
        except Unavailable as exc:
            client.close()
            # A rejected certificate says more than the plain-HTTP fallback failing after it.
            if chosen_error is None or not getattr(chosen_error, "certificate_rejected", False):
                chosen_error = exc
            continue
        yielded = True
        try:
            yield client
        finally:
            client.close()
    if chosen_error is not None and not yielded:
        raise chosen_error
