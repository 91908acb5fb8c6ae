"""Validation and normalization of a query, so that a bad query fails when a finder is called.

Every operator and argument is checked, literals are brought to the form documents hold, regexes
are compiled and `$in` lists become choice sets; nesting is bounded by `MAX_QUERY_DEPTH`.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from ..errors import InvalidQuery
from .choices import Choices
from .regex import Regex, compile_regex
from .values import TYPE_NAMES, TYPE_NUMBERS, is_finite_number, is_int, is_list, show

MAX_QUERY_DEPTH = 64
"""Most levels a query may nest: objects, lists and each part of a dotted field name count one."""

FIELD_OPERATORS = {
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
LOGICAL_OPERATORS = {"$and", "$or", "$nor"}


def _check_depth(query: Any) -> None:
    """Refuse a query nested deeper than MAX_QUERY_DEPTH, walking it without recursion (so before
    anything recursive runs, and even when the query contains itself)."""
    pending: list[tuple[Any, int]] = [(query, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_QUERY_DEPTH:
            raise InvalidQuery(
                f"the query nests deeper than {MAX_QUERY_DEPTH} levels (objects, lists and each part of a dotted "
                "field name count one); flatten it, e.g. merge nested $and/$or into one list or use $in"
            )
        if isinstance(node, Mapping):
            for key, value in node.items():
                pending.append((value, depth + 1 + (key.count(".") if isinstance(key, str) else 0)))
        elif is_list(node):
            pending.extend((item, depth + 1) for item in node)


def _literal(value: Any, where: str) -> Any:
    """A value to compare documents with, as documents hold it: enums as their value, naive
    datetimes as UTC, tuples as lists; anything JSON cannot hold is refused."""
    if isinstance(value, Enum):
        value = value.value
    if value is None or isinstance(value, bool | str | int | float):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and ((number := float(value)) == value or number != number):
        return number
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str) or key.startswith("$"):
                raise InvalidQuery(
                    f"{where} holds an object with the key {key!r}, which no document has (keys are strings "
                    "and never start with $); put operators directly under the field"
                )
        return {key: _literal(item, where) for key, item in value.items()}
    if is_list(value):
        return [_literal(item, where) for item in value]
    if isinstance(value, re.Pattern | Regex):
        raise InvalidQuery(f"{where} cannot hold a regular expression; use {{'$regex': pattern}} or $in")
    raise InvalidQuery(
        f"{where} cannot compare with {type(value).__name__} {show(value)}; use null, booleans, numbers, "
        "strings, datetimes, or lists and objects of those"
    )


def _compile_object(query: Any, where: str) -> dict[str, Any]:
    """A query on a document: fields with conditions, and $and/$or/$nor of such queries."""
    if not isinstance(query, Mapping):
        raise InvalidQuery(f"{where} must be an object, got {show(query)}")
    out: dict[str, Any] = {}
    for key, value in query.items():
        if not isinstance(key, str):
            raise InvalidQuery(f"field names must be strings, got {key!r} in {where}")
        if key in LOGICAL_OPERATORS:
            if not is_list(value) or not value:
                raise InvalidQuery(f"{key} needs a non-empty list of queries, got {show(value)}")
            out[key] = [_compile_object(sub, f"{key}[{i}]") for i, sub in enumerate(value)]
        elif key.startswith("$"):
            raise InvalidQuery(f"unknown or misplaced operator {key!r} in {where}")
        elif isinstance(value, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in value):
            out[key] = _compile_operators(value, key)
        elif isinstance(value, re.Pattern | Regex):
            out[key] = {"$regex": compile_regex(value, "", key)}
        else:
            out[key] = _literal(value, f"the value of {key!r}")
    return out


def _list_items(op: str, arg: Any, field: str) -> list[Any]:
    """The items of `$in`/`$nin`/`$all`: values, or regular expressions matched against strings."""
    if not is_list(arg):
        raise InvalidQuery(f"{op} on {field!r} needs a list, got {show(arg)}")
    items: list[Any] = []
    for item in arg:
        if isinstance(item, re.Pattern | Regex):
            items.append(compile_regex(item, "", field))
        elif op == "$all" and isinstance(item, Mapping) and list(item) == ["$elemMatch"]:
            items.append(_compile_operators(item, field))
        elif isinstance(item, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in item):
            raise InvalidQuery(
                f"{op} on {field!r} cannot hold the operator object {show(item)}; use $or for alternatives "
                "of conditions (or, in $all, only {'$elemMatch': ...})"
            )
        else:
            items.append(_literal(item, f"{op} on {field!r}"))
    return items if op == "$all" else Choices(items)


def _whole_number(value: Any) -> int | None:
    """An integer given as int or as a float with no fraction (as MongoDB accepts them), else None."""
    if is_int(value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _type_names(arg: Any, field: str) -> tuple[str, ...]:
    """`$type`'s argument (a type name or number, or a list of them) as type names."""
    names = []
    for item in arg if is_list(arg) and arg else [arg]:
        number = None if isinstance(item, str) else _whole_number(item)
        name = TYPE_NUMBERS.get(number) if number is not None else item
        if not isinstance(name, str) or name not in TYPE_NAMES:
            raise InvalidQuery(
                f"$type on {field!r} needs MongoDB type names or numbers (e.g. 'string', 'number', 'double', "
                f"'int', 'long', 'bool', 'date', 'null', 'object', 'array', or 2 for string), got {show(item)}"
            )
        names.append(name)
    return tuple(names)


def _mod_arguments(arg: Any, field: str) -> list[int]:
    """`[divisor, remainder]`, truncated to integers as MongoDB does; the divisor must not be 0."""
    if not is_list(arg) or len(arg) != 2 or not all(is_finite_number(v) for v in arg) or int(arg[0]) == 0:
        raise InvalidQuery(
            f"$mod on {field!r} needs [divisor, remainder]: two finite numbers, the divisor not 0 (nor between "
            f"-1 and 1, as it is truncated to an integer), got {show(arg)}"
        )
    return [int(arg[0]), int(arg[1])]


def _compile_operators(spec: Mapping[str, Any], field: str) -> dict[str, Any]:
    """The operators on one field, each argument checked and normalized."""
    out: dict[str, Any] = {}
    for op, arg in spec.items():
        if op not in FIELD_OPERATORS:
            raise InvalidQuery(f"unknown operator {op!r} on field {field!r}")
        if op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte"):
            out[op] = _literal(arg, f"{op} on {field!r}")
        elif op in ("$in", "$nin", "$all"):
            out[op] = _list_items(op, arg, field)
        elif op == "$regex":
            out[op] = compile_regex(arg, spec.get("$options", ""), field)
        elif op == "$options":
            if "$regex" not in spec:
                raise InvalidQuery(
                    f"$options on {field!r} needs a $regex beside it, as in {{'$regex': 'x', '$options': 'i'}}"
                )
        elif op == "$not":
            if isinstance(arg, re.Pattern | Regex):
                out[op] = {"$regex": compile_regex(arg, "", field)}
            elif isinstance(arg, Mapping) and arg:
                out[op] = _compile_operators(arg, field)
            else:
                raise InvalidQuery(
                    f"$not on {field!r} needs an operator object or a regular expression, got {show(arg)}"
                )
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise InvalidQuery(f"$exists on {field!r} needs true or false, got {show(arg)}")
            out[op] = arg
        elif op == "$elemMatch":
            if not isinstance(arg, Mapping):
                raise InvalidQuery(f"$elemMatch on {field!r} needs an object (operators or a query), got {show(arg)}")
            if any(k in FIELD_OPERATORS for k in arg):
                out[op] = _compile_operators(arg, field)
            else:
                out[op] = _compile_object(arg, f"$elemMatch of {field!r}")
        elif op == "$size":
            size = _whole_number(arg)
            if size is None or size < 0:
                raise InvalidQuery(f"$size on {field!r} needs a non-negative integer, got {show(arg)}")
            out[op] = size
        elif op == "$type":
            out[op] = _type_names(arg, field)
        else:
            out[op] = _mod_arguments(arg, field)
    return out


def compile_definition(query: Mapping[str, Any] | None, also: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checked, normalized definition of `query` AND `also`, its depth checked first."""
    _check_depth(query)
    compiled = _compile_object({} if query is None else query, "the query")
    if also is None:
        return compiled
    _check_depth(also)
    return {"$and": [compiled, _compile_object(also, "the added condition")]}
