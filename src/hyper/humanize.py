"""Docker's human-readable durations and sizes, read and written the way the
docker CLI does (go-units and Go's time.Duration), for every front end."""

from __future__ import annotations

import math
import re

from hyper.errors import InvalidArgument

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_duration(text: str, what: str) -> float:
    """Go's duration syntax (`30s`, `1m30s`, `500ms`, `0`), as the docker CLI's flags take it, in seconds."""
    stripped = text.strip()
    if stripped == "0":
        return 0.0
    position, total = 0, 0.0
    while position < len(stripped):
        match = _DURATION_PART.match(stripped, position)
        if match is None:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not stripped or position != len(stripped) or not math.isfinite(total):
        raise InvalidArgument(f"invalid {what} {text!r}", hint="use a duration such as 30s, 1m30s or 500ms")
    return total


def parse_size(text: str, what: str) -> int:
    """Docker's sizes in bytes (`64m`, `1g`, `1024`: binary units, go-units' RAMInBytes)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise InvalidArgument(f"invalid {what} {text!r}", hint="use a number with k, m or g, e.g. 64m")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def human_duration(seconds: float) -> str:
    """Docker's `units.HumanDuration`: `Less than a second`, `About a minute`, `3 hours`."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = whole // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"
