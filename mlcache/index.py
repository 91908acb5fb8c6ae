"""Derived search index of the metadata cache (stdlib sqlite3), kept beside the JSON files.

The JSON files stay the source of truth. Each metadata write upserts its row; an index that is
missing, corrupt or stale (a folder changed behind its back: a crash between file and index, a
bundle copied in) is rebuilt from the files. Staleness is read from folder modification times, so
checking it costs a few `stat` calls, not one per entity. A read-only cache gets an in-memory index.
Queries select candidates with a superset SQL filter; the caller applies the full query. The
conditions on leaf values are ordered by a capped count of their matching leaves: the most
selective one is read, the others are probed per key, so the candidate step costs about what the
most selective condition costs. Each row keeps a digest of its file's bytes, so that a reader who
re-reads the file (the source of truth) can tell it is unchanged and skip parsing it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .layout import CacheLayout
from .pushdown import is_number, required_conditions

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    kind TEXT NOT NULL, key TEXT NOT NULL, exp_id TEXT, name TEXT, doc TEXT NOT NULL,
    digest BLOB, cached_at TEXT, stale INTEGER,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS entities_exp ON entities (kind, exp_id);
CREATE INDEX IF NOT EXISTS entities_name ON entities (kind, name);
CREATE TABLE IF NOT EXISTS leaves (
    kind TEXT NOT NULL, key TEXT NOT NULL, path TEXT NOT NULL, value NOT NULL,
    PRIMARY KEY (kind, key, path, value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leaves_value ON leaves (kind, path, value);
CREATE TABLE IF NOT EXISTS signatures (kind TEXT PRIMARY KEY, signature TEXT NOT NULL);
"""

INDEX_VERSION = 3
"""Bumped whenever the schema or what it holds changes; an index of another version is rebuilt."""

_COLUMNS = {"exp_id": "exp_id", "name": "name", "model_name": "name"}
NESTED_KINDS = ("mv", "alias")


def _key_text(key: tuple[str, ...]) -> str:
    return json.dumps(list(key), ensure_ascii=False)


def leaves(doc: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, scalar) for every string or number of a document; array elements are listed
    under the array's path, as MongoDB matches them."""
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(doc, list | tuple):
        for item in doc:
            yield from leaves(item, prefix)
    elif prefix and (isinstance(doc, str) or is_number(doc)):
        yield prefix, doc


_OPS = {"$eq": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_FIRST_CAP = 64
"""Capped counts that order the conditions start here and grow 4x until one falls under the cap."""


@dataclass(frozen=True)
class LeafCondition:
    """A condition every match meets: some leaf at `path` has `value <op> <values>` (op `IN`: any)."""

    path: str
    op: str
    values: tuple[Any, ...]

    def where(self, alias: str, kind: str) -> tuple[str, list[Any]]:
        """The condition on rows of `leaves` named `alias`, with its parameters."""
        placeholder = f"({', '.join('?' * len(self.values))})" if self.op == "IN" else "?"
        sql = f"{alias}.kind = ? AND {alias}.path = ? AND {alias}.value {self.op} {placeholder}"
        return sql, [kind, self.path, *self.values]


@dataclass
class SqlFilter:
    """A superset filter: `clauses` on the entity columns and `conditions` on the leaf values."""

    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    conditions: list[LeafCondition] = field(default_factory=list)


class IndexEntry(NamedTuple):
    """One indexed entity: its key, its document and what identifies the file it was read from."""

    key: tuple[str, ...]
    data: dict[str, Any]
    digest: bytes | None
    cached_at: str | None
    stale: bool


def file_digest(raw: bytes) -> bytes:
    """Digest of a metadata file's bytes, stored in the index to recognise an unchanged file."""
    return hashlib.blake2b(raw, digest_size=16).digest()


def sql_filter(query: Mapping[str, Any], field_map: Mapping[str, str]) -> SqlFilter:
    """A superset SQL filter on stored records for the conditions every match must meet.
    `field_map` renames query fields to record fields (`exp.id` -> `exp_id`)."""
    flt = SqlFilter()
    for field_name, op, arg in required_conditions(query):
        name = field_map.get(field_name, field_name)
        if name.endswith("_time") or name.startswith("exp.") or name.startswith("model."):
            continue
        if name in _COLUMNS and op in ("$eq", "$in"):
            values = [arg] if op == "$eq" else arg
            if isinstance(values, list | tuple) and values and all(isinstance(v, str) for v in values):
                flt.clauses.append(f"{_COLUMNS[name]} IN ({', '.join('?' * len(values))})")
                flt.params.extend(values)
            continue
        values = [arg] if op in _OPS else arg if op == "$in" else None
        if not values or not isinstance(values, list | tuple):
            continue
        if all(isinstance(v, str) or is_number(v) for v in values):
            flt.conditions.append(LeafCondition(name, _OPS.get(op, "IN"), tuple(values)))
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
    """Keys meeting every condition: read the first condition's leaves, probe the others per key
    through the (kind, key, path, value) primary key."""
    driver, *probes = conditions
    where, params = driver.where("d", kind)
    parts = [f"SELECT d.key FROM leaves d WHERE {where}"]
    for i, probe in enumerate(probes):
        probe_where, probe_params = probe.where(f"p{i}", kind)
        parts.append(f"AND EXISTS (SELECT 1 FROM leaves p{i} WHERE {probe_where} AND p{i}.key = d.key)")
        params.extend(probe_params)
    return " ".join(parts), params


def _row(kind: str, entry: IndexEntry) -> tuple[Any, ...]:
    """The `entities` row of an entry; the document is stored with sorted keys, as in its file."""
    data = entry.data
    return (
        kind,
        _key_text(entry.key),
        data.get("exp_id"),
        data.get("name") or data.get("model_name"),
        json.dumps(data, ensure_ascii=False, sort_keys=True),
        entry.digest,
        entry.cached_at,
        int(entry.stale),
    )


def _leaf_rows(kind: str, key_text: str, data: dict[str, Any]) -> list[tuple[str, str, str, Any]]:
    return [(kind, key_text, path, value) for path, value in leaves(data)]


class MetadataIndex:
    """The sqlite index of one cache dir's metadata."""

    def __init__(self, layout: CacheLayout, scan: Callable[[str], Iterator[IndexEntry]]) -> None:
        self.layout = layout
        self.path = layout.metadata / "index.sqlite"
        self._scan = scan
        self._local = threading.local()

    # ----------------------------------------------------------------- connection
    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            self.layout.metadata.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA synchronous=OFF")
            if conn.execute("PRAGMA user_version").fetchone()[0] != INDEX_VERSION:
                conn.executescript(
                    "DROP TABLE IF EXISTS entities; DROP TABLE IF EXISTS leaves; DROP TABLE IF EXISTS signatures;"
                )
                conn.execute(f"PRAGMA user_version = {INDEX_VERSION}")
            conn.executescript(_SCHEMA)
            self._local.conn = conn
        except (sqlite3.DatabaseError, OSError):
            self._use_memory()
        return self._local.conn  # type: ignore[no-any-return]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _signature(self, kind: str) -> str:
        """Modification times of the kind's folders: they change with every file renamed in or out.
        Flat kinds need one `stat`; nested ones (`mv`, `alias`) one per model folder."""
        base = self.layout.metadata / kind
        try:
            stamps = [f"{base.stat().st_mtime_ns}"]
            if kind in NESTED_KINDS:
                with os.scandir(base) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            stamps.append(f"{entry.name}:{entry.stat(follow_symlinks=False).st_mtime_ns}")
        except FileNotFoundError:
            return "absent"
        return "|".join(sorted(stamps))

    # ----------------------------------------------------------------- writes
    def upsert(self, kind: str, entry: IndexEntry) -> None:
        """Index one written document (best effort: a failure only makes the index stale)."""
        try:
            conn = self._connect()
            fresh_before = self._stored(conn, kind) is not None
            row = _row(kind, entry)
            conn.execute("DELETE FROM leaves WHERE kind = ? AND key = ?", (kind, row[1]))
            conn.executemany("INSERT OR IGNORE INTO leaves VALUES (?, ?, ?, ?)", _leaf_rows(kind, row[1], entry.data))
            conn.execute("INSERT OR REPLACE INTO entities VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            if fresh_before:
                conn.execute("INSERT OR REPLACE INTO signatures VALUES (?, ?)", (kind, self._signature(kind)))
        except sqlite3.DatabaseError:
            self._drop()

    def delete(self, kind: str, key: tuple[str, ...]) -> None:
        try:
            conn = self._connect()
            conn.execute("DELETE FROM entities WHERE kind = ? AND key = ?", (kind, _key_text(key)))
            conn.execute("DELETE FROM leaves WHERE kind = ? AND key = ?", (kind, _key_text(key)))
        except sqlite3.DatabaseError:
            self._drop()

    def _stored(self, conn: sqlite3.Connection, kind: str) -> str | None:
        row = conn.execute("SELECT signature FROM signatures WHERE kind = ?", (kind,)).fetchone()
        return row[0] if row else None

    def _drop(self) -> None:
        self.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    # ----------------------------------------------------------------- reads
    def ensure_fresh(self, kind: str) -> sqlite3.Connection:
        """The connection, after rebuilding the kind's rows if the files changed behind the index.
        A corrupt index file is deleted and built again."""
        try:
            return self._refresh(kind)
        except sqlite3.DatabaseError:
            self._drop()
        try:
            return self._refresh(kind)
        except sqlite3.DatabaseError:
            self._use_memory()
            return self._refresh(kind)

    def _use_memory(self) -> None:
        """An index of this process alone, for caches whose index file cannot be written."""
        self.close()
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.executescript(_SCHEMA)
        self._local.conn = conn

    def _refresh(self, kind: str) -> sqlite3.Connection:
        conn = self._connect()
        signature = self._signature(kind)
        if self._stored(conn, kind) == signature:
            return conn
        entries = [(_row(kind, entry), entry.data) for entry in self._scan(kind)]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM entities WHERE kind = ?", (kind,))
            conn.execute("DELETE FROM leaves WHERE kind = ?", (kind,))
            conn.executemany("INSERT OR REPLACE INTO entities VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [r for r, _ in entries])
            conn.executemany(
                "INSERT OR IGNORE INTO leaves VALUES (?, ?, ?, ?)",
                [leaf for row, data in entries for leaf in _leaf_rows(kind, row[1], data)],
            )
            conn.execute("INSERT OR REPLACE INTO signatures VALUES (?, ?)", (kind, signature))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return conn

    def candidates(self, kind: str, flt: SqlFilter) -> Iterator[IndexEntry]:
        """Every indexed entity of `kind` that passes the SQL filter."""
        conn = self.ensure_fresh(kind)
        clauses, params = ["kind = ?", *flt.clauses], [kind, *flt.params]
        if flt.conditions:
            keys, key_params = _leaf_select(kind, _ordered(conn, kind, flt.conditions))
            clauses.append(f"key IN ({keys})")
            params.extend(key_params)
        sql = f"SELECT key, doc, digest, cached_at, stale FROM entities WHERE {' AND '.join(clauses)}"
        for key_text, doc, digest, cached_at, stale in conn.execute(sql, params):
            yield IndexEntry(tuple(json.loads(key_text)), json.loads(doc), digest, cached_at, bool(stale))
