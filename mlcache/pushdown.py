"""Push-down: the parts of a MongoDB query that a backend can evaluate, as a *superset* filter.

Whatever is pushed down may only drop entities the full query would drop too; the full query is
always applied locally afterwards, so a condition that cannot be expressed exactly is widened
(`LIKE '%v%'` for a JSON-encoded value) or left out, never narrowed. Only conditions that every
match must satisfy (top-level fields and `$and` members) are considered; `$or`/`$nor` stay local.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .encoding import is_mlflow_key

_UNSAFE_TEXT = re.compile(r"[\\\x00-\x1f\x7f]")


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


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@dataclass
class MlflowFilter:
    """MLflow search arguments: filter clauses (joined by AND) and, for runs, experiment ids."""

    clauses: list[str] = field(default_factory=list)
    exp_ids: set[str] | None = None

    @property
    def filter_string(self) -> str:
        return " AND ".join(self.clauses)

    def narrow_exp_ids(self, ids: set[str]) -> None:
        self.exp_ids = ids if self.exp_ids is None else self.exp_ids & ids


def _value_clause(prefix: str, key: str, op: str, arg: Any, numeric: bool) -> str | None:
    """tags/params (JSON-encoded strings) or metrics (numbers) of runs, experiments, models.
    (`$exists` is not pushed: `params.a` exists for MongoDB when only `params.a.b` was logged.)"""
    qkey = quote_key(key)
    if qkey is None:
        return None
    if numeric:
        sql_op = {"$eq": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}.get(op)
        return f"{prefix}.{qkey} {sql_op} {arg!r}" if sql_op and is_number(arg) else None
    if op != "$eq":
        return None
    if isinstance(arg, str):
        if is_mlflow_key(key):
            literal = quote_string(arg)
            return f"{prefix}.{qkey} = {literal}" if literal else None
        literal = quote_string(f"%{arg}%")
        return f"{prefix}.{qkey} LIKE {literal}" if literal and '"' not in arg else None
    if is_number(arg) and float(arg).is_integer():
        return f"{prefix}.{qkey} LIKE '%{int(arg)}%'"
    return None


def _time_clauses(column: str, op: str, arg: Any) -> list[str]:
    """Bounds in whole milliseconds that keep every sub-millisecond match (inclusive, widened)."""
    when = _as_datetime(arg)
    if when is None:
        return []
    micros = round(when.timestamp() * 1_000_000)
    floor_ms, ceil_ms = micros // 1000, -(-micros // 1000)
    if op in ("$gt", "$gte"):
        return [f"{column} >= {floor_ms}"]
    if op in ("$lt", "$lte"):
        return [f"{column} <= {ceil_ms}"]
    if op == "$eq":
        return [f"{column} >= {floor_ms}", f"{column} <= {ceil_ms}"]
    return []


def _string_list(arg: Any) -> list[str] | None:
    if not isinstance(arg, list | tuple) or not arg or not all(isinstance(v, str) for v in arg):
        return None
    quoted = [quote_string(v) for v in arg]
    return None if any(q is None for q in quoted) else [q for q in quoted if q]


def runs_filter(query: Mapping[str, Any]) -> MlflowFilter:
    """MLflow `search_runs` filter (superset) for a query on run documents."""
    out = MlflowFilter()
    for path, op, arg in required_conditions(query):
        head, _, rest = path.partition(".")
        if path == "exp.id":
            if op == "$eq" and isinstance(arg, str):
                out.narrow_exp_ids({arg})
            elif op == "$in" and _string_list(arg) is not None:
                out.narrow_exp_ids(set(arg))
        elif path in ("id", "name", "status"):
            column = {"id": "attributes.run_id", "name": "attributes.run_name", "status": "attributes.status"}[path]
            if op == "$eq" and isinstance(arg, str) and (literal := quote_string(arg)):
                out.clauses.append(f"{column} = {literal}")
            elif op == "$in" and path == "id" and (items := _string_list(arg)):
                out.clauses.append(f"{column} IN ({', '.join(items)})")
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
    out = MlflowFilter()
    for path, op, arg, clause in _name_and_tags(query, "model.name"):
        if clause:
            out.clauses.append(clause)
        elif path == "run_id" and op == "$eq" and isinstance(arg, str) and (literal := quote_string(arg)):
            out.clauses.append(f"run_id = {literal}")
        elif path == "run_id" and op == "$in" and (items := _string_list(arg)):
            out.clauses.append(f"run_id IN ({', '.join(items)})")
    return out
