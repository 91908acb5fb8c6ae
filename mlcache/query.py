"""MongoDB-style queries on entity documents: validation at call time, matching, sorting.

`compile_query` checks every operator and argument and normalizes the query, so that a bad query
fails when a finder is called, not while its results are iterated. Matching follows MongoDB: a
dotted path reaches into objects and through arrays of objects, a condition on an array holds when
an element meets it, `$ne`/`$nin`/`$not` mean "no value meets the condition", `null` matches a
missing field, booleans never equal numbers, numbers compare by exact value across int and float,
and NaN equals NaN but compares with no other number. `$regex` runs on RE2, in time linear in the
text, so no pattern can hang a search. Queries nest at most `MAX_QUERY_DEPTH` levels, which keeps
every recursive step far from Python's recursion limit. Sorting (which mongoquery lacks) follows
MongoDB's type order, missing first when ascending, with the entity id breaking ties.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
import re
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import re2
from mongoquery import Query

from .errors import InvalidQuery, MlcacheError

SortSpec = Sequence[tuple[str, int]]

MAX_QUERY_DEPTH = 64
"""Most levels a query may nest: objects, lists and each part of a dotted field name count one."""

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
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}

_NULL, _NUMBER, _STRING, _OBJECT, _ARRAY, _BOOL, _DATE, _OTHER = 1, 2, 3, 4, 5, 8, 9, 10

_INT32 = 2**31
_TYPE_NUMBERS = {
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
_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "double": lambda v: isinstance(v, float),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, Mapping),
    "array": lambda v: _is_list(v),
    "binData": lambda v: isinstance(v, bytes | bytearray),
    "bool": lambda v: isinstance(v, bool),
    "date": lambda v: isinstance(v, datetime),
    "null": lambda v: v is None,
    "int": lambda v: _is_int(v) and -_INT32 <= v < _INT32,
    "long": lambda v: _is_int(v) and not -_INT32 <= v < _INT32,
    "number": lambda v: _is_number(v),
}
"""Types documents can hold; the other MongoDB type names are valid and match nothing."""
_TYPE_NAMES = {*_TYPE_NUMBERS.values(), "number"}

_RE_FLAG_OPTIONS = {re.IGNORECASE: "i", re.MULTILINE: "m", re.DOTALL: "s", re.VERBOSE: "x"}
_RE_HARMLESS_FLAGS = re.UNICODE | re.ASCII
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.never_capture = True
_EXTENDED_SPACE = " \t\n\r\f\v"

_shown = reprlib.Repr()
_shown.maxstring = _shown.maxother = 60


def _show(value: Any) -> str:
    """A short repr for error messages (a 100,000-item list is not printed whole)."""
    return _shown.repr(value)


class _Missing:
    """Stands for a field that is not there."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


class _Candidates(list):
    """The values a dotted path reaches in a document: one, several through arrays of objects, or MISSING."""

    __slots__ = ()


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _is_missing(value: Any) -> bool:
    return isinstance(value, _Missing)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    """A number other than NaN and ±inf (ints, however large, are finite and never turned into floats)."""
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _is_nan(value: Any) -> bool:
    """NaN (only floats can be NaN; ints, however large, are never converted to float)."""
    return isinstance(value, float) and value != value


def _type_class(value: Any) -> int:
    """MongoDB's comparison/sort order of types: null < numbers < strings < objects < arrays <
    booleans < dates."""
    if value is None or _is_missing(value):
        return _NULL
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int | float):
        return _NUMBER
    if isinstance(value, str):
        return _STRING
    if isinstance(value, Mapping):
        return _OBJECT
    if _is_list(value):
        return _ARRAY
    if isinstance(value, datetime):
        return _DATE
    return _OTHER


# ----------------------------------------------------------------------------- regular expressions
def _strip_extended(pattern: str) -> str:
    """The pattern without the whitespace and `#` comments that the `x` option ignores (PCRE's
    rules: not when escaped, inside a character class or inside `\\Q...\\E`); RE2 has no `x` mode."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        char = pattern[i]
        if char == "\\":
            if pattern.startswith("\\Q", i):
                end = pattern.find("\\E", i + 2)
                stop = n if end < 0 else end + 2
                out.append(pattern[i:stop])
                i = stop
            else:
                out.append(pattern[i : i + 2])
                i += 2
        elif in_class:
            if pattern.startswith("[:", i) and (end := pattern.find(":]", i + 2)) >= 0:
                out.append(pattern[i : end + 2])
                i = end + 2
                continue
            out.append(char)
            in_class = char != "]"
            i += 1
        elif char == "[":
            start = i
            i += 1
            if pattern.startswith("^", i):
                i += 1
            if pattern.startswith("]", i):
                i += 1
            out.append(pattern[start:i])
            in_class = True
        elif char in _EXTENDED_SPACE:
            i += 1
        elif char == "#":
            end = pattern.find("\n", i)
            i = n if end < 0 else end + 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


class _Regex:
    """A `$regex` compiled with RE2, whose matching time is linear in the text (no catastrophic
    backtracking); `options` are MongoDB's letters, folded into the pattern."""

    __slots__ = ("_compiled", "options", "source")

    def __init__(self, source: str, options: str, field: str) -> None:
        self.source = source
        self.options = options
        text = _strip_extended(source) if "x" in options else source
        flags = "".join(letter for letter in options if letter in "ims")
        try:
            self._compiled = re2.compile(
                (f"(?{flags}){text}" if flags else text).encode("utf-8", "surrogatepass"), _RE2_OPTIONS
            )
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            detail = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
            raise InvalidQuery(
                f"$regex {_show(source)} on {field!r} is not a pattern RE2 accepts ({detail}); mlcache matches "
                "with RE2 so that no pattern can take exponential time, and RE2 has no backreferences (\\1), "
                "lookaround ((?=...), (?!...), (?<=...), (?<!...)) or \\Z (use \\z): rewrite the pattern "
                "without them, or filter the results in Python"
            ) from exc

    def search(self, text: str) -> bool:
        """Whether the pattern occurs in `text` (lone surrogates, which JSON can carry, are kept)."""
        return self._compiled.search(text.encode("utf-8", "surrogatepass")) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Regex) and (self.source, self.options) == (other.source, other.options)

    def __hash__(self) -> int:
        return hash((self.source, self.options))

    def __repr__(self) -> str:
        return f"re2({self.source!r}, {self.options!r})"


def _regex(pattern: Any, options: Any, field: str) -> _Regex:
    """A string pattern, a Python `re.Pattern` or a compiled `_Regex`, with MongoDB `$options`."""
    if isinstance(pattern, _Regex):
        source, letters = pattern.source, pattern.options
    elif isinstance(pattern, re.Pattern):
        if not isinstance(pattern.pattern, str):
            raise InvalidQuery(f"the regular expression on {field!r} must be a str pattern, got {_show(pattern)}")
        unsupported = pattern.flags & ~(sum(_RE_FLAG_OPTIONS) | _RE_HARMLESS_FLAGS)
        if unsupported:
            raise InvalidQuery(
                f"the regular expression {_show(pattern.pattern)} on {field!r} has flags RE2 cannot honour "
                f"({re.RegexFlag(unsupported)!r}); use only IGNORECASE, MULTILINE, DOTALL and VERBOSE"
            )
        source = pattern.pattern
        letters = "".join(letter for flag, letter in _RE_FLAG_OPTIONS.items() if pattern.flags & flag)
    elif isinstance(pattern, str):
        source, letters = pattern, ""
    else:
        raise InvalidQuery(f"$regex on {field!r} needs a string pattern, got {_show(pattern)}")
    if not isinstance(options, str):
        raise InvalidQuery(f"$options on {field!r} needs a string of option letters (i, m, s, x), got {_show(options)}")
    unknown = sorted(set(options) - set("imsx"))
    if unknown:
        raise InvalidQuery(
            f"$options on {field!r} has unknown option {', '.join(map(repr, unknown))}; MongoDB's options are "
            "i (ignore case), m (^ and $ at line breaks), s (. matches newlines) and x (ignore whitespace)"
        )
    return _Regex(source, "".join(sorted(set(letters + options))), field)


# ----------------------------------------------------------------------------- validation and normalization
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
        elif _is_list(node):
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
    if _is_list(value):
        return [_literal(item, where) for item in value]
    if isinstance(value, re.Pattern | _Regex):
        raise InvalidQuery(f"{where} cannot hold a regular expression; use {{'$regex': pattern}} or $in")
    raise InvalidQuery(
        f"{where} cannot compare with {type(value).__name__} {_show(value)}; use null, booleans, numbers, "
        "strings, datetimes, or lists and objects of those"
    )


def _compile_object(query: Any, where: str) -> dict[str, Any]:
    """A query on a document: fields with conditions, and $and/$or/$nor of such queries."""
    if not isinstance(query, Mapping):
        raise InvalidQuery(f"{where} must be an object, got {_show(query)}")
    out: dict[str, Any] = {}
    for key, value in query.items():
        if not isinstance(key, str):
            raise InvalidQuery(f"field names must be strings, got {key!r} in {where}")
        if key in _LOGICAL_OPERATORS:
            if not _is_list(value) or not value:
                raise InvalidQuery(f"{key} needs a non-empty list of queries, got {_show(value)}")
            out[key] = [_compile_object(sub, f"{key}[{i}]") for i, sub in enumerate(value)]
        elif key.startswith("$"):
            raise InvalidQuery(f"unknown or misplaced operator {key!r} in {where}")
        elif isinstance(value, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in value):
            out[key] = _compile_operators(value, key)
        elif isinstance(value, re.Pattern | _Regex):
            out[key] = {"$regex": _regex(value, "", key)}
        else:
            out[key] = _literal(value, f"the value of {key!r}")
    return out


class _Choices(list):
    """The values of `$in`/`$nin` (still a list, for push-down), with hashed lookups: 100,000 ids
    cost a document one lookup per value it holds, not 100,000 comparisons."""

    __slots__ = ("_bools", "_nan", "_null", "_numbers", "_others", "_regexes", "_strings")

    def __init__(self, items: list[Any]) -> None:
        super().__init__(items)
        self._strings = {item for item in items if isinstance(item, str)}
        self._bools = {item for item in items if isinstance(item, bool)}
        self._numbers = {item for item in items if _is_number(item) and not _is_nan(item)}
        self._nan = any(_is_nan(item) for item in items)
        self._null = any(item is None for item in items)
        self._regexes = [item for item in items if isinstance(item, _Regex)]
        self._others = [item for item in items if _type_class(item) in (_OBJECT, _ARRAY, _DATE)]

    def _holds(self, value: Any) -> bool:
        if isinstance(value, str):
            return value in self._strings or any(regex.search(value) for regex in self._regexes)
        if isinstance(value, bool):
            return value in self._bools
        if isinstance(value, int | float):
            return value in self._numbers or (self._nan and _is_nan(value))
        if value is None or _is_missing(value):
            return self._null
        return any(_equal(item, value) for item in self._others)

    def meets(self, value: Any) -> bool:
        """Whether `value`, or one element of it, equals one of the values (or matches a regex)."""
        return self._holds(value) or (_is_list(value) and any(self._holds(item) for item in value))


def _list_items(op: str, arg: Any, field: str) -> list[Any]:
    """The items of `$in`/`$nin`/`$all`: values, or regular expressions matched against strings."""
    if not _is_list(arg):
        raise InvalidQuery(f"{op} on {field!r} needs a list, got {_show(arg)}")
    items: list[Any] = []
    for item in arg:
        if isinstance(item, re.Pattern | _Regex):
            items.append(_regex(item, "", field))
        elif op == "$all" and isinstance(item, Mapping) and list(item) == ["$elemMatch"]:
            items.append(_compile_operators(item, field))
        elif isinstance(item, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in item):
            raise InvalidQuery(
                f"{op} on {field!r} cannot hold the operator object {_show(item)}; use $or for alternatives "
                "of conditions (or, in $all, only {'$elemMatch': ...})"
            )
        else:
            items.append(_literal(item, f"{op} on {field!r}"))
    return items if op == "$all" else _Choices(items)


def _whole_number(value: Any) -> int | None:
    """An integer given as int or as a float with no fraction (as MongoDB accepts them), else None."""
    if _is_int(value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _type_names(arg: Any, field: str) -> tuple[str, ...]:
    """`$type`'s argument (a type name or number, or a list of them) as type names."""
    names = []
    for item in arg if _is_list(arg) and arg else [arg]:
        number = None if isinstance(item, str) else _whole_number(item)
        name = _TYPE_NUMBERS.get(number) if number is not None else item
        if not isinstance(name, str) or name not in _TYPE_NAMES:
            raise InvalidQuery(
                f"$type on {field!r} needs MongoDB type names or numbers (e.g. 'string', 'number', 'double', "
                f"'int', 'long', 'bool', 'date', 'null', 'object', 'array', or 2 for string), got {_show(item)}"
            )
        names.append(name)
    return tuple(names)


def _mod_arguments(arg: Any, field: str) -> list[int]:
    """`[divisor, remainder]`, truncated to integers as MongoDB does; the divisor must not be 0."""
    if not _is_list(arg) or len(arg) != 2 or not all(_is_finite_number(v) for v in arg) or int(arg[0]) == 0:
        raise InvalidQuery(
            f"$mod on {field!r} needs [divisor, remainder]: two finite numbers, the divisor not 0 (nor between "
            f"-1 and 1, as it is truncated to an integer), got {_show(arg)}"
        )
    return [int(arg[0]), int(arg[1])]


def _compile_operators(spec: Mapping[str, Any], field: str) -> dict[str, Any]:
    """The operators on one field, each argument checked and normalized."""
    out: dict[str, Any] = {}
    for op, arg in spec.items():
        if op not in _FIELD_OPERATORS:
            raise InvalidQuery(f"unknown operator {op!r} on field {field!r}")
        if op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte"):
            out[op] = _literal(arg, f"{op} on {field!r}")
        elif op in ("$in", "$nin", "$all"):
            out[op] = _list_items(op, arg, field)
        elif op == "$regex":
            out[op] = _regex(arg, spec.get("$options", ""), field)
        elif op == "$options":
            if "$regex" not in spec:
                raise InvalidQuery(
                    f"$options on {field!r} needs a $regex beside it, as in {{'$regex': 'x', '$options': 'i'}}"
                )
        elif op == "$not":
            if isinstance(arg, re.Pattern | _Regex):
                out[op] = {"$regex": _regex(arg, "", field)}
            elif isinstance(arg, Mapping) and arg:
                out[op] = _compile_operators(arg, field)
            else:
                raise InvalidQuery(
                    f"$not on {field!r} needs an operator object or a regular expression, got {_show(arg)}"
                )
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise InvalidQuery(f"$exists on {field!r} needs true or false, got {_show(arg)}")
            out[op] = arg
        elif op == "$elemMatch":
            if not isinstance(arg, Mapping):
                raise InvalidQuery(f"$elemMatch on {field!r} needs an object (operators or a query), got {_show(arg)}")
            if any(k in _FIELD_OPERATORS for k in arg):
                out[op] = _compile_operators(arg, field)
            else:
                out[op] = _compile_object(arg, f"$elemMatch of {field!r}")
        elif op == "$size":
            size = _whole_number(arg)
            if size is None or size < 0:
                raise InvalidQuery(f"$size on {field!r} needs a non-negative integer, got {_show(arg)}")
            out[op] = size
        elif op == "$type":
            out[op] = _type_names(arg, field)
        else:
            out[op] = _mod_arguments(arg, field)
    return out


# ----------------------------------------------------------------------------- matching
def _reach(doc: Any, parts: list[str]) -> _Candidates:
    """The values at a dotted path: objects are entered, arrays of objects are traversed (a digit
    part also picks the element at that index); an object without the key reaches MISSING."""
    found = _Candidates()
    pending = [(doc, 0)]
    while pending:
        node, i = pending.pop()
        if i == len(parts):
            found.append(node)
            continue
        part = parts[i]
        if isinstance(node, Mapping):
            pending.append((node[part], i + 1) if part in node else (MISSING, len(parts)))
        elif _is_list(node):
            if part.isascii() and part.isdigit() and int(part) < len(node):
                pending.append((node[int(part)], i + 1))
            pending.extend((item, i) for item in node if isinstance(item, Mapping))
        else:
            found.append(MISSING)
    if not found:
        found.append(MISSING)
    return found


def _equal(a: Any, b: Any) -> bool:
    """MongoDB equality: same type class, numbers by exact value (NaN equals NaN), null equals
    missing, arrays element by element, objects key by key (recursion bounded by the query's depth)."""
    kind = _type_class(a)
    if kind != _type_class(b):
        return False
    if kind == _NULL:
        return True
    if kind == _NUMBER:
        return bool(a == b) or (_is_nan(a) and _is_nan(b))
    if kind == _OBJECT:
        return a.keys() == b.keys() and all(_equal(value, b[key]) for key, value in a.items())
    if kind == _ARRAY:
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:
        return False


def _regex_meets(pattern: _Regex, value: Any) -> bool:
    if isinstance(value, str):
        return pattern.search(value)
    return _is_list(value) and any(isinstance(item, str) and pattern.search(item) for item in value)


def _equal_meets(condition: Any, value: Any) -> bool:
    """Whether `value`, or one element of it, equals `condition` (a regex matches strings)."""
    if isinstance(condition, _Regex):
        return _regex_meets(condition, value)
    return _equal(condition, value) or (_is_list(value) and any(_equal(condition, item) for item in value))


def _compare_one(op: str, value: Any, condition: Any) -> bool:
    """`value <op> condition` within one type class; NaN and null compare equal only to themselves."""
    kind = _type_class(value)
    if kind != _type_class(condition):
        return False
    if kind == _NULL:
        return op in ("$gte", "$lte")
    if kind == _NUMBER and (_is_nan(value) or _is_nan(condition)):
        return _is_nan(value) and _is_nan(condition) and op in ("$gte", "$lte")
    if kind in (_OBJECT, _ARRAY, _OTHER):
        return False
    try:
        return bool(_COMPARISONS[op](value, condition))
    except TypeError:
        return False


def _compare_meets(op: str, value: Any, condition: Any) -> bool:
    if _is_list(value):
        return any(_compare_one(op, item, condition) for item in value)
    return _compare_one(op, value, condition)


def _mod_one(divisor: int, remainder: int, value: Any) -> bool:
    """MongoDB's `$mod`: the value truncated to an integer, the remainder with the dividend's sign."""
    if not _is_finite_number(value):
        return False
    dividend = int(value)
    rest = abs(dividend) % abs(divisor)
    return (-rest if dividend < 0 else rest) == remainder


def _has_type(names: tuple[str, ...], value: Any) -> bool:
    if "array" in names and _is_list(value):
        return True
    items = value if _is_list(value) else (value,)
    return any(_TYPE_TESTS[name](item) for name in names if name in _TYPE_TESTS for item in items)


class MongoQuery(Query):
    """A compiled query (build it with `compile_query`): mongoquery's logical operators, with every
    field operator following MongoDB (see the module docstring)."""

    def __init__(self, definition: Mapping[str, Any] | None = None, also: Mapping[str, Any] | None = None) -> None:
        super().__init__(_compile(definition, also))

    @property
    def definition(self) -> dict[str, Any]:
        """The checked, normalized query (regexes compiled, `$in` lists as choice sets), as a backend's
        push-down reads it."""
        return self._definition  # type: ignore[no-any-return]

    def match(self, entry: Any) -> bool:
        """Whether the document matches; never raises anything but InvalidQuery."""
        try:
            return self._match(self._definition, entry)
        except MlcacheError:
            raise
        except Exception as exc:
            raise InvalidQuery(
                f"the query could not be evaluated on a document ({type(exc).__name__}: {exc}); simplify the "
                "query, or report it as an mlcache bug"
            ) from exc

    def _match(self, condition: Any, entry: Any) -> bool:
        if isinstance(entry, _Candidates):
            if isinstance(condition, Mapping) and condition and next(iter(condition)).startswith("$"):
                return all(getattr(self, "_" + op[1:])(arg, entry) for op, arg in condition.items())
            return any(_equal_meets(condition, value) for value in entry)
        for key, sub in condition.items():
            if key in _LOGICAL_OPERATORS:
                if not getattr(self, "_" + key[1:])(sub, entry):
                    return False
            elif not self._match(sub, _reach(entry, key.split("."))):
                return False
        return True

    def _eq(self, condition: Any, values: _Candidates) -> bool:
        return any(_equal_meets(condition, value) for value in values)

    def _ne(self, condition: Any, values: _Candidates) -> bool:
        return not self._eq(condition, values)

    def _in(self, condition: _Choices, values: _Candidates) -> bool:
        return any(condition.meets(value) for value in values)

    def _nin(self, condition: _Choices, values: _Candidates) -> bool:
        return not self._in(condition, values)

    def _gt(self, condition: Any, values: _Candidates) -> bool:
        return any(_compare_meets("$gt", value, condition) for value in values)

    def _gte(self, condition: Any, values: _Candidates) -> bool:
        return any(_compare_meets("$gte", value, condition) for value in values)

    def _lt(self, condition: Any, values: _Candidates) -> bool:
        return any(_compare_meets("$lt", value, condition) for value in values)

    def _lte(self, condition: Any, values: _Candidates) -> bool:
        return any(_compare_meets("$lte", value, condition) for value in values)

    def _regex(self, condition: _Regex, values: _Candidates) -> bool:
        return any(_regex_meets(condition, value) for value in values)

    def _not(self, condition: Mapping[str, Any], values: _Candidates) -> bool:
        return not self._match(condition, values)

    def _exists(self, condition: bool, values: _Candidates) -> bool:
        return any(not _is_missing(value) for value in values) is condition

    def _all(self, condition: list[Any], values: _Candidates) -> bool:
        return bool(condition) and all(
            self._match(item, values) if isinstance(item, Mapping) and "$elemMatch" in item else self._eq(item, values)
            for item in condition
        )

    def _elemMatch(self, condition: Mapping[str, Any], values: _Candidates) -> bool:
        operators = any(key in _FIELD_OPERATORS for key in condition)

        def meets(element: Any) -> bool:
            if operators:
                return self._match(condition, _Candidates([element]))
            return isinstance(element, Mapping) and self._match(condition, element)

        return any(_is_list(value) and any(meets(element) for element in value) for value in values)

    def _size(self, condition: int, values: _Candidates) -> bool:
        return any(_is_list(value) and len(value) == condition for value in values)

    def _type(self, condition: tuple[str, ...], values: _Candidates) -> bool:
        return any(_has_type(condition, value) for value in values)

    def _mod(self, condition: list[int], values: _Candidates) -> bool:
        divisor, remainder = condition
        items = (item for value in values for item in (value if _is_list(value) else (value,)))
        return any(_mod_one(divisor, remainder, item) for item in items)


def _compile(query: Mapping[str, Any] | None, also: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checked, normalized definition of `query` AND `also`, its depth checked first."""
    _check_depth(query)
    compiled = _compile_object({} if query is None else query, "the query")
    if also is None:
        return compiled
    _check_depth(also)
    return {"$and": [compiled, _compile_object(also, "the added condition")]}


def compile_query(query: Mapping[str, Any] | None, also: Mapping[str, Any] | None = None) -> MongoQuery:
    """Validate and normalize a query now (errors at call time, not when iterating), ANDed with
    `also` when given (a condition the caller adds, checked like the query)."""
    return MongoQuery(query, also)


def matches(query: Mapping[str, Any] | MongoQuery | None, doc: Mapping[str, Any]) -> bool:
    """Whether `doc` matches the MongoDB `query`."""
    compiled = query if isinstance(query, MongoQuery) else compile_query(query)
    return compiled.match(doc)


# ----------------------------------------------------------------------------- sorting
def check_sort(sort: Iterable[tuple[str, int]] | None) -> list[tuple[str, int]]:
    """Validate `[(field, 1 | -1), ...]`."""
    checked = []
    for item in sort or ():
        if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str) and item[1] in (1, -1)):
            raise InvalidQuery(f"sort items must be (field, 1) or (field, -1), got {_show(item)}")
        checked.append((item[0], int(item[1])))
    return checked


def extract(doc: Any, path: str) -> Any:
    """The value at a dotted path, MISSING when absent."""
    node = doc
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return MISSING
    return node


_LENGTHS = object()


def _order_scalars(kind: int, a: Any, b: Any) -> int:
    """-1, 0 or 1 for two non-container values of the same type class."""
    if kind == _NULL:
        return 0
    if kind == _NUMBER and (_is_nan(a) or _is_nan(b)):
        return (not _is_nan(a)) - (not _is_nan(b))
    if kind == _DATE:
        a = a if a.tzinfo else a.replace(tzinfo=timezone.utc)
        b = b if b.tzinfo else b.replace(tzinfo=timezone.utc)
    if kind == _OTHER:
        a, b = (type(a).__name__, repr(a)), (type(b).__name__, repr(b))
    return int(a > b) - int(a < b)


def _order(a: Any, b: Any) -> int:
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
        kind = _type_class(x)
        other = _type_class(y)
        if kind != other:
            return -1 if kind < other else 1
        if kind in (_ARRAY, _OBJECT):
            xs = list(x.items()) if kind == _OBJECT else list(x)
            ys = list(y.items()) if kind == _OBJECT else list(y)
            pending.append((_LENGTHS, (len(xs), len(ys))))
            pending.extend(reversed(list(zip(xs, ys, strict=False))))
            continue
        result = _order_scalars(kind, x, y)
        if result:
            return result
    return 0


class _SortKey:
    """Orders one value the MongoDB way; an array sorts by its smallest (asc) or largest (desc) element."""

    __slots__ = ("value",)

    def __init__(self, value: Any, direction: int) -> None:
        if _is_list(value) and value:
            chosen = value[0]
            for item in value[1:]:
                if _order(item, chosen) == -direction:
                    chosen = item
            value = chosen
        self.value = value

    def __lt__(self, other: _SortKey) -> bool:
        return _order(self.value, other.value) < 0


def _sort_key(doc_of: Callable[[Any], Mapping[str, Any]], field: str, direction: int, item: Any) -> _SortKey:
    return _SortKey(extract(doc_of(item), field), direction)


def sort_docs(
    items: list[Any], sort: SortSpec, doc_of: Callable[[Any], Mapping[str, Any]], id_of: Callable[[Any], Any]
) -> list[Any]:
    """Items ordered by `sort`, ties broken by id ascending (stable, deterministic)."""
    ordered = sorted(items, key=lambda item: str(id_of(item)))
    for field, direction in reversed(list(sort)):
        ordered.sort(key=functools.partial(_sort_key, doc_of, field, direction), reverse=direction == -1)
    return ordered
