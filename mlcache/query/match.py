"""Matching documents with a compiled query: dotted paths reached through objects and arrays, and
every field operator evaluated the way MongoDB does."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any

from mongoquery import Query

from ..errors import InvalidQuery, MlcacheError
from .choices import Choices
from .regex import Regex
from .validate import FIELD_OPERATORS, LOGICAL_OPERATORS, compile_definition
from .values import (
    ARRAY,
    MISSING,
    NULL,
    NUMBER,
    OBJECT,
    OTHER,
    SCALAR_TYPES,
    TYPE_TESTS,
    equal,
    is_finite_number,
    is_list,
    is_missing,
    is_nan,
    type_class,
)

_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


class _Candidates(list):
    """The values a dotted path reaches in a document: one, several through arrays of objects, or MISSING."""

    __slots__ = ()


@functools.lru_cache(maxsize=1024)
def _path(key: str) -> tuple[str, ...]:
    """A dotted field name's parts (queries match one name against many documents)."""
    return tuple(key.split("."))


def _reach(doc: Any, parts: tuple[str, ...]) -> _Candidates:
    """The values at a dotted path: objects are entered, arrays of objects are traversed (a digit
    part also picks the element at that index); an object without the key reaches MISSING."""
    node = doc
    for depth, part in enumerate(parts):
        if type(node) is not dict:
            return _reach_through(node, parts, depth)
        if part not in node:
            return _Candidates((MISSING,))
        node = node[part]
    return _Candidates((node,))


def _reach_through(doc: Any, parts: tuple[str, ...], start: int) -> _Candidates:
    """`_reach` from `parts[start]` on, where the walk meets an array or a mapping other than a dict."""
    found = _Candidates()
    pending = [(doc, start)]
    while pending:
        node, i = pending.pop()
        if i == len(parts):
            found.append(node)
            continue
        part = parts[i]
        if isinstance(node, Mapping):
            pending.append((node[part], i + 1) if part in node else (MISSING, len(parts)))
        elif is_list(node):
            if part.isascii() and part.isdigit() and int(part) < len(node):
                pending.append((node[int(part)], i + 1))
            pending.extend((item, i) for item in node if isinstance(item, Mapping))
        else:
            found.append(MISSING)
    if not found:
        found.append(MISSING)
    return found


def _is_operators(condition: Any) -> bool:
    """Whether a field's condition is an operator document (`{"$gt": 1}`) rather than a value to equal."""
    if type(condition) in SCALAR_TYPES:
        return False
    return isinstance(condition, Mapping) and bool(condition) and next(iter(condition)).startswith("$")


def _regex_meets(pattern: Regex, value: Any) -> bool:
    if isinstance(value, str):
        return pattern.search(value)
    return is_list(value) and any(isinstance(item, str) and pattern.search(item) for item in value)


def _equal_meets(condition: Any, value: Any) -> bool:
    """Whether `value`, or one element of it, equals `condition` (a regex matches strings)."""
    if isinstance(condition, Regex):
        return _regex_meets(condition, value)
    return equal(condition, value) or (is_list(value) and any(equal(condition, item) for item in value))


def _compare_one(op: str, value: Any, condition: Any) -> bool:
    """`value <op> condition` within one type class; NaN and null compare equal only to themselves."""
    kind = type_class(value)
    if kind != type_class(condition):
        return False
    if kind == NULL:
        return op in ("$gte", "$lte")
    if kind == NUMBER and (is_nan(value) or is_nan(condition)):
        return is_nan(value) and is_nan(condition) and op in ("$gte", "$lte")
    if kind in (OBJECT, ARRAY, OTHER):
        return False
    try:
        return bool(_COMPARISONS[op](value, condition))
    except TypeError:
        return False


def _compare_meets(op: str, value: Any, condition: Any) -> bool:
    if is_list(value):
        return any(_compare_one(op, item, condition) for item in value)
    return _compare_one(op, value, condition)


def _compared(op: str, condition: Any, values: _Candidates) -> bool:
    """Whether one of the values a path reaches meets `<op> condition` (most paths reach one)."""
    if len(values) == 1:
        return _compare_meets(op, values[0], condition)
    return any(_compare_meets(op, value, condition) for value in values)


def _mod_one(divisor: int, remainder: int, value: Any) -> bool:
    """MongoDB's `$mod`: the value truncated to an integer, the remainder with the dividend's sign."""
    if not is_finite_number(value):
        return False
    dividend = int(value)
    rest = abs(dividend) % abs(divisor)
    return (-rest if dividend < 0 else rest) == remainder


def _has_type(names: tuple[str, ...], value: Any) -> bool:
    if "array" in names and is_list(value):
        return True
    items = value if is_list(value) else (value,)
    return any(TYPE_TESTS[name](item) for name in names if name in TYPE_TESTS for item in items)


class MongoQuery(Query):
    """A compiled query (build it with `compile_query`): mongoquery's logical operators, with every
    field operator following MongoDB (see the `mlcache.query` docstring)."""

    def __init__(self, definition: Mapping[str, Any] | None = None, also: Mapping[str, Any] | None = None) -> None:
        super().__init__(compile_definition(definition, also))
        self._steps = tuple(self._step(key, sub) for key, sub in self._definition.items())

    def _step(self, key: str, sub: Any) -> tuple[tuple[str, ...] | None, Callable[[Any], bool]]:
        """One top-level condition made ready once, for the many documents a find matches: the
        path it reaches (None for a logical operator, which takes the whole document) and its test,
        the same evaluation `_match` would make."""
        if key in LOGICAL_OPERATORS:
            return None, functools.partial(getattr(self, "_" + key[1:]), sub)
        if _is_operators(sub):
            tests = tuple(functools.partial(getattr(self, "_" + op[1:]), arg) for op, arg in sub.items())
            if len(tests) == 1:
                return _path(key), tests[0]
            return _path(key), lambda values: all(test(values) for test in tests)
        return _path(key), functools.partial(self._eq, sub)

    @property
    def definition(self) -> dict[str, Any]:
        """The checked, normalized query (regexes compiled, `$in` lists as choice sets), as a backend's
        push-down reads it."""
        return self._definition  # type: ignore[no-any-return]

    @property
    def roots(self) -> frozenset[str]:
        """The top-level fields the query reads: no other field of a document can change whether it matches."""
        found: set[str] = set()
        pending: list[Any] = [self._definition]
        while pending:
            query = pending.pop()
            for key, sub in query.items():
                if key in LOGICAL_OPERATORS:
                    pending.extend(sub)
                else:
                    found.add(key.partition(".")[0])
        return frozenset(found)

    def match(self, entry: Any) -> bool:
        """Whether the document matches; never raises anything but InvalidQuery."""
        try:
            for parts, test in self._steps:  # noqa: SIM110 (a loop: no generator made per document)
                if not test(entry if parts is None else _reach(entry, parts)):
                    return False
            return True
        except MlcacheError:
            raise
        except Exception as exc:
            raise InvalidQuery(
                f"the query could not be evaluated on a document ({type(exc).__name__}: {exc}); simplify the "
                "query, or report it as an mlcache bug"
            ) from exc

    def _match(self, condition: Any, entry: Any) -> bool:
        if type(entry) is _Candidates:
            if _is_operators(condition):
                return all(getattr(self, "_" + op[1:])(arg, entry) for op, arg in condition.items())
            return self._eq(condition, entry)
        for key, sub in condition.items():
            if key in LOGICAL_OPERATORS:
                if not getattr(self, "_" + key[1:])(sub, entry):
                    return False
            elif not self._match(sub, _reach(entry, _path(key))):
                return False
        return True

    def _eq(self, condition: Any, values: _Candidates) -> bool:
        if len(values) == 1:  # most paths reach one value
            return _equal_meets(condition, values[0])
        return any(_equal_meets(condition, value) for value in values)

    def _ne(self, condition: Any, values: _Candidates) -> bool:
        return not self._eq(condition, values)

    def _in(self, condition: Choices, values: _Candidates) -> bool:
        return any(condition.meets(value) for value in values)

    def _nin(self, condition: Choices, values: _Candidates) -> bool:
        return not self._in(condition, values)

    def _gt(self, condition: Any, values: _Candidates) -> bool:
        return _compared("$gt", condition, values)

    def _gte(self, condition: Any, values: _Candidates) -> bool:
        return _compared("$gte", condition, values)

    def _lt(self, condition: Any, values: _Candidates) -> bool:
        return _compared("$lt", condition, values)

    def _lte(self, condition: Any, values: _Candidates) -> bool:
        return _compared("$lte", condition, values)

    def _regex(self, condition: Regex, values: _Candidates) -> bool:
        return any(_regex_meets(condition, value) for value in values)

    def _not(self, condition: Mapping[str, Any], values: _Candidates) -> bool:
        return not self._match(condition, values)

    def _exists(self, condition: bool, values: _Candidates) -> bool:
        return any(not is_missing(value) for value in values) is condition

    def _all(self, condition: list[Any], values: _Candidates) -> bool:
        return bool(condition) and all(
            self._match(item, values) if isinstance(item, Mapping) and "$elemMatch" in item else self._eq(item, values)
            for item in condition
        )

    def _elemMatch(self, condition: Mapping[str, Any], values: _Candidates) -> bool:
        operators = any(key in FIELD_OPERATORS for key in condition)

        def meets(element: Any) -> bool:
            if operators:
                return self._match(condition, _Candidates([element]))
            return isinstance(element, Mapping) and self._match(condition, element)

        return any(is_list(value) and any(meets(element) for element in value) for value in values)

    def _size(self, condition: int, values: _Candidates) -> bool:
        return any(is_list(value) and len(value) == condition for value in values)

    def _type(self, condition: tuple[str, ...], values: _Candidates) -> bool:
        return any(_has_type(condition, value) for value in values)

    def _mod(self, condition: list[int], values: _Candidates) -> bool:
        divisor, remainder = condition
        items = (item for value in values for item in (value if is_list(value) else (value,)))
        return any(_mod_one(divisor, remainder, item) for item in items)


def compile_query(query: Mapping[str, Any] | None, also: Mapping[str, Any] | None = None) -> MongoQuery:
    """Validate and normalize a query now (errors at call time, not when iterating), ANDed with
    `also` when given (a condition the caller adds, checked like the query)."""
    return MongoQuery(query, also)


def matches(query: Mapping[str, Any] | MongoQuery | None, doc: Mapping[str, Any]) -> bool:
    """Whether `doc` matches the MongoDB `query`."""
    compiled = query if isinstance(query, MongoQuery) else compile_query(query)
    return compiled.match(doc)
