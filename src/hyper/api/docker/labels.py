"""Docker's `label` filter, shared by the container, image and event listings. Pure."""

from __future__ import annotations

from collections.abc import Mapping


def label_matches(labels: Mapping[str, str], wanted: str) -> bool:
    """`KEY` matches a label that is set; `KEY=VALUE` one with that value."""
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)
