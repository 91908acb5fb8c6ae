"""MongoDB's view of document values: their type classes, `$type` names, equality and total order.

Matching and sorting share these rules, so a value equals, compares and sorts the same everywhere.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

NULL, NUMBER, STRING, OBJECT, ARRAY, BOOL, DATE, OTHER = 1, 2, 3, 4, 5, 8, 9, 10

_INT32 = 2**31
TYPE_NUMBERS = {
    -1: "minKey",
    1: "double",
    2: "string",
    3: "object",
    4: "array",
    5: "binData",
    6: "undefined",
    7: "objectId",
    8: "bool",
    9: "date",
    10: "null",
    11: "regex",
    12: "dbPointer",
    13: "javascript",
    14: "symbol",
    15: "javascriptWithScope",
    16: "int",
    17: "timestamp",
    18: "long",
    19: "decimal",
    127: "maxKey",
}
TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "double": lambda v: isinstance(v, float),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, Mapping),
    "array": lambda v: is_list(v),
    "binData": lambda v: isinstance(v, bytes | bytearray),
    "bool": lambda v: isinstance(v, bool),
    "date": lambda v: isinstance(v, datetime),
    "null": lambda v: v is None,
    "int": lambda v: is_int(v) and -_INT32 <= v < _INT32,
    "long": lambda v: is_int(v) and not -_INT32 <= v < _INT32,
    "number": lambda v: is_number(v),
}
"""Types documents can hold; the other MongoDB type names are valid and match nothing."""
TYPE_NAMES = {*TYPE_NUMBERS.values(), "number"}


_shown = reprlib.Repr()
_shown.maxstring = _shown.maxother = 60


def show(value: Any) -> str:
    """A short repr for error messages (a 100,000-item list is not printed whole)."""
    return _shown.repr(value)


class _Missing:
    """Stands for a field that is not there."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


_EXACT_CLASSES: dict[type, int] = {
    type(None): NULL,
    _Missing: NULL,
    bool: BOOL,
    int: NUMBER,
    float: NUMBER,
    str: STRING,
    dict: OBJECT,
    list: ARRAY,
    tuple: ARRAY,
}
"""The type class of the built-in types documents are made of, found without an isinstance chain."""
SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
"""The built-in types of document values that hold no other values."""


def is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def is_missing(value: Any) -> bool:
    return isinstance(value, _Missing)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A number other than NaN and ±inf (ints, however large, are finite and never turned into floats)."""
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def is_nan(value: Any) -> bool:
    """NaN (only floats can be NaN; ints, however large, are never converted to float)."""
    return isinstance(value, float) and value != value


def type_class(value: Any) -> int:
    """MongoDB's comparison/sort order of types: null < numbers < strings < objects < arrays <
    booleans < dates."""
    exact = _EXACT_CLASSES.get(type(value))
    if exact is not None:
        return exact
    if value is None or is_missing(value):
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int | float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, Mapping):
        return OBJECT
    if is_list(value):
        return ARRAY
    if isinstance(value, datetime):
        return DATE
    return OTHER


def equal(a: Any, b: Any) -> bool:
    """MongoDB equality: same type class, numbers by exact value (NaN equals NaN), null equals
    missing, arrays element by element, objects key by key (recursion bounded by the query's depth)."""
    if type(a) is str and type(b) is str:
        return a == b
    kind = type_class(a)
    if kind != type_class(b):
        return False
    if kind == NULL:
        return True
    if kind == NUMBER:
        return bool(a == b) or (is_nan(a) and is_nan(b))
    if kind == OBJECT:
        return a.keys() == b.keys() and all(equal(value, b[key]) for key, value in a.items())
    if kind == ARRAY:
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:
        return False


_LENGTHS = object()


def _order_scalars(kind: int, a: Any, b: Any) -> int:
    """-1, 0 or 1 for two non-container values of the same type class."""
    if kind == NULL:
        return 0
    if kind == NUMBER and (is_nan(a) or is_nan(b)):
        return (not is_nan(a)) - (not is_nan(b))
    if kind == DATE:
        a = a if a.tzinfo else a.replace(tzinfo=timezone.utc)
        b = b if b.tzinfo else b.replace(tzinfo=timezone.utc)
    if kind == OTHER:
        a, b = (type(a).__name__, repr(a)), (type(b).__name__, repr(b))
    return int(a > b) - int(a < b)


def order(a: Any, b: Any) -> int:
    """A total order of values, MongoDB's: by type class, then by value; NaN before every other
    number; arrays and objects element by element, shorter first. Iterative, so that deeply nested
    values from documents cannot exhaust the stack."""
    pending: list[tuple[Any, Any]] = [(a, b)]
    while pending:
        x, y = pending.pop()
        if x is _LENGTHS:
            if y[0] != y[1]:
                return -1 if y[0] < y[1] else 1
            continue
        kind = type_class(x)
        other = type_class(y)
        if kind != other:
            return -1 if kind < other else 1
        if kind in (ARRAY, OBJECT):
            xs = list(x.items()) if kind == OBJECT else list(x)
            ys = list(y.items()) if kind == OBJECT else list(y)
            pending.append((_LENGTHS, (len(xs), len(ys))))
            pending.extend(reversed(list(zip(xs, ys, strict=False))))
            continue
        result = _order_scalars(kind, x, y)
        if result:
            return result
    return 0
