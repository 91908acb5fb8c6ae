"""Derived search index of the metadata cache (stdlib sqlite3), kept beside the JSON files.

The JSON files stay the source of truth; the index (`metadata/index.sqlite`) only selects
candidates, with a superset SQL filter, and the caller applies the full query to them.

Freshness. The index keeps, per file of a kind, a stamp (modification and change times in ns,
size, inode) and the digest of the bytes it indexed. Every query first lists the kind's folder
(`scandir` + one `lstat` per file) and compares the stamps: files that are new, changed (renamed
over, or edited in place) or gone are re-indexed, nothing else. A stamp is only trusted once its
file is older than `RACY_NS` when it is recorded: a file edited again within the same timestamp
tick could keep its stamp, so a recent stamp is stored as unknown and the next query reads the
file again (when its bytes still have the indexed digest, only its stamp is recorded). A
connection keeps the stamps it read while `PRAGMA data_version` says no other connection wrote.

Writes. Each metadata write indexes its document and digest in one transaction (its stamp left
unknown); a delete removes its rows in one transaction, and so does a query re-indexing files.
Candidates are read by one statement, fetched at once: readers see a whole write or none of it,
and hold no lock while the caller goes through them.

Never stalling. sqlite waits at most `READ_WAIT` for a lock when reading and `WRITE_WAIT` when
a write indexes its document (and not at all for `WRITE_BACKOFF` after a write found the index
busy). A write that finds the index busy leaves it as it is: the file's stamp then no longer
matches, so the next query re-indexes it. A query that finds the index busy answers from an
index of its own in memory, brought up to date from the files the same way. No WAL: caches live
on network filesystems.

Damage. An index file that is not sqlite or is corrupt is deleted (with its journal, under the
index lock, while it is still the file found corrupt) and built again on disk; an index of
another `INDEX_VERSION` is emptied and filled. A cache whose index cannot be written (read-only)
gets an index in memory per thread, and no file written.

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
costs about what the most selective condition costs. Each row keeps the digest of its file's
bytes, so that a reader who re-reads the file can tell it is unchanged and skip parsing it again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from .conditions import required_conditions
from .errors import MlcacheError
from .layout import CacheLayout
from .locks import entry_lock

_SCHEMA = (
    """CREATE TABLE entities (
        kind TEXT NOT NULL, key TEXT NOT NULL, exp_id TEXT, name TEXT, model_name TEXT, doc TEXT NOT NULL,
        digest BLOB, cached_at TEXT, stale INTEGER,
        PRIMARY KEY (kind, key)
    )""",
    "CREATE INDEX entities_exp ON entities (kind, exp_id)",
    "CREATE INDEX entities_name ON entities (kind, name)",
    "CREATE INDEX entities_model ON entities (kind, model_name)",
    """CREATE TABLE leaves (
        kind TEXT NOT NULL, key TEXT NOT NULL, path TEXT NOT NULL, value NOT NULL,
        PRIMARY KEY (kind, key, path, value)
    ) WITHOUT ROWID""",
    "CREATE INDEX leaves_value ON leaves (kind, path, value)",
    """CREATE TABLE files (
        kind TEXT NOT NULL, file TEXT NOT NULL, stamp BLOB, key TEXT, digest BLOB,
        PRIMARY KEY (kind, file)
    ) WITHOUT ROWID""",
    "CREATE INDEX files_key ON files (kind, key)",
)

INDEX_VERSION = 4
"""Bumped whenever the schema or what it holds changes; an index of another version is rebuilt."""

NESTED_KINDS = ("mv", "alias")
JOINS: dict[str, dict[str, str]] = {
    "run": {"exp.id": "exp_id"},
    "lm": {"exp.id": "exp_id"},
    "mv": {"model.name": "model_name", "run.id": "run_id"},
}
"""Per kind, the fields of embedded entities that its stored documents hold, under their stored name."""
EMBEDDED = ("exp", "model", "run")
"""Fields under which queries see other entities composed into a document; stored documents lack them."""
_COLUMNS = {"exp_id": "exp_id", "name": "name", "model_name": "model_name"}

READ_WAIT = 0.5
"""Seconds a query waits for a lock on the index before answering from an index in memory."""
WRITE_WAIT = 0.05
"""Seconds a metadata write waits for a lock on the index before leaving it to the next query."""
WRITE_BACKOFF = 1.0
"""Seconds after a write found the index busy during which writes do not wait for it at all."""
LOCK_WAIT = 1.0
"""Seconds to wait for the lock under which a corrupt index file is replaced."""
RACY_NS = 2_000_000_000
"""A file modified this recently (ns) when its stamp is taken may change again unseen: its stamp is not kept."""

_INT64 = 1 << 63
_UINT64 = (1 << 64) - 1
_STAMP = struct.Struct("<qqqQ")
_FIRST_CAP = 64
"""Capped counts that order the conditions start here and grow 4x until one falls under the cap."""
_OPS = {"$eq": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_CHUNK = 500
"""Parameters per statement when looking rows up by file name."""

_T = TypeVar("_T")
_FD_LISTING = os.scandir in os.supports_fd and os.open in os.supports_dir_fd
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)


def _key_text(key: tuple[str, ...]) -> str:
    return json.dumps(list(key))


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


def leaves(doc: Any, prefix: str = "") -> Iterator[tuple[str, str | int | float]]:
    """(dotted path, stored value) for every string or number of a document (`storable`); array
    elements are listed under the array's path, as MongoDB matches them."""
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(doc, list | tuple):
        for item in doc:
            yield from leaves(item, prefix)
    elif prefix and (value := storable(doc)) is not None and storable(prefix) is not None:
        yield prefix, value


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


def _select(conn: sqlite3.Connection, kind: str, flt: SqlFilter) -> list[tuple[Any, ...]]:
    """Rows (key, doc, digest, cached_at, stale) of the entities of `kind` that pass the filter."""
    clauses, params = ["kind = ?", *flt.clauses], [kind, *flt.params]
    conditions = _within_limit(conn, flt)
    if conditions:
        keys, key_params = _leaf_select(kind, _ordered(conn, kind, conditions))
        clauses.append(f"key IN ({keys})")
        params.extend(key_params)
    sql = f"SELECT key, doc, digest, cached_at, stale FROM entities WHERE {' AND '.join(clauses)}"
    return conn.execute(sql, params).fetchall()


class _Listing(NamedTuple):
    """The files of one kind as a query found them: name (relative, `/`-separated) -> stamp."""

    base: Path
    stamps: dict[str, bytes]
    racy: set[str]


def _list_files(base: Path, nested: bool) -> _Listing:
    """Stamps of the kind's document files (`<name>.json`, or `<folder>/<name>.json` when nested).
    Folders are listed through open descriptors where the OS allows it (one path lookup per
    folder, not per file); links to folders are not followed, as the store does not read through them."""
    since = time.time_ns() - RACY_NS
    stamps: dict[str, bytes] = {}
    racy: set[str] = set()
    pack = _STAMP.pack

    def visit(folder: int | str, prefix: str, depth: int) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if not name.isascii():
                    continue
                if depth:
                    if entry.is_dir(follow_symlinks=False):
                        try:
                            descend(folder, entry, f"{name}/")
                        except OSError as exc:
                            if not _gone(exc):
                                raise
                    continue
                if not name.endswith(".json") or name.startswith("index."):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                rel = prefix + name
                stamps[rel] = pack(info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino & _UINT64)
                if info.st_mtime_ns >= since or info.st_ctime_ns >= since:
                    racy.add(rel)

    def descend(folder: int | str, entry: os.DirEntry, prefix: str) -> None:
        if isinstance(folder, str):
            visit(entry.path, prefix, 0)
            return
        fd = os.open(entry.name, _DIR_FLAGS, dir_fd=folder)
        try:
            visit(fd, prefix, 0)
        finally:
            os.close(fd)

    depth = 1 if nested else 0
    try:
        if _FD_LISTING:
            fd = os.open(base, _DIR_FLAGS)
            try:
                visit(fd, "", depth)
            finally:
                os.close(fd)
        elif not base.is_symlink():
            visit(str(base), "", depth)
    except OSError as exc:
        if not _gone(exc):
            raise
    return _Listing(base, stamps, racy)


def _gone(exc: OSError) -> bool:
    """Whether listing a folder failed because it is not there (or is a link): no files, not an error."""
    return isinstance(exc, FileNotFoundError | NotADirectoryError) or exc.errno == errno.ELOOP


def _read_bytes(path: Path) -> bytes | None:
    """The bytes of a regular file (links not followed), None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        with open(fd, "rb", closefd=False) as handle:
            return handle.read()
    except OSError:
        return None
    finally:
        os.close(fd)


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (BEGIN IMMEDIATE), rolled back on any failure."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


class _Connection(sqlite3.Connection):
    """A connection that remembers, per kind, the stamps it last read and the `data_version` they
    were read at: while no other connection has committed, they need not be read again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stamps: dict[str, tuple[int, dict[str, bytes | None]]] = {}


def _connect(database: str | Path) -> _Connection:
    return sqlite3.connect(database, timeout=READ_WAIT, isolation_level=None, factory=_Connection)


def _prepare(conn: sqlite3.Connection) -> None:
    """Give an index of another version (or a new, empty file) the current schema, emptied."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == INDEX_VERSION:
        return
    with _transaction(conn):
        if conn.execute("PRAGMA user_version").fetchone()[0] == INDEX_VERSION:
            return
        tables = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        for (table,) in conn.execute(tables).fetchall():
            conn.execute(f'DROP TABLE "{table}"')
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {INDEX_VERSION}")


_BUSY, _CORRUPT, _UNWRITABLE = "busy", "corrupt", "unwritable"
_PROBLEMS = {5: _BUSY, 6: _BUSY, 15: _BUSY, 11: _CORRUPT, 26: _CORRUPT}
_PROBLEMS.update(dict.fromkeys((3, 8, 10, 13, 14, 22, 23), _UNWRITABLE))
_MESSAGES = {
    "database is locked": 5,
    "database table is locked": 6,
    "database disk image is malformed": 11,
    "file is not a database": 26,
    "attempt to write a readonly database": 8,
    "disk I/O error": 10,
    "database or disk is full": 13,
    "unable to open database file": 14,
}


def _problem(exc: sqlite3.Error) -> str | None:
    """What an sqlite error says about the index: busy, corrupt, unwritable, or None (a bug)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        code = next((c for message, c in _MESSAGES.items() if str(exc).startswith(message)), None)
    return None if code is None else _PROBLEMS.get(code & 0xFF)


def _entity_row(kind: str, key_text: str, entry: IndexEntry) -> tuple[Any, ...]:
    """The `entities` row of an entry: the ids of embedded entities as the composition reads them
    (`str`), the name when it is a string."""
    data = entry.data
    exp_id = str(data["exp_id"]) if "exp_id" in data else None
    name = data.get("name") if isinstance(data.get("name"), str) else None
    model_name = str(data["model_name"]) if "model_name" in data else None
    doc = json.dumps(data, sort_keys=True)
    return (kind, key_text, exp_id, name, model_name, doc, entry.digest, entry.cached_at, int(entry.stale))


class MetadataIndex:
    """The sqlite index of one cache dir's metadata. `scan(kind, paths)` reads the given files and
    yields each path with its entry, None for a file that is gone or not a valid document."""

    def __init__(
        self,
        layout: CacheLayout,
        scan: Callable[[str, list[Path]], Iterable[tuple[Path, IndexEntry | None]]],
    ) -> None:
        self.layout = layout
        self.path = layout.metadata / "index.sqlite"
        self._scan = scan
        self._local = threading.local()
        self._writes_wait_after = 0.0

    # ----------------------------------------------------------------- connections
    def _connection(self, wait: float) -> _Connection:
        """This thread's index, waiting at most `wait` seconds for locks: the file (schema
        checked), or the in-memory one it fell back to."""
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn, self._local.ready, self._local.inode = conn, False, None
            with contextlib.suppress(OSError):
                self._local.inode = os.stat(self.path).st_ino
        conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
        if not self._local.ready:
            conn.execute("PRAGMA synchronous=OFF")
            _prepare(conn)
            self._local.ready = True
        return conn

    def _use_memory(self) -> None:
        """An index of this thread alone, for caches whose index file cannot be written."""
        self.close()
        conn = _connect(":memory:")
        _prepare(conn)
        self._local.conn, self._local.ready, self._local.inode = conn, True, None

    def _spare(self) -> _Connection:
        """An in-memory index of this thread, answering while the index file is busy."""
        spare: _Connection | None = getattr(self._local, "spare", None)
        if spare is None:
            spare = _connect(":memory:")
            _prepare(spare)
            self._local.spare = spare
        return spare

    def close(self) -> None:
        """Close this thread's connections (the index file stays as it is)."""
        for name in ("conn", "spare"):
            conn = getattr(self._local, name, None)
            if conn is not None:
                conn.close()
                setattr(self._local, name, None)

    def _replace_corrupt(self) -> bool:
        """Delete the corrupt index file (and its journal) so that it is built again, under the
        index lock and only while it is still the file found corrupt; False when the cache
        cannot be written."""
        inode = getattr(self._local, "inode", None)
        self.close()
        try:
            with entry_lock(self.layout, "metadata", "index", timeout=LOCK_WAIT):
                try:
                    if os.stat(self.path).st_ino != inode:
                        return True
                except FileNotFoundError:
                    return True
                for suffix in ("-journal", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                self.path.unlink()
        except (OSError, MlcacheError):
            return False
        return True

    def _answer(self, kind: str, listing: _Listing, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """`work` on an index brought up to date with `listing`: the file when it can be used,
        else an index in memory (for a busy file this thread's spare, for an unwritable one this
        thread's index from then on)."""
        for _ in range(3):
            try:
                conn = self._connection(READ_WAIT)
                self._refresh(conn, kind, listing)
                result = work(conn)
            except sqlite3.Error as exc:
                problem = _problem(exc)
                if problem == _BUSY:
                    break
                if problem == _CORRUPT and self._replace_corrupt():
                    continue
                if problem is None:
                    raise
                self._use_memory()
                continue
            spare = getattr(self._local, "spare", None)
            if spare is not None:
                spare.close()
                self._local.spare = None
            return result
        spare = self._spare()
        self._refresh(spare, kind, listing)
        return work(spare)

    # ----------------------------------------------------------------- writes
    def _write(self, kind: str, work: Callable[[sqlite3.Connection], None]) -> None:
        """Best effort: `work` in one transaction, waiting briefly for the lock (not at all
        shortly after the index was found busy); on any failure the index stays as it was."""
        now = time.monotonic()
        try:
            conn = self._connection(0 if now < self._writes_wait_after else WRITE_WAIT)
            conn.stamps.pop(kind, None)
            with _transaction(conn):
                work(conn)
        except sqlite3.Error as exc:
            if _problem(exc) == _BUSY:
                self._writes_wait_after = now + WRITE_BACKOFF
            else:
                self.close()

    def upsert(self, kind: str, entry: IndexEntry, path: Path) -> None:
        """Index a document just written to `path`, in one transaction. Its stamp is left unknown,
        so the next query reads the file once and, finding the indexed digest, records the stamp."""
        try:
            name = path.relative_to(self.layout.metadata / kind).as_posix()
        except ValueError:
            return
        key_text = _key_text(entry.key)

        def work(conn: sqlite3.Connection) -> None:
            _forget(conn, kind, [name], [key_text])
            _remember(conn, kind, [(name, None, key_text, entry)])

        self._write(kind, work)

    def delete(self, kind: str, key: tuple[str, ...]) -> None:
        """Drop a deleted document's rows, in one transaction."""
        key_text = _key_text(key)
        self._write(kind, lambda conn: _forget(conn, kind, [], [key_text]))

    # ----------------------------------------------------------------- reads
    def _refresh(self, conn: _Connection, kind: str, listing: _Listing) -> None:
        """Re-index the files whose stamps differ from the listing's, and drop the rows of files
        that are gone, in one transaction."""
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
            raw = _read_bytes(listing.base / name) if digest is not None else None
            if raw is None or file_digest(raw) != digest:
                reread.append(name)
            elif self._kept(listing, name) != stored[name]:
                restamped.append(name)
        if not (removed or reread or restamped):
            return
        read = dict(self._scan(kind, [listing.base / name for name in reread]))
        rows = [
            (name, self._kept(listing, name), None if entry is None else _key_text(entry.key), entry)
            for name in reread
            for entry in (read.get(listing.base / name),)
        ]
        old_keys = [key for name in removed + reread if (key := known.get(name, (None, None))[0]) is not None]
        conn.stamps.pop(kind, None)
        with _transaction(conn):
            _forget(conn, kind, removed + reread, old_keys + [key for _, _, key, _ in rows if key is not None])
            _remember(conn, kind, rows)
            conn.executemany(
                "UPDATE files SET stamp = ? WHERE kind = ? AND file = ?",
                [(self._kept(listing, name), kind, name) for name in restamped],
            )
        conn.stamps[kind] = (version, {name: self._kept(listing, name) for name in stamps})

    @staticmethod
    def _kept(listing: _Listing, name: str) -> bytes | None:
        """The stamp to record for a file: None while it is too recent to be trusted."""
        return None if name in listing.racy else listing.stamps[name]

    def ensure_fresh(self, kind: str) -> sqlite3.Connection:
        """An index whose rows of `kind` are up to date with the files (see `_answer`)."""
        listing = _list_files(self.layout.metadata / kind, kind in NESTED_KINDS)
        return self._answer(kind, listing, lambda conn: conn)

    def candidates(self, kind: str, flt: SqlFilter) -> Iterator[IndexEntry]:
        """Every entity of `kind` whose file is there and that passes the SQL filter."""
        listing = _list_files(self.layout.metadata / kind, kind in NESTED_KINDS)
        if not listing.stamps:
            return
        for key_text, doc, digest, cached_at, stale in self._answer(kind, listing, lambda c: _select(c, kind, flt)):
            yield IndexEntry(tuple(json.loads(key_text)), json.loads(doc), digest, cached_at, bool(stale))


def _forget(conn: sqlite3.Connection, kind: str, names: list[str], keys: list[str]) -> None:
    """Drop the rows of these files and of these keys."""
    conn.executemany("DELETE FROM files WHERE kind = ? AND file = ?", [(kind, name) for name in names])
    for table in ("entities", "leaves", "files"):
        conn.executemany(f"DELETE FROM {table} WHERE kind = ? AND key = ?", [(kind, key) for key in keys])


def _remember(
    conn: sqlite3.Connection, kind: str, rows: list[tuple[str, bytes | None, str | None, IndexEntry | None]]
) -> None:
    """Record files (name, stamp, key text, entry), with the entity and leaves of each valid one."""
    conn.executemany(
        "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
        [(kind, name, stamp, key, None if entry is None else entry.digest) for name, stamp, key, entry in rows],
    )
    entities = [(key, entry) for _, _, key, entry in rows if key is not None and entry is not None]
    conn.executemany(
        "INSERT OR REPLACE INTO entities VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [_entity_row(kind, key, entry) for key, entry in entities],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO leaves VALUES (?, ?, ?, ?)",
        [(kind, key, path, value) for key, entry in entities for path, value in leaves(entry.data)],
    )
