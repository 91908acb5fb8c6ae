"""Derived search index of the metadata cache (stdlib sqlite3), kept beside the JSON files.

The JSON files stay the source of truth. Each metadata write upserts its row; an index that is
missing, corrupt or stale (a folder changed behind its back: a crash between file and index, a
bundle copied in) is rebuilt from the files. Staleness is read from folder modification times, so
checking it costs a few `stat` calls, not one per entity. A read-only cache gets an in-memory index.
Queries select candidates with a superset SQL filter; the caller applies the full query.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .layout import CacheLayout
from .pushdown import is_number, required_conditions

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    kind TEXT NOT NULL, key TEXT NOT NULL, exp_id TEXT, name TEXT, doc TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS entities_exp ON entities (kind, exp_id);
CREATE INDEX IF NOT EXISTS entities_name ON entities (kind, name);
CREATE TABLE IF NOT EXISTS leaves (kind TEXT NOT NULL, key TEXT NOT NULL, path TEXT NOT NULL, value);
CREATE INDEX IF NOT EXISTS leaves_value ON leaves (kind, path, value);
CREATE INDEX IF NOT EXISTS leaves_key ON leaves (kind, key);
CREATE TABLE IF NOT EXISTS signatures (kind TEXT PRIMARY KEY, signature TEXT NOT NULL);
"""

INDEX_VERSION = 2
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


def sql_filter(query: Mapping[str, Any], field_map: Mapping[str, str], kind: str) -> tuple[list[str], list[Any]]:
    """A superset SQL filter on stored records for the conditions every match must meet.
    `field_map` renames query fields to record fields (`exp.id` -> `exp_id`)."""
    clauses: list[str] = []
    params: list[Any] = []
    leaf_selects: list[str] = []
    leaf_params: list[Any] = []
    ops = {"$eq": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
    for field, op, arg in required_conditions(query):
        field = field_map.get(field, field)
        if field.endswith("_time") or field.startswith("exp.") or field.startswith("model."):
            continue
        if field in _COLUMNS and op in ("$eq", "$in"):
            column = _COLUMNS[field]
            values = [arg] if op == "$eq" else arg
            if isinstance(values, list | tuple) and values and all(isinstance(v, str) for v in values):
                clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)
            continue
        values = [arg] if op in ops else arg if op == "$in" else None
        if not values or not isinstance(values, list | tuple):
            continue
        if not all(isinstance(v, str) or is_number(v) for v in values):
            continue
        sql_op = ops.get(op, "IN")
        placeholder = "?" if op in ops else f"({', '.join('?' * len(values))})"
        leaf_selects.append(f"SELECT key FROM leaves WHERE kind = ? AND path = ? AND value {sql_op} {placeholder}")
        leaf_params.extend([kind, field, *values])
    if leaf_selects:
        clauses.append(f"key IN ({' INTERSECT '.join(leaf_selects)})")
        params.extend(leaf_params)
    return clauses, params


class MetadataIndex:
    """The sqlite index of one cache dir's metadata."""

    def __init__(self, layout: CacheLayout, scan: Callable[[str], Iterator[tuple[tuple[str, ...], dict]]]) -> None:
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
    def upsert(self, kind: str, key: tuple[str, ...], data: dict[str, Any]) -> None:
        """Index one written document (best effort: a failure only makes the index stale)."""
        try:
            conn = self._connect()
            fresh_before = self._stored(conn, kind) is not None
            key_text = _key_text(key)
            conn.execute("DELETE FROM leaves WHERE kind = ? AND key = ?", (kind, key_text))
            conn.executemany(
                "INSERT INTO leaves VALUES (?, ?, ?, ?)", [(kind, key_text, p, v) for p, v in leaves(data)]
            )
            conn.execute(
                "INSERT OR REPLACE INTO entities (kind, key, exp_id, name, doc) VALUES (?, ?, ?, ?, ?)",
                (
                    kind,
                    _key_text(key),
                    data.get("exp_id"),
                    data.get("name") or data.get("model_name"),
                    json.dumps(data, ensure_ascii=False),
                ),
            )
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
        rows = [
            (
                kind,
                _key_text(key),
                data.get("exp_id"),
                data.get("name") or data.get("model_name"),
                json.dumps(data, ensure_ascii=False),
            )
            for key, data in self._scan(kind)
        ]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM entities WHERE kind = ?", (kind,))
            conn.execute("DELETE FROM leaves WHERE kind = ?", (kind,))
            conn.executemany("INSERT OR REPLACE INTO entities VALUES (?, ?, ?, ?, ?)", rows)
            conn.executemany(
                "INSERT INTO leaves VALUES (?, ?, ?, ?)",
                [(kind, row[1], path, value) for row in rows for path, value in leaves(json.loads(row[4]))],
            )
            conn.execute("INSERT OR REPLACE INTO signatures VALUES (?, ?)", (kind, signature))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return conn

    def candidates(self, kind: str, clauses: list[str], params: list[Any]) -> Iterator[tuple[tuple[str, ...], dict]]:
        """(key, record) of every indexed entity of `kind` that passes the SQL filter."""
        conn = self.ensure_fresh(kind)
        where = " AND ".join(["kind = ?", *clauses])
        for key_text, doc in conn.execute(f"SELECT key, doc FROM entities WHERE {where}", [kind, *params]):
            yield tuple(json.loads(key_text)), json.loads(doc)
