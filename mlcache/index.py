"""Derived search index of the metadata cache (stdlib sqlite3), kept beside the JSON files.

The JSON files stay the source of truth; the index (`metadata/index.sqlite`) only selects
candidates, with a superset SQL filter (`index_sql`), and the caller applies the full query to
them. A query gives its first few candidates straight from the index, each only while its file
still has the stamp it was indexed with (one `lstat`), so that first results need not wait for a
listing of the folder; it then brings the rows of its kind up to date with the files
(`index_refresh`) and gives the candidates it has not given yet.

Writes. Each metadata write indexes its documents and digests in one transaction (their stamps
left unknown); a delete removes its rows in one transaction, and so does a query re-indexing files.
Candidates are read by statements fetched at once: readers see a whole write or none of it, and
hold no lock while the caller goes through them.

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
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .errors import MlcacheError
from .index_db import INDEX_VERSION as INDEX_VERSION
from .index_db import Connection, prepare, transaction
from .index_refresh import STDLIB_MARK, IndexEntry, forget, key_as_text, refresh, remember
from .index_refresh import file_digest as file_digest
from .index_scan import DIR_FLAGS as _DIR_FLAGS
from .index_scan import Listing, is_document_name, list_files, stamp_of
from .index_sql import SqlFilter, select
from .layout import CacheLayout
from .locks import entry_lock

NESTED_KINDS = ("mv", "alias")

READ_WAIT = 0.5
"""Seconds a query waits for a lock on the index before answering from an index in memory."""
WRITE_WAIT = 0.05
"""Seconds a metadata write waits for a lock on the index before leaving it to the next query."""
WRITE_BACKOFF = 1.0
"""Seconds after a write found the index busy during which writes do not wait for it at all."""
LOCK_WAIT = 1.0
"""Seconds to wait for the lock under which a corrupt index file is replaced."""
FIRST_ROWS = 16
"""Candidates a query selects on their own first, so that its first results need not wait for the rest."""
RACY_NS = 2_000_000_000
"""A file modified this recently (ns) when its stamp is taken may change again unseen: its stamp is not kept."""

PAGE_CACHE_KIB = 32768
"""sqlite's page cache per connection: a write-through of thousands of runs updates two b-trees
of leaves, which thrash the default 2 MiB."""

_T = TypeVar("_T")


def _connect(database: str | Path) -> Connection:
    return sqlite3.connect(database, timeout=READ_WAIT, isolation_level=None, factory=Connection)


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
    def _connection(self, wait: float) -> Connection:
        """This thread's index, waiting at most `wait` seconds for locks: the file (schema
        checked), or the in-memory one it fell back to."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn, self._local.ready, self._local.inode = conn, False, None
            with contextlib.suppress(OSError):
                self._local.inode = os.stat(self.path).st_ino
        conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
        if not self._local.ready:
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
            prepare(conn)
            self._local.ready = True
        return conn

    def _use_memory(self) -> None:
        """An index of this thread alone, for caches whose index file cannot be written."""
        self.close()
        conn = _connect(":memory:")
        prepare(conn)
        self._local.conn, self._local.ready, self._local.inode = conn, True, None

    def _spare(self) -> Connection:
        """An in-memory index of this thread, answering while the index file is busy."""
        spare: Connection | None = getattr(self._local, "spare", None)
        if spare is None:
            spare = _connect(":memory:")
            prepare(spare)
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

    def _answer(self, kind: str, listing: Listing, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """`work` on an index brought up to date with `listing`: the file when it can be used,
        else an index in memory (for a busy file this thread's spare, for an unwritable one this
        thread's index from then on)."""
        for _ in range(3):
            try:
                conn = self._connection(READ_WAIT)
                refresh(conn, kind, listing, self._scan)
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
        refresh(spare, kind, listing, self._scan)
        return work(spare)

    # ----------------------------------------------------------------- writes
    def _write(self, kind: str, work: Callable[[sqlite3.Connection], None]) -> None:
        """Best effort: `work` in one transaction, waiting briefly for the lock (not at all
        shortly after the index was found busy); on any failure the index stays as it was."""
        now = time.monotonic()
        try:
            conn = self._connection(0 if now < self._writes_wait_after else WRITE_WAIT)
            conn.stamps.pop(kind, None)
            with transaction(conn):
                work(conn)
        except sqlite3.Error as exc:
            if _problem(exc) == _BUSY:
                self._writes_wait_after = now + WRITE_BACKOFF
            else:
                self.close()

    def upsert(self, kind: str, entries: list[tuple[IndexEntry, Path]]) -> None:
        """Index documents just written (each with its file), in one transaction. Their stamps are
        left unknown, so the next query reads each file once and, finding the indexed digest,
        records its stamp."""
        base = self.layout.metadata / kind
        rows: list[tuple[str, bytes | None, str | None, IndexEntry | None]] = []
        for entry, path in entries:
            try:
                name = path.relative_to(base).as_posix()
            except ValueError:
                continue
            rows.append((name, None, key_as_text(entry.key), entry))
        if not rows:
            return

        def work(conn: sqlite3.Connection) -> None:
            forget(conn, kind, [row[0] for row in rows], [str(row[2]) for row in rows])
            remember(conn, kind, rows)

        self._write(kind, work)

    def delete(self, kind: str, key: tuple[str, ...]) -> None:
        """Drop a deleted document's rows, in one transaction."""
        key_text = key_as_text(key)
        self._write(kind, lambda conn: forget(conn, kind, [], [key_text]))

    # ----------------------------------------------------------------- reads
    def ensure_fresh(self, kind: str) -> sqlite3.Connection:
        """An index whose rows of `kind` are up to date with the files (see `_answer`)."""
        listing = list_files(self.layout.metadata / kind, kind in NESTED_KINDS, RACY_NS)
        return self._answer(kind, listing, lambda conn: conn)

    def candidates(self, kind: str, flt: SqlFilter) -> Iterator[IndexEntry]:
        """Every entity of `kind` whose file is there and that passes the SQL filter, each once.

        The first few come straight from the index, each once its file is seen to still have the
        stamp it was indexed with (`_unchanged_first`), without waiting for the folder's listing;
        then the folder is listed, the index brought up to date, and the candidates not given yet
        follow."""
        given: set[str] = set()
        yield from self._unchanged_first(kind, flt, given)
        listing = list_files(self.layout.metadata / kind, kind in NESTED_KINDS, RACY_NS)
        if not listing.stamps:
            return
        for key_text, doc, digest, cached_at, stale in self._answer(kind, listing, lambda c: select(c, kind, flt)):
            if key_text not in given:
                yield _entry(key_text, doc, digest, cached_at, stale)

    def _unchanged_first(self, kind: str, flt: SqlFilter, given: set[str]) -> Iterator[IndexEntry]:
        """Up to `FIRST_ROWS` candidates whose files still have their indexed stamps, their key
        texts added to `given`; none when the index cannot be read at once. Flat kinds only: one
        `lstat` per row, in the kind's folder opened without following links."""
        if kind in NESTED_KINDS:
            return
        try:
            folder = os.open(self.layout.metadata / kind, _DIR_FLAGS)
        except OSError:
            return
        try:
            rows = select(self._connection(WRITE_WAIT), kind, flt, with_files=True, limit=FIRST_ROWS)
            unchanged = [row for row in rows if row[6] is not None and _stamp_at(folder, row[5]) == row[6]]
        except sqlite3.Error:
            return
        finally:
            os.close(folder)
        for key_text, doc, digest, cached_at, stale, _, _ in unchanged:
            if key_text not in given:
                given.add(key_text)
                yield _entry(key_text, doc, digest, cached_at, stale)


def _entry(key_text: str, doc: str, digest: bytes | None, cached_at: str | None, stale: int) -> IndexEntry:
    return IndexEntry(tuple(_loads(key_text)), _loads(doc), digest, cached_at, bool(stale))


def _loads(text: str) -> Any:
    """JSON the index wrote: orjson for speed, the standard parser for documents marked as holding
    what orjson would refuse or round (`index_refresh.doc_text`)."""
    if not text.startswith(STDLIB_MARK):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def _stamp_at(folder: int, name: str) -> bytes | None:
    """The stamp of the file `name` in the open folder (as `list_files` takes it), None when it
    is not a document's plain name there (as `list_files` lists them) or cannot be stat'ed."""
    if "/" in name or "\x00" in name or not is_document_name(name):
        return None
    try:
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except OSError:
        return None
    return stamp_of(info)
