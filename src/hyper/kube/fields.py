"""Reading a manifest's mappings field by field, and Kubernetes quantities; pure.

Each mapping is read through `Fields`, which takes the fields it knows one by
one, so that whatever is left can be refused by its path (`done`): that is
how a manifest's unknown fields are never silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fractions import Fraction

from hyper.errors import InvalidArgument

_QUANTITY = re.compile(
    r"^(?P<number>\d+(?:\.\d*)?|\.\d+)"
    r"(?:(?P<exponent>[eE][+-]?\d+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E))?$"
)
_SUFFIXES = {
    None: Fraction(1),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(1 << 10),
    "Mi": Fraction(1 << 20),
    "Gi": Fraction(1 << 30),
    "Ti": Fraction(1 << 40),
    "Pi": Fraction(1 << 50),
    "Ei": Fraction(1 << 60),
}


def shown(key: object) -> str:
    """A field's name as an error shows it: quoted when it is not a plain name."""
    text = str(key)
    return text if re.fullmatch(r"[\w./-]+", text) else repr(text)


def fail(path: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"{path}: {what}", hint="see docs/kube.md for what hyper kube play takes")


class Fields:
    """One mapping of the manifest at `path`: its fields taken one by one, so
    that whatever is left over can be refused by name."""

    def __init__(self, value: object, path: str) -> None:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise (
                fail(path, "must be a mapping") if path else InvalidArgument("the document must be a mapping")
            )
        self.values: dict[object, object] = dict(value)
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def take(self, key: str) -> object:
        return self.values.pop(key, None)

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self.take(key)
        if value is None or value == "":
            if required:
                raise fail(self.at(key), "required")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise fail(self.at(key), "must be a string")
        return str(value)

    def flag(self, key: str) -> bool:
        value = self.take(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise fail(self.at(key), "must be true or false")
        return value

    def integer(self, key: str) -> int | None:
        value = self.take(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(self.at(key), "must be an integer")
        return value

    def items(self, key: str) -> list[tuple[str, object]]:
        """A list field: (path of each item, item)."""
        value = self.take(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise fail(self.at(key), "must be a list")
        return [(f"{self.at(key)}[{i}]", item) for i, item in enumerate(value)]

    def strings(self, key: str) -> tuple[str, ...]:
        result = []
        for path, item in self.items(key):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise fail(path, "must be a string")
            result.append(str(item))
        return tuple(result)

    def refuse(self, key: str, why: str) -> None:
        if key in self.values:
            raise fail(self.at(key), why)

    def refuse_true(self, key: str, why: str) -> None:
        if self.flag(key):
            raise fail(self.at(key), why)

    def done(self, ignored: Iterable[str] = ()) -> None:
        """Refuse the fields nobody took (those `ignored` excepted), the first by name."""
        for key in ignored:
            self.values.pop(key, None)
        for name, value in self.values.items():
            if value in (None, [], {}):  # an empty field asks for nothing
                continue
            raise fail(self.at(shown(name)), "not supported")


def parse_quantity(text: object, path: str) -> Fraction:
    """A Kubernetes quantity (`500m`, `1`, `1.5`, `128Mi`, `1G`, `1e3`), exactly."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise fail(path, f"{text!r} is not a quantity")
    match = _QUANTITY.match(str(text).strip())
    if match is None:
        raise fail(path, f"{text!r} is not a quantity (such as 500m, 2, 128Mi or 1G)")
    value = Fraction(match.group("number"))
    if match.group("exponent"):
        value *= Fraction(10) ** int(match.group("exponent")[1:])
    return value * _SUFFIXES[match.group("suffix")]
