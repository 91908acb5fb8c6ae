"""Translating a MongoDB-style query into a superset SQL filter over the index's rows, and
selecting the candidates that pass it.

Values. Leaves are strings and numbers; integers beyond 64 bits are stored as the nearest float
(rounding keeps their order), infinities as REAL infinities, and NaN is not stored. Conditions
are converted the same way, so a strict comparison with a number that may be rounded is widened
to a non-strict one, and conditions on NaN are left to the full query. Conditions that would
pass sqlite's limit of parameters per statement are left out too.

Composed documents. Queries see runs with their experiment under `exp`, model versions with
their model under `model` and their run under `run`; stored documents hold only the ids
(`JOINS`). Conditions on those fields are pushed down as conditions on the ids, or not at all.

Candidates. The conditions on leaf values are ordered by a capped count of their matching
leaves: the most selective one is read, the others are probed per key, so the candidate step
costs about what the most selective condition costs.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .conditions import required_conditions
from .query.values import SCALAR_TYPES

JOINS: dict[str, dict[str, str]] = {
    "run": {"exp.id": "exp_id"},
    "lm": {"exp.id": "exp_id"},
    "mv": {"model.name": "model_name", "run.id": "run_id"},
}
"""Per kind, the fields of embedded entities that its stored documents hold, under their stored name."""
EMBEDDED = ("exp", "model", "run")
"""Fields under which queries see other entities composed into a document; stored documents lack them."""
_COLUMNS = {"exp_id": "exp_id", "name": "name", "model_name": "model_name"}

_INT64 = 1 << 63
_FIRST_CAP = 64
"""Capped counts that order the conditions start here and grow 4x until one falls under the cap."""
_OPS = {"$eq": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def storable(value: Any) -> str | int | float | None:
    """`value` as the index holds it, or None when it cannot hold it: encodable strings, 64-bit
    integers, floats and infinities as they are; larger integers as the nearest float (rounding
    keeps their order); never NaN, booleans or anything else."""
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode()
        except UnicodeEncodeError:
            return None
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if -_INT64 <= value < _INT64:
            return int(value)
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, float) and not math.isnan(value):
        return float(value)
    return None


_INT_RANGE_EXACT = range(-(1 << 63), 1 << 64)


def leaves(doc: Any) -> tuple[list[tuple[str, str | int | float]], bool]:
    """(dotted path, stored value) for every string or number of a document (`storable`); array
    elements are listed under the array's path, as MongoDB matches them. Also whether every number
    is one a 64-bit JSON writer keeps exactly (no NaN, infinity or integer past 64 bits)."""
    found: list[tuple[str, str | int | float]] = []
    exact = True
    pending: list[tuple[str, Any]] = [("", doc)]
    while pending:
        prefix, value = pending.pop()
        kind = type(value)
        if kind is dict or (kind not in SCALAR_TYPES and isinstance(value, Mapping)):
            pending.extend((f"{prefix}.{key}" if prefix else str(key), item) for key, item in value.items())
            continue
        if kind is list or kind is tuple or (kind not in SCALAR_TYPES and isinstance(value, list | tuple)):
            pending.extend((prefix, item) for item in value)
            continue
        if isinstance(value, float):
            exact = exact and math.isfinite(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            exact = exact and value in _INT_RANGE_EXACT
        if prefix and (stored := storable(value)) is not None and (prefix.isascii() or storable(prefix) is not None):
            found.append((prefix, stored))
    return found, exact


@dataclass(frozen=True)
class LeafCondition:
    """A condition every match meets: some leaf at `path` has `value <op> <values>` (op `IN`: any)."""

    path: str
    op: str
    values: tuple[Any, ...]

    def where(self, alias: str, kind: str | None) -> tuple[str, list[Any]]:
        """The condition on rows of `leaves` named `alias`, with its parameters; without `kind`
        for rows already tied to one entity's id."""
        placeholder = f"({', '.join('?' * len(self.values))})" if self.op == "IN" else "?"
        sql = f"{alias}.path = ? AND {alias}.value {self.op} {placeholder}"
        if kind is None:
            return sql, [self.path, *self.values]
        return f"{alias}.kind = ? AND {sql}", [kind, self.path, *self.values]


@dataclass
class SqlFilter:
    """A superset filter: `clauses` on the entity columns and `conditions` on the leaf values."""

    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    conditions: list[LeafCondition] = field(default_factory=list)


def _may_be_rounded(value: Any) -> bool:
    """Whether a stored number equal to `value` may stand for a larger or smaller integer."""
    return isinstance(value, float) and abs(value) >= _INT64


def sql_filter(query: Mapping[str, Any], field_map: Mapping[str, str], kind: str | None = None) -> SqlFilter:
    """A superset SQL filter on stored records for the conditions every match must meet.
    `field_map` (with `JOINS` of `kind`) renames query fields to stored fields (`exp.id` ->
    `exp_id`); other fields of embedded entities are left to the full query."""
    fields = {**JOINS.get(kind or "", {}), **field_map}
    flt = SqlFilter()
    for field_name, op, arg in required_conditions(query):
        if field_name in fields:
            name = fields[field_name]
        elif field_name.partition(".")[0] in EMBEDDED:
            continue
        else:
            name = field_name
        if name.endswith("_time"):
            continue
        if op == "$in" and isinstance(arg, list | tuple) and arg:
            sql_op, values = "IN", [storable(v) for v in arg]
        elif op in _OPS:
            sql_op, values = _OPS[op], [storable(arg)]
        else:
            continue
        if any(v is None for v in values):
            continue
        if name in _COLUMNS and sql_op in ("=", "IN") and all(isinstance(v, str) for v in values):
            flt.clauses.append(f"{_COLUMNS[name]} IN ({', '.join('?' * len(values))})")
            flt.params.extend(values)
            continue
        if sql_op in ("<", ">") and _may_be_rounded(values[0]):
            sql_op += "="
        flt.conditions.append(LeafCondition(name, sql_op, tuple(values)))
    return flt


def _ordered(conn: sqlite3.Connection, kind: str, conditions: list[LeafCondition]) -> list[LeafCondition]:
    """The conditions, fewest matching leaves first. Counts are capped, and the cap grows until one
    condition falls under it, so ordering costs about as much as reading the most selective one."""
    if len(conditions) < 2:
        return conditions
    selects, params = [], []
    for condition in conditions:
        where, where_params = condition.where("c", kind)
        selects.append(f"(SELECT count(*) FROM (SELECT 1 FROM leaves c WHERE {where} LIMIT ?))")
        params.append(where_params)
    sql = f"SELECT {', '.join(selects)}"
    cap = _FIRST_CAP
    while True:
        counts = conn.execute(sql, [p for where_params in params for p in (*where_params, cap)]).fetchone()
        if min(counts) < cap:
            break
        cap *= 4
    return [condition for _, condition in sorted(zip(counts, conditions, strict=True), key=lambda pair: pair[0])]


def _leaf_select(kind: str, conditions: list[LeafCondition]) -> tuple[str, list[Any]]:
    """Entity ids meeting every condition: read the first condition's leaves, probe the others per
    id through the (id, path, value) primary key."""
    driver, *probes = conditions
    where, params = driver.where("d", kind)
    parts = [f"SELECT d.id FROM leaves d WHERE {where}"]
    for i, probe in enumerate(probes):
        probe_where, probe_params = probe.where(f"p{i}", None)
        parts.append(f"AND EXISTS (SELECT 1 FROM leaves p{i} WHERE p{i}.id = d.id AND {probe_where})")
        params.extend(probe_params)
    return " ".join(parts), params


_SQLITE_LIMIT_VARIABLE_NUMBER = getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", 9)


def _within_limit(conn: sqlite3.Connection, flt: SqlFilter) -> list[LeafCondition]:
    """The conditions that fit in sqlite's limit of parameters per statement, fewest values first
    (leaving one out only widens the filter)."""
    getlimit = getattr(conn, "getlimit", None)
    budget = (getlimit(_SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit else 999) - len(flt.params) - 1
    kept: set[int] = set()
    for i, condition in sorted(enumerate(flt.conditions), key=lambda pair: len(pair[1].values)):
        need = len(condition.values) + 3
        if need > budget:
            break
        kept.add(i)
        budget -= need
    return [condition for i, condition in enumerate(flt.conditions) if i in kept]


def select(
    conn: sqlite3.Connection, kind: str, flt: SqlFilter, with_files: bool = False, limit: int | None = None
) -> list[tuple[Any, ...]]:
    """Rows (key, doc, digest, cached_at, stale) of the entities of `kind` that pass the filter,
    each once; with `with_files`, each with the (file, stamp) it was indexed from, once per such
    file. With a `limit`, the first rows found: the leaves are read as they are joined, not
    gathered first, and a key may come more than once."""
    clauses, params = ["e.kind = ?", *flt.clauses], [kind, *flt.params]
    columns, source = "e.key, e.doc, e.digest, e.cached_at, e.stale", "entities e"
    conditions = _within_limit(conn, flt)
    if conditions:
        keys, key_params = _leaf_select(kind, _ordered(conn, kind, conditions))
        if limit is None:
            clauses.append(f"e.id IN ({keys})")
            params.extend(key_params)
        else:
            source = f"({keys}) k JOIN entities e ON e.id = k.id"
            params = [*key_params, *params]
    if with_files:
        columns += ", f.file, f.stamp"
        source += " JOIN files f INDEXED BY files_key ON f.kind = e.kind AND f.key = e.key"
    sql = f"SELECT {columns} FROM {source} WHERE {' AND '.join(clauses)}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return conn.execute(sql, params).fetchall()
