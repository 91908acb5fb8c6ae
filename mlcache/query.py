"""MongoDB-style filtering of entity documents (mongoquery), with errors raised at call time."""

from __future__ import annotations

from typing import Any

from mongoquery import Query, QueryError

from .errors import MlcacheError


class InvalidQuery(MlcacheError, ValueError):
    """A query with an unknown operator or a malformed shape."""


def matches(query: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Whether `doc` matches the MongoDB `query`."""
    if not query:
        return True
    try:
        return bool(Query(query).match(doc))
    except QueryError as exc:
        raise InvalidQuery(f"invalid query {query!r}: {exc}") from exc
