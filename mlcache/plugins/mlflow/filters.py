"""Push-down to MLflow: the parts of a MongoDB query MLflow's filter syntax can evaluate, as a *superset*.

Whatever is pushed down may only drop entities the full query would drop too; the full query is
always applied locally afterwards, so a condition that cannot be expressed exactly is widened or
left out, never narrowed. Only conditions that every match must satisfy (top-level fields and
`$and` members) are considered; `$or`/`$nor` stay local. Tag and param values are strings on the
MLflow side, JSON-encoded by mlcache or plain when plain MLflow wrote them, and any spelling that
decodes to the value matches: so a number is never pushed for them (`1e20` may be spelled `1E+20`),
and a string only as `LIKE '%v%'` when every JSON encoder writes it verbatim. Metrics are numbers on
the server: finite comparisons are pushed, strict ones widened to inclusive against float rounding.
A long `IN` list is sent in chunks, one search per chunk (MLflow refuses very long lists).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ...conditions import required_conditions
from ...encoding import is_mlflow_key
from ...timeutil import parse_iso

_UNSAFE_TEXT = re.compile(r"[\\\x00-\x1f\x7f]")
_ESCAPED_BY_SOME_JSON = frozenset("\"\\/<>&'+`")
"""Printable ASCII that some JSON encoder escapes: `"` and `\\` always, `/` (PHP), and the HTML-safe
escapes of Go (`<`, `>`, `&`) and .NET (also `'`, `+`, backtick)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

IN_CHUNK = 100
"""Most values one `IN (...)` clause carries; longer lists are sent as several searches."""
URL_IN_CHUNK = 50
"""The same for searches MLflow's client sends as a GET (model versions): the list travels in the URL,
which servers such as gunicorn cap at 4 KB."""


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (ints of any size, never converted to float)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def number_literal(value: Any) -> str | None:
    """A number as MLflow's filter parser reads it back to the same double (`1e20`, not `1e+20`),
    or None when it is not a finite number a double can hold."""
    if not is_number(value):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return repr(number).replace("e+", "e") if math.isfinite(number) else None


def _verbatim_in_json(text: str) -> bool:
    """Whether every JSON encoder writes `text` as is inside its quotes (so a LIKE on it finds every spelling)."""
    return text.isascii() and text.isprintable() and not _ESCAPED_BY_SOME_JSON.intersection(text)


def quote_string(value: str) -> str | None:
    """An MLflow filter string literal, or None when it cannot be written safely."""
    if _UNSAFE_TEXT.search(value):
        return None
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def quote_key(key: str) -> str | None:
    if "`" in key or _UNSAFE_TEXT.search(key) or not key:
        return None
    return f"`{key}`"


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, str):
        value = parse_iso(value)
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@dataclass
class MlflowFilter:
    """MLflow search arguments: filter clauses (joined by AND), for runs experiment ids, and a
    `column IN (values)` condition that `filter_strings` sends in chunks."""

    clauses: list[str] = field(default_factory=list)
    exp_ids: set[str] | None = None
    in_column: str | None = None
    in_values: list[str] = field(default_factory=list)
    """The quoted literals of the IN condition on `in_column` (none can match when it is empty)."""
    in_chunk: int = IN_CHUNK

    @property
    def filter_string(self) -> str:
        """The clauses joined by AND, without the IN condition (a superset of `filter_strings`)."""
        return " AND ".join(self.clauses)

    def narrow_exp_ids(self, ids: set[str]) -> None:
        self.exp_ids = ids if self.exp_ids is None else self.exp_ids & ids

    def require_in(self, column: str, values: Sequence[str]) -> None:
        """Every match has `column` among `values`; a second list on the same column intersects the
        first, one on another column is kept only when short, one MLflow cannot quote is left out."""
        quoted = [quote_string(value) for value in dict.fromkeys(values)]
        literals = [literal for literal in quoted if literal is not None]
        if len(literals) < len(quoted):
            return
        if self.in_column is None or self.in_column == column:
            if self.in_column == column:
                keep = set(literals)
                literals = [literal for literal in self.in_values if literal in keep]
            self.in_column, self.in_values = column, literals
        elif not literals:
            self.in_values = []
        elif len(literals) <= self.in_chunk:
            self.clauses.append(f"{column} IN ({', '.join(literals)})")

    def filter_strings(self) -> Iterator[str]:
        """The filter of each search to run: one per chunk of at most `in_chunk` IN values (the
        chunks are disjoint, so are their results; none for an empty list), else `filter_string`."""
        if self.in_column is None:
            yield self.filter_string
            return
        for start in range(0, len(self.in_values), self.in_chunk):
            items = ", ".join(self.in_values[start : start + self.in_chunk])
            yield " AND ".join([*self.clauses, f"{self.in_column} IN ({items})"])


def _value_clause(prefix: str, key: str, op: str, arg: Any, numeric: bool) -> str | None:
    """tags/params (strings, see the module docstring) or metrics (numbers) of runs, experiments,
    models. Not pushed: `$exists` (`params.a` exists for MongoDB when only `params.a.b` was logged),
    and a dotted tag/param key other than `mlflow.*` (the value may sit in a JSON object or array
    logged under a prefix of the key, e.g. `params.a.b` in `a = [{"b": 1}]`)."""
    qkey = quote_key(key)
    if qkey is None:
        return None
    if numeric:
        sql_op = {"$eq": "=", "$gt": ">=", "$gte": ">=", "$lt": "<=", "$lte": "<="}.get(op)
        literal = number_literal(arg) if sql_op else None
        return f"{prefix}.{qkey} {sql_op} {literal}" if literal else None
    if op != "$eq" or not isinstance(arg, str):
        return None
    if is_mlflow_key(key):
        literal = quote_string(arg)
        return f"{prefix}.{qkey} = {literal}" if literal else None
    if "." in key or not _verbatim_in_json(arg):
        return None
    literal = quote_string(f"%{arg}%")
    return f"{prefix}.{qkey} LIKE {literal}" if literal else None


def _time_clauses(column: str, op: str, arg: Any) -> list[str]:
    """Bounds in whole milliseconds that keep every sub-millisecond match (inclusive, widened)."""
    when = _as_datetime(arg)
    if when is None:
        return []
    micros = (when - _EPOCH) // timedelta(microseconds=1)
    floor_ms, ceil_ms = micros // 1000, -(-micros // 1000)
    if op in ("$gt", "$gte"):
        return [f"{column} >= {floor_ms}"]
    if op in ("$lt", "$lte"):
        return [f"{column} <= {ceil_ms}"]
    if op == "$eq":
        return [f"{column} >= {floor_ms}", f"{column} <= {ceil_ms}"]
    return []


def _string_list(arg: Any) -> list[str] | None:
    """The values of an `$in` when all are strings (an empty list, which matches nothing, included)."""
    return list(arg) if isinstance(arg, list | tuple) and all(isinstance(v, str) for v in arg) else None


def runs_filter(query: Mapping[str, Any]) -> MlflowFilter:
    """MLflow `search_runs` filter (superset) for a query on run documents."""
    out = MlflowFilter()
    for path, op, arg in required_conditions(query):
        head, _, rest = path.partition(".")
        if path == "exp.id":
            if op == "$eq" and isinstance(arg, str):
                out.narrow_exp_ids({arg})
            elif op == "$in" and (items := _string_list(arg)) is not None:
                out.narrow_exp_ids(set(items))
        elif path in ("id", "name", "status"):
            column = {"id": "attributes.run_id", "name": "attributes.run_name", "status": "attributes.status"}[path]
            if op == "$eq" and isinstance(arg, str) and (literal := quote_string(arg)):
                out.clauses.append(f"{column} = {literal}")
            elif op == "$in" and path == "id" and (items := _string_list(arg)) is not None:
                out.require_in(column, items)
        elif path == "parent_run_id" and op == "$eq" and isinstance(arg, str) and (literal := quote_string(arg)):
            out.clauses.append(f"tags.`mlflow.parentRunId` = {literal}")
        elif path in ("start_time", "end_time"):
            out.clauses.extend(_time_clauses(f"attributes.{path}", op, arg))
        elif head in ("params", "tags", "metrics") and rest:
            clause = _value_clause(head, rest, op, arg, numeric=head == "metrics")
            if clause:
                out.clauses.append(clause)
    return out


def _name_and_tags(query: Mapping[str, Any], name_path: str) -> Iterator[tuple[str, str, Any, str]]:
    """Clauses on the entity's name and tags, and every condition (for more clauses) with its clause."""
    for path, op, arg in required_conditions(query):
        head, _, rest = path.partition(".")
        clause = ""
        if path == name_path and op == "$eq" and isinstance(arg, str) and (literal := quote_string(arg)):
            clause = f"name = {literal}"
        elif head == "tags" and rest:
            clause = _value_clause("tags", rest, op, arg, False) or ""
        yield path, op, arg, clause


def exps_filter(query: Mapping[str, Any]) -> MlflowFilter:
    """MLflow `search_experiments` filter (superset)."""
    return MlflowFilter([clause for *_, clause in _name_and_tags(query, "name") if clause])


def models_filter(query: Mapping[str, Any]) -> MlflowFilter:
    """MLflow `search_registered_models` filter (superset)."""
    return MlflowFilter([clause for *_, clause in _name_and_tags(query, "name") if clause])


def model_versions_filter(query: Mapping[str, Any]) -> MlflowFilter:
    """MLflow `search_model_versions` filter (superset)."""
    out = MlflowFilter(in_chunk=URL_IN_CHUNK)
    for path, op, arg, clause in _name_and_tags(query, "model.name"):
        if clause:
            out.clauses.append(clause)
        elif path == "run_id" and op == "$eq" and isinstance(arg, str) and (literal := quote_string(arg)):
            out.clauses.append(f"run_id = {literal}")
        elif path == "run_id" and op == "$in" and (items := _string_list(arg)) is not None:
            out.require_in("run_id", items)
    return out
