"""Keeping the index's rows in step with the metadata files: an entry as its rows, and the
files of a kind re-indexed when their stamps changed.

Freshness. The index keeps, per file of a kind, a stamp (modification and change times in ns,
size, inode) and the digest of the bytes it indexed. Every query lists the kind's folder
(`scandir` + one `lstat` per file) before it gives more than its first few candidates, and
compares the stamps: files that are new, changed (renamed over, or edited in place) or gone are
re-indexed, nothing else. A stamp is only trusted once its
file is older than `RACY_NS` when it is recorded: a file edited again within the same timestamp
tick could keep its stamp, so a recent stamp is stored as unknown and the next query reads the
file again (when its bytes still have the indexed digest, only its stamp is recorded). A
connection keeps the stamps it read while `PRAGMA data_version` says no other connection wrote.
Each row keeps the digest of its file's bytes, so that a reader who re-reads the file can tell it
is unchanged and skip parsing it again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .index_db import Connection, transaction
from .index_scan import Listing, read_bytes
from .index_sql import leaves

_CHUNK = 500
"""Parameters per statement when looking rows up by file name."""


def key_as_text(key: tuple[str, ...]) -> str:
    """An entity key as the index stores it (`key` columns)."""
    return json.dumps(list(key))


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


def refresh(
    conn: Connection,
    kind: str,
    listing: Listing,
    scan: Callable[[str, list[Path]], Iterable[tuple[Path, IndexEntry | None]]],
) -> None:
    """Re-index the files whose stamps differ from the listing's (reading them with `scan`), and
    drop the rows of files that are gone, in one transaction."""
    version = conn.execute("PRAGMA data_version").fetchone()[0]
    cached = conn.stamps.get(kind)
    if cached is not None and cached[0] == version:
        stored = cached[1]
    else:
        stored = dict(conn.execute("SELECT file, stamp FROM files WHERE kind = ?", (kind,)).fetchall())
        conn.stamps[kind] = (version, stored)
    stamps = listing.stamps
    if stored == stamps:
        return
    changed = [name for name, stamp in stamps.items() if stored.get(name) != stamp]
    removed = [name for name in stored if name not in stamps]
    known: dict[str, tuple[str | None, bytes | None]] = {}
    for chunk in _chunks([name for name in changed if name in stored] + removed):
        sql = f"SELECT file, key, digest FROM files WHERE kind = ? AND file IN ({', '.join('?' * len(chunk))})"
        known.update((name, (key, digest)) for name, key, digest in conn.execute(sql, [kind, *chunk]))
    restamped, reread = [], []
    for name in changed:
        _, digest = known.get(name, (None, None))
        raw = read_bytes(listing.base / name) if digest is not None else None
        if raw is None or file_digest(raw) != digest:
            reread.append(name)
        elif _kept(listing, name) != stored[name]:
            restamped.append(name)
    if not (removed or reread or restamped):
        return
    read = dict(scan(kind, [listing.base / name for name in reread]))
    rows = [
        (name, _kept(listing, name), None if entry is None else key_as_text(entry.key), entry)
        for name in reread
        for entry in (read.get(listing.base / name),)
    ]
    old_keys = [key for name in removed + reread if (key := known.get(name, (None, None))[0]) is not None]
    conn.stamps.pop(kind, None)
    with transaction(conn):
        forget(conn, kind, removed + reread, old_keys + [key for _, _, key, _ in rows if key is not None])
        remember(conn, kind, rows)
        conn.executemany(
            "UPDATE files SET stamp = ? WHERE kind = ? AND file = ?",
            [(_kept(listing, name), kind, name) for name in restamped],
        )
    conn.stamps[kind] = (version, {name: _kept(listing, name) for name in stamps})


def _kept(listing: Listing, name: str) -> bytes | None:
    """The stamp to record for a file: None while it is too recent to be trusted."""
    return None if name in listing.racy else listing.stamps[name]


def _entity_row(entity_id: int, kind: str, key_text: str, entry: IndexEntry, exact: bool) -> tuple[Any, ...]:
    """The `entities` row of an entry: the ids of embedded entities as the composition reads them
    (`str`), the name when it is a string."""
    data = entry.data
    exp_id = str(data["exp_id"]) if "exp_id" in data else None
    name = data.get("name") if isinstance(data.get("name"), str) else None
    model_name = str(data["model_name"]) if "model_name" in data else None
    doc = doc_text(data, exact)
    return (entity_id, kind, key_text, exp_id, name, model_name, doc, entry.digest, entry.cached_at, int(entry.stale))


STDLIB_MARK = " "
"""Leads the text of a document that only the standard JSON parser reads as written."""


def doc_text(data: Any, exact: bool) -> str:
    """A document as the index stores it: JSON; when it holds NaN, an infinity or an integer past
    64 bits (`exact` false: orjson would refuse or round them), the standard writer's, marked with
    `STDLIB_MARK`."""
    if exact:
        try:
            return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError:
            pass
    return STDLIB_MARK + json.dumps(data, sort_keys=True)


def forget(conn: sqlite3.Connection, kind: str, names: list[str], keys: list[str]) -> None:
    """Drop the rows of these files and of these keys."""
    conn.executemany("DELETE FROM files WHERE kind = ? AND file = ?", [(kind, name) for name in names])
    pairs = [(kind, key) for key in keys]
    conn.executemany("DELETE FROM leaves WHERE id = (SELECT id FROM entities WHERE kind = ? AND key = ?)", pairs)
    conn.executemany("DELETE FROM entities WHERE kind = ? AND key = ?", pairs)
    conn.executemany("DELETE FROM files WHERE kind = ? AND key = ?", pairs)


def remember(
    conn: sqlite3.Connection, kind: str, rows: list[tuple[str, bytes | None, str | None, IndexEntry | None]]
) -> None:
    """Record files (name, stamp, key text, entry), with the entity and leaves of each valid one;
    the keys' earlier rows must be gone (`forget`). Of two files with one key, the last is indexed."""
    conn.executemany(
        "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
        [(kind, name, stamp, key, None if entry is None else entry.digest) for name, stamp, key, entry in rows],
    )
    entries = {key: entry for _, _, key, entry in rows if key is not None and entry is not None}
    next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM entities").fetchone()[0]
    entity_rows: list[tuple[Any, ...]] = []
    leaf_rows: list[tuple[int, str, str, str | int | float]] = []
    for entity_id, (key, entry) in enumerate(entries.items(), start=next_id):
        found, exact = leaves(entry.data)
        entity_rows.append(_entity_row(entity_id, kind, key, entry, exact))
        leaf_rows.extend((entity_id, kind, path, value) for path, value in found)
    leaf_rows.sort(key=lambda row: (row[0], row[2]))
    conn.executemany("INSERT INTO entities VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", entity_rows)
    conn.executemany("INSERT OR IGNORE INTO leaves VALUES (?, ?, ?, ?)", leaf_rows)


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
