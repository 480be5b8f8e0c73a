"""Signed requests: an HMAC over the request, as Hyper.sh's API had them.

A client that holds a key's secret can sign each request instead of sending
the secret along (a bearer token): the secret never crosses the wire, a
captured request cannot be changed, and it cannot be replayed. The headers:

    Authorization: HYPER-HMAC-SHA256 Credential=KEY_ID, Signature=HEX
    X-Hyper-Date: 20261202T120000Z          (UTC, within WINDOW of hyperd's clock)
    X-Hyper-Nonce: 16-64 of [A-Za-z0-9_-]   (fresh per request)
    X-Hyper-Content-Sha256: HEX             (of the body; of b"" when there is none)

and the signature is HMAC-SHA256, keyed with the key derived from the secret
(`model.derive_signing_key`), over these lines joined by newlines:

    HYPER-HMAC-SHA256
    <X-Hyper-Date>
    <X-Hyper-Nonce>
    <METHOD>
    <path, as sent>
    <query: its pairs sorted, each percent-encoded as RFC 3986 says, joined by &>
    <X-Hyper-Content-Sha256>

hyperd checks the body against its hash as it reads it. A signature is
accepted once: hyperd remembers the signatures it saw within the window.
Pure, but for `ReplayCache`, which is state in memory.
"""

from __future__ import annotations

import datetime
import hashlib
import heapq
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from hyper.errors import ResourceExhausted, Unauthenticated

SCHEME = "HYPER-HMAC-SHA256"
DATE_HEADER = "X-Hyper-Date"
NONCE_HEADER = "X-Hyper-Nonce"
CONTENT_HEADER = "X-Hyper-Content-Sha256"
WINDOW_SECONDS = 300.0  # how far a request's date may be from hyperd's clock, either way
MAX_AUTHORIZATION = 512
REPLAY_CACHE_SIZE = 200_000

_AUTHORIZATION = re.compile(
    rf"{SCHEME} Credential=(?P<key>HK[A-Z2-7]{{16}}), ?Signature=(?P<signature>[0-9a-f]{{64}})"
)
_DATE = re.compile(r"\d{8}T\d{6}Z")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SignedRequest:
    """The signature parts of a request, checked for form."""

    key_id: str
    signature: str
    date: str
    nonce: str
    content_sha256: str

    @property
    def timestamp(self) -> float:
        moment = datetime.datetime.strptime(self.date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
        return moment.timestamp()


def is_signed(authorization: str) -> bool:
    return authorization.startswith(SCHEME + " ")


def parse_signed(headers: Mapping[str, str]) -> SignedRequest:
    """The request's signature headers; a malformed one is refused, saying which."""
    authorization = headers.get("Authorization", "")
    if len(authorization) > MAX_AUTHORIZATION:
        raise Unauthenticated("the Authorization header is too long")
    match = _AUTHORIZATION.fullmatch(authorization)
    if match is None:
        raise Unauthenticated(
            "the signature is malformed",
            hint=f"send Authorization: {SCHEME} Credential=KEY_ID, Signature=64 hex digits",
        )
    date = headers.get(DATE_HEADER, "")
    if not _DATE.fullmatch(date):
        raise Unauthenticated(f"a signed request needs {DATE_HEADER}: YYYYMMDDTHHMMSSZ (UTC)")
    nonce = headers.get(NONCE_HEADER, "")
    if not _NONCE.fullmatch(nonce):
        raise Unauthenticated(f"a signed request needs {NONCE_HEADER}: 16 to 64 of A-Z a-z 0-9 _ -")
    content = headers.get(CONTENT_HEADER, "")
    if not _SHA256.fullmatch(content):
        raise Unauthenticated(f"a signed request needs {CONTENT_HEADER}: the body's SHA-256 in hex")
    signed = SignedRequest(match["key"], match["signature"], date, nonce, content)
    try:
        signed.timestamp  # noqa: B018  # a date that matches the pattern may still not exist
    except ValueError:
        raise Unauthenticated(f"{DATE_HEADER} {date!r} is not a date") from None
    return signed


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(pairs))


def string_to_sign(
    method: str, path: str, query: Iterable[tuple[str, str]], *, date: str, nonce: str, content_sha256: str
) -> bytes:
    lines = (SCHEME, date, nonce, method.upper(), path, canonical_query(query), content_sha256)
    return "\n".join(lines).encode()


def signature(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def check_date(signed: SignedRequest, now: float, window: float = WINDOW_SECONDS) -> None:
    skew = signed.timestamp - now
    if abs(skew) > window:
        direction = "ahead of" if skew > 0 else "behind"
        raise Unauthenticated(
            f"the request's date is {abs(skew):.0f} s {direction} hyperd's clock"
            f" (signed requests are accepted within {window:.0f} s)",
            hint="set the client's clock right (NTP) and sign again",
        )


def verify(
    signed: SignedRequest, key: bytes, method: str, path: str, query: Iterable[tuple[str, str]]
) -> None:
    message = string_to_sign(
        method, path, query, date=signed.date, nonce=signed.nonce, content_sha256=signed.content_sha256
    )
    expected = signature(key, message)
    if not hmac.compare_digest(expected, signed.signature):
        raise Unauthenticated(
            "the request's signature does not match",
            hint="sign METHOD, path, query, nonce, date and body hash with the key's secret",
        )


def sign_headers(
    key_id: str,
    signing_key: bytes,
    *,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that sign a request (for clients: tests, bench, `hyper.tenants.client`)."""
    moment = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC)
    date = moment.strftime("%Y%m%dT%H%M%SZ")
    nonce = nonce or secrets.token_urlsafe(18)
    content = hashlib.sha256(body).hexdigest()
    mac = signature(
        signing_key, string_to_sign(method, path, query, date=date, nonce=nonce, content_sha256=content)
    )
    return {
        "Authorization": f"{SCHEME} Credential={key_id}, Signature={mac}",
        DATE_HEADER: date,
        NONCE_HEADER: nonce,
        CONTENT_HEADER: content,
    }


class ReplayCache:
    """The signatures seen within the window: each is accepted once."""

    def __init__(self, window: float = WINDOW_SECONDS, size: int = REPLAY_CACHE_SIZE) -> None:
        self.window = window
        self.size = size
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []  # a heap: when each may be forgotten

    def admit(self, signed: SignedRequest, now: float) -> None:
        self._forget(now)
        if signed.signature in self._seen:
            raise Unauthenticated(
                "this signed request was already used (a replay)", hint="sign each request anew"
            )
        if len(self._seen) >= self.size:
            raise ResourceExhausted(
                "too many signed requests within the replay window", hint="retry in a few seconds"
            )
        # Remembered until its date can no longer pass the window check.
        self._seen.add(signed.signature)
        heapq.heappush(self._expiry, (max(signed.timestamp + self.window, now) + 1, signed.signature))

    def _forget(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, sig = heapq.heappop(self._expiry)
            self._seen.discard(sig)
