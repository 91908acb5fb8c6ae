"""The index's sqlite database: its schema and version, write transactions, and connections
that remember the stamps they last read."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

_SCHEMA = (
    """CREATE TABLE entities (
        id INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL, exp_id TEXT, name TEXT, model_name TEXT,
        doc TEXT NOT NULL, digest BLOB, cached_at TEXT, stale INTEGER,
        UNIQUE (kind, key)
    )""",
    "CREATE INDEX entities_exp ON entities (kind, exp_id)",
    "CREATE INDEX entities_name ON entities (kind, name)",
    "CREATE INDEX entities_model ON entities (kind, model_name)",
    """CREATE TABLE leaves (
        id INTEGER NOT NULL, kind TEXT NOT NULL, path TEXT NOT NULL, value NOT NULL,
        PRIMARY KEY (id, path, value)
    ) WITHOUT ROWID""",
    "CREATE INDEX leaves_value ON leaves (kind, path, value)",
    """CREATE TABLE files (
        kind TEXT NOT NULL, file TEXT NOT NULL, stamp BLOB, key TEXT, digest BLOB,
        PRIMARY KEY (kind, file)
    ) WITHOUT ROWID""",
    "CREATE INDEX files_key ON files (kind, key)",
)
"""Leaves name their entity by its integer `id`, not its key text: short rows make the bulk
inserts of a write-through cheaper, and a probe per candidate is a lookup in the primary key."""

INDEX_VERSION = 6
"""Bumped whenever the schema or what it holds changes; an index of another version is rebuilt."""


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (BEGIN IMMEDIATE), rolled back on any failure."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


class Connection(sqlite3.Connection):
    """A connection that remembers, per kind, the stamps it last read and the `data_version` they
    were read at: while no other connection has committed, they need not be read again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stamps: dict[str, tuple[int, dict[str, bytes | None]]] = {}


def prepare(conn: sqlite3.Connection) -> None:
    """Give an index of another version (or a new, empty file) the current schema, emptied."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == INDEX_VERSION:
        return
    with transaction(conn):
        if conn.execute("PRAGMA user_version").fetchone()[0] == INDEX_VERSION:
            return
        tables = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        for (table,) in conn.execute(tables).fetchall():
            conn.execute(f'DROP TABLE "{table}"')
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {INDEX_VERSION}")
