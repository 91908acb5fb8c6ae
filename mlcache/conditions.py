"""The conditions of a MongoDB query that every match must meet, for backends and the index to
push down (as superset filters: the full query always runs on what they return)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


def required_conditions(query: Mapping[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(field, operator, argument) for every condition all matches must meet."""
    for key, value in query.items():
        if key == "$and":
            for sub in value:
                yield from required_conditions(sub)
        elif key.startswith("$"):
            continue
        elif isinstance(value, Mapping) and any(str(k).startswith("$") for k in value):
            for op, arg in value.items():
                yield key, op, arg
        else:
            yield key, "$eq", value
