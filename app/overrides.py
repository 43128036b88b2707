"""`KEY=VALUE` settings from the command line (`renersans train --set`, `renersans bundle decoding --set`),
each value read as the type of the field it sets."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from app.errors import InputError

TRUE, FALSE = ("true", "1"), ("false", "0")


def field_types(cls: type) -> dict[str, type]:
    """The type of each field of the dataclass `cls`, as its default value's (every field has one)."""
    defaults = cls()
    return {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(cls)}


def parse_overrides(items: Iterable[str], fields: Mapping[str, type]) -> dict[str, Any]:
    """`KEY=VALUE` items as {KEY: value}, the value read as `fields[KEY]`: true/false (or 1/0) for a flag,
    a number, or the text as it is. InputError naming the item and what it takes where the `=` is missing,
    the key unknown or the value not of its type; a later item for the same key wins."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise InputError(f"setting {item!r}: write it as KEY=VALUE with KEY one of {sorted(fields)}")
        values[key] = _value(item, raw.strip(), fields[key])
    return values


def _value(item: str, raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.lower() not in (*TRUE, *FALSE):
            raise InputError(f"setting {item!r}: expected true or false")
        return raw.lower() in TRUE
    try:
        return kind(raw)
    except ValueError as exc:
        expected = {int: "a whole number", float: "a number"}.get(kind, kind.__name__)
        raise InputError(f"setting {item!r}: expected {expected}") from exc
