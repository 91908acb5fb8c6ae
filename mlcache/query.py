"""MongoDB-style queries on entity documents: validation at call time, matching, sorting.

Matching is mongoquery's, with its gaps covered the way MongoDB behaves: range operators and
`$regex` match when any element of an array does, `$ne`/`$nin`/`$not` on arrays mean "no element",
`null` matches a missing field, booleans never equal numbers. Sorting (which mongoquery lacks)
follows MongoDB's type order, missing first when ascending, with the entity id breaking ties.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from mongoquery import Query, QueryError

from .errors import MlcacheError

SortSpec = Sequence[tuple[str, int]]

_FIELD_OPERATORS = {
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$not",
    "$exists",
    "$regex",
    "$options",
    "$all",
    "$elemMatch",
    "$size",
    "$type",
    "$mod",
}
_LOGICAL_OPERATORS = {"$and", "$or", "$nor"}


class InvalidQuery(MlcacheError, ValueError):
    """A query with an unknown operator or a malformed shape."""


class _Missing:
    """Stands for a field that is not there (mongoquery's own marker is private)."""


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _is_missing(value: Any) -> bool:
    return type(value).__name__ == "_Undefined" or isinstance(value, _Missing)


def _type_class(value: Any) -> int:
    """MongoDB's comparison/sort order of types: null < numbers < strings < objects < arrays <
    booleans < dates."""
    if value is None or _is_missing(value):
        return 1
    if isinstance(value, bool):
        return 8
    if isinstance(value, int | float):
        return 2
    if isinstance(value, str):
        return 3
    if isinstance(value, Mapping):
        return 4
    if _is_list(value):
        return 5
    if isinstance(value, datetime):
        return 9
    return 10


def _equal(a: Any, b: Any) -> bool:
    if _type_class(a) != _type_class(b):
        return False
    if a is None or _is_missing(a):
        return True
    return bool(a == b)


def _compare(op: Callable[[Any, Any], bool], entry: Any, condition: Any) -> bool:
    if _is_list(entry):
        return any(_compare(op, item, condition) for item in entry)
    if _type_class(entry) != _type_class(condition) or _type_class(entry) in (1, 4, 5):
        return False
    try:
        return bool(op(entry, condition))
    except TypeError:
        return False


class MongoQuery(Query):
    """mongoquery with MongoDB's semantics where they differ (see the module docstring)."""

    def _match(self, condition: Any, entry: Any) -> bool:
        if isinstance(condition, Mapping):
            return super()._match(condition, entry)
        if _equal(condition, entry):
            return True
        return _is_list(entry) and any(_equal(condition, item) for item in entry)

    @staticmethod
    def _eq(condition: Any, entry: Any) -> bool:
        return _equal(condition, entry) or (_is_list(entry) and any(_equal(condition, i) for i in entry))

    @staticmethod
    def _gt(condition: Any, entry: Any) -> bool:
        return _compare(lambda a, b: a > b, entry, condition)

    @staticmethod
    def _gte(condition: Any, entry: Any) -> bool:
        return _compare(lambda a, b: a >= b, entry, condition)

    @staticmethod
    def _lt(condition: Any, entry: Any) -> bool:
        return _compare(lambda a, b: a < b, entry, condition)

    @staticmethod
    def _lte(condition: Any, entry: Any) -> bool:
        return _compare(lambda a, b: a <= b, entry, condition)

    def _ne(self, condition: Any, entry: Any) -> bool:
        return not self._eq(condition, entry)

    def _in(self, condition: Any, entry: Any) -> bool:
        if not _is_list(condition):
            raise InvalidQuery(f"$in/$nin need a list, got {condition!r}")
        return any(self._eq(item, entry) for item in condition)

    def _nin(self, condition: Any, entry: Any) -> bool:
        return not self._in(condition, entry)

    def _regex(self, condition: Any, entry: Any) -> bool:
        if _is_list(entry):
            return any(self._regex(condition, item) for item in entry)
        return isinstance(entry, str) and bool(super()._regex(condition, entry))


def _check(query: Any, where: str) -> None:
    if not isinstance(query, Mapping):
        raise InvalidQuery(f"{where} must be an object, got {query!r}")
    for key, value in query.items():
        if not isinstance(key, str):
            raise InvalidQuery(f"field names must be strings, got {key!r} in {where}")
        if key in _LOGICAL_OPERATORS:
            if not _is_list(value) or not value:
                raise InvalidQuery(f"{key} needs a non-empty list of queries, got {value!r}")
            for i, sub in enumerate(value):
                _check(sub, f"{key}[{i}]")
        elif key.startswith("$"):
            raise InvalidQuery(f"unknown or misplaced operator {key!r} in {where}")
        elif isinstance(value, Mapping) and any(str(k).startswith("$") for k in value):
            _check_operators(value, key)


def _check_operators(spec: Mapping[str, Any], field: str) -> None:
    for op, arg in spec.items():
        if op not in _FIELD_OPERATORS:
            raise InvalidQuery(f"unknown operator {op!r} on field {field!r}")
        if op in ("$in", "$nin", "$all") and not _is_list(arg):
            raise InvalidQuery(f"{op} on {field!r} needs a list, got {arg!r}")
        if op == "$not":
            if isinstance(arg, Mapping):
                _check_operators(arg, field)
            elif not isinstance(arg, re.Pattern):
                raise InvalidQuery(f"$not on {field!r} needs an operator object, got {arg!r}")
        if op == "$elemMatch" and isinstance(arg, Mapping):
            if any(str(k).startswith("$") for k in arg):
                _check_operators(arg, field)
            else:
                _check(arg, f"$elemMatch of {field!r}")
        if op == "$exists" and not isinstance(arg, bool):
            raise InvalidQuery(f"$exists on {field!r} needs true or false, got {arg!r}")


def _normalize(value: Any) -> Any:
    """Values as documents hold them: enums as their value, naive datetimes as UTC."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    if isinstance(value, Mapping):
        return {k: _normalize(v) for k, v in value.items()}
    if _is_list(value):
        return [_normalize(v) for v in value]
    return value


def compile_query(query: Mapping[str, Any] | None) -> MongoQuery:
    """Validate and normalize a query now (errors at call time, not when iterating)."""
    if query is None:
        query = {}
    _check(query, "the query")
    query = dict(query)
    return MongoQuery(_normalize(query))


def matches(query: Mapping[str, Any] | MongoQuery | None, doc: Mapping[str, Any]) -> bool:
    """Whether `doc` matches the MongoDB `query`."""
    compiled = query if isinstance(query, MongoQuery) else compile_query(query)
    try:
        return bool(compiled.match(doc))
    except QueryError as exc:
        raise InvalidQuery(f"invalid query: {exc}") from exc


def check_sort(sort: Iterable[tuple[str, int]] | None) -> list[tuple[str, int]]:
    """Validate `[(field, 1 | -1), ...]`."""
    checked = []
    for item in sort or ():
        if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str) and item[1] in (1, -1)):
            raise InvalidQuery(f"sort items must be (field, 1) or (field, -1), got {item!r}")
        checked.append((item[0], int(item[1])))
    return checked


def extract(doc: Any, path: str) -> Any:
    """The value at a dotted path, `_Missing()` when absent."""
    node = doc
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return _Missing()
    return node


class _SortKey:
    """Orders one value the MongoDB way; arrays sort by their smallest (asc) or largest (desc)."""

    __slots__ = ("cls", "value")

    def __init__(self, value: Any, direction: int) -> None:
        if _is_list(value) and value:
            keys = [_SortKey(v, direction) for v in value]
            chosen = min(keys) if direction == 1 else max(keys)
            self.cls, self.value = chosen.cls, chosen.value
        else:
            self.cls = _type_class(value)
            self.value = None if self.cls == 1 else value

    def __lt__(self, other: _SortKey) -> bool:
        if self.cls != other.cls:
            return self.cls < other.cls
        if self.cls == 1:
            return False
        try:
            return bool(self.value < other.value)
        except TypeError:
            return repr(self.value) < repr(other.value)


def sort_docs(
    items: list[Any], sort: SortSpec, doc_of: Callable[[Any], Mapping[str, Any]], id_of: Callable[[Any], Any]
) -> list[Any]:
    """Items ordered by `sort`, ties broken by id ascending (stable, deterministic)."""
    ordered = sorted(items, key=lambda item: str(id_of(item)))
    for field, direction in reversed(list(sort)):
        ordered.sort(
            key=lambda item, f=field, d=direction: _SortKey(extract(doc_of(item), f), d), reverse=direction == -1
        )
    return ordered
