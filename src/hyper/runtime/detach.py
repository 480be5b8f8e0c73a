"""Docker's detach keys: the sequence (ctrl-p,ctrl-q by default) that leaves an
attached session without stopping the container.

Pure. The server ends the stream when it reads the sequence; a client scans
what it sends with the same rules to know that the end was a detach, not the
container's exit.
"""

from __future__ import annotations

from hyper.errors import InvalidArgument

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_CONTROL_PUNCTUATION = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(text: str | None) -> bytes:
    """`ctrl-p,ctrl-q` (Docker's default when empty), `a,ctrl-[`, … as the bytes that detach."""
    spec = text or DEFAULT_DETACH_KEYS
    keys = bytearray()
    for word in spec.split(","):
        part = word.strip()
        if len(part) == 1:
            keys.append(ord(part))
        elif part.lower().startswith("ctrl-") and len(part) == 6:
            char = part[5].lower()
            if "a" <= char <= "z":
                keys.append(ord(char) - ord("a") + 1)
            elif char in _CONTROL_PUNCTUATION:
                keys.append(_CONTROL_PUNCTUATION[char])
            else:
                raise InvalidArgument(f"invalid detach key {part!r}", hint="use e.g. ctrl-p,ctrl-q")
        else:
            raise InvalidArgument(
                f"invalid detach keys {spec!r}", hint="use a comma-separated list such as ctrl-p,ctrl-q"
            )
    return bytes(keys)


class DetachScanner:
    """Finds the detach sequence in typed input; what precedes it still counts.

    `feed` returns the bytes to pass on and whether the sequence completed. A
    partial match is held back until the next byte shows whether it was the
    sequence or ordinary input.
    """

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.matched = 0

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        if not self.keys:
            return data, False
        out = bytearray()
        for byte in data:
            if byte == self.keys[self.matched]:
                self.matched += 1
                if self.matched == len(self.keys):
                    self.matched = 0
                    return bytes(out), True
                continue
            if self.matched:
                out += self.keys[: self.matched]  # a partial match was ordinary input
                self.matched = 0
                if byte == self.keys[0]:
                    self.matched = 1
                    continue
            out.append(byte)
        return bytes(out), False
