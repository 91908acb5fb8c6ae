"""Metadata store: one JSON file per entity under `metadata/<kind>/`, the cache's source of truth.

Writes go to unique temp files, are made durable, then renamed into place, so a reader sees the
old file or the new one and never a half-written one. They take no lock: of two writers of one
document, the last rename stands whole, and the index rows a write leaves unstamped (written beside
the files, for a page of them) are checked against the files by the next query. Reads take no lock
and write nothing, so read-only caches and bundles work.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .collector import collector_paused
from .errors import CacheFallbackWarning, CorruptMetadata
from .index import IndexEntry, MetadataIndex, file_digest
from .layout import (
    CacheLayout,
    FileIdentity,
    read_regular,
    read_regular_identified,
    regular_identity,
    write_atomic_many,
    writing,
)
from .names import UnsafePath, file_name
from .timeutil import utcnow

KINDS = ("exp", "run", "model", "mv", "alias", "lm")
KEY_LENGTH = {"exp": 1, "run": 1, "model": 1, "mv": 2, "alias": 2, "lm": 1}
_IDENTITY = {"exp": ("id",), "run": ("id",), "model": ("name",), "mv": ("model_name", "version"), "lm": ("id",)}
"""The document fields that repeat its key: when present they must agree with where it is stored."""
OVERLAP_FROM = 64
"""From how many documents a write indexes them while their files are being made durable: the index
rows it leaves are unstamped, so a file that did not land is found out by the next query."""
MEMO_LIMIT = 100_000
"""How many paths and parsed documents a store remembers before it starts over."""
CLOCK_SKEW = timedelta(seconds=5)
"""How far in the future a file's modification time may lie before its age counts as unknown."""


Document = tuple[str, tuple[str, ...], dict[str, Any]]
"""(kind, key, data) of one entity document to write."""

_read_once: ContextVar[dict[Path, Record | None] | None] = ContextVar("mlcache_read_once", default=None)


def stored_at(mtime_ns: int) -> datetime:
    """When the cache stored a file: its modification time, which the cache's own filesystem keeps
    (a date written inside a document is a claim, never used for freshness)."""
    return datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc)


def _parse_time(text: str | None) -> datetime:
    try:
        return datetime.fromisoformat(text) if text else stored_at(0)
    except ValueError:
        return stored_at(0)


@dataclass(frozen=True)
class Record:
    """One cached entity document; `cached_at` is when the cache stored it (its file's modification
    time), `stale` that a write to the server made it outdated."""

    kind: str
    key: tuple[str, ...]
    data: dict[str, Any]
    cached_at: datetime
    stale: bool
    path: Path


class MetadataStore:
    """Reads and writes entity documents of one cache dir."""

    def __init__(self, layout: CacheLayout, indexed: bool = True) -> None:
        """`indexed=False` for a store that is only written (an export target): its writes keep no
        search index, which its readers build when they need one."""
        self.layout = layout
        self.indexed = indexed
        self.index = MetadataIndex(layout, self._scan_for_index)
        self._paths: dict[tuple[str, tuple[str, ...]], Path] = {}
        self._seen: dict[Path, tuple[FileIdentity, Record]] = {}

    def _scan_for_index(self, kind: str, paths: list[Path]) -> Iterator[tuple[Path, IndexEntry | None]]:
        """Each of these files of a kind with its index entry; None for one that is gone or is not a
        valid document (warned), so the index records it and reads it again only once it changes."""
        for path in paths:
            entry = None
            try:
                read = read_regular(path)
                if read is not None:
                    record = self._parse(path, read[0], kind, None, read[1])
                    entry = IndexEntry(
                        record.key, record.data, file_digest(read[0]), record.cached_at.isoformat(), record.stale
                    )
            except CorruptMetadata as exc:
                warnings.warn(f"{exc}; skipped", CacheFallbackWarning, stacklevel=2)
            yield path, entry

    def path(self, kind: str, key: tuple[str, ...]) -> Path:
        """File of one entity: `metadata/<kind>/<part>/.../<last>.json`, each part one file name
        (`names.file_name`: percent-encoded, long ones under a digest); bad keys are `UnsafePath`."""
        try:
            return self._paths[(kind, key)]
        except (KeyError, TypeError):
            pass
        if kind not in KINDS:
            raise UnsafePath(f"unknown metadata kind {kind!r}")
        if not isinstance(key, tuple) or len(key) != KEY_LENGTH[kind]:
            raise UnsafePath(f"a {kind} key has {KEY_LENGTH[kind]} part(s), got {key!r}")
        *dirs, last = (file_name(part, f"{kind} key") for part in key)
        path = self.layout.metadata.joinpath(kind, *dirs, f"{last}.json")
        if len(self._paths) >= MEMO_LIMIT:
            self._paths.clear()
        self._paths[(kind, key)] = path
        return path

    def get(self, kind: str, key: tuple[str, ...], indexed: IndexEntry | None = None) -> Record | None:
        """The cached record, None when absent; `CorruptMetadata` naming the file when unreadable.
        A file this store parsed before and that has not changed since (same identity: mlcache
        replaces documents by rename) is not read again; else it is read, and when its bytes are
        those `indexed` was built from, the indexed document is returned instead of parsing them."""
        path = self.path(kind, key)
        memo = _read_once.get()
        if memo is not None and path in memo:
            return memo[path]
        self.layout.check_version()
        seen = self._seen.get(path)
        if seen is not None and seen[0] == regular_identity(path):
            return seen[1]
        read = read_regular_identified(path)
        if read is None:
            record = None
        else:
            raw, identity = read
            if indexed is not None and indexed.digest == file_digest(raw):
                record = Record(kind, key, indexed.data, stored_at(identity[3]), indexed.stale, path)
            else:
                record = self._parse(path, raw, kind, key, identity[3])
            if len(self._seen) >= MEMO_LIMIT:
                self._seen.clear()
            self._seen[path] = (identity, record)
        if memo is not None:
            memo[path] = record
        return record

    def indexed_record(self, kind: str, indexed: IndexEntry) -> Record:
        """The record of a document as the index, up to date with its file, holds it."""
        when = _parse_time(indexed.cached_at)
        return Record(kind, indexed.key, indexed.data, when, indexed.stale, self.path(kind, indexed.key))

    @contextmanager
    def reading_once(self) -> Iterator[None]:
        """Within this block (this thread), each document is read at most once: an export composes
        the same experiment, model and run many times over."""
        token = _read_once.set({})
        try:
            yield
        finally:
            _read_once.reset(token)

    def put(self, kind: str, key: tuple[str, ...], data: dict[str, Any], stale: bool = False) -> Record:
        """Write one entity document (`put_many` of one)."""
        return self.put_many([(kind, key, data)], stale)[0]

    def put_many(self, documents: Sequence[Document], stale: bool = False) -> list[Record]:
        """Write entity documents (kind, key, data) together: one durable commit for all of them
        (`write_atomic_many`), then the index of each kind in one transaction. A page of them is
        written with the cyclic collector paused (`collector_paused`)."""
        if not documents:
            return []
        if len(documents) < OVERLAP_FROM:
            return self._put_many(documents, stale)
        with collector_paused():
            return self._put_many(documents, stale)

    def _put_many(self, documents: Sequence[Document], stale: bool) -> list[Record]:
        records: list[Record] = []
        files: list[tuple[Path, bytes]] = []
        entries: dict[str, dict[Path, IndexEntry]] = {}
        guarded: set[Path] = set()
        now = utcnow()
        cached_at = now.isoformat()
        for kind, key, data in documents:
            path = self.path(kind, key)
            if path.parent not in guarded:
                self.layout.guard(path)
                guarded.add(path.parent)
            body = {"kind": kind, "key": list(key), "cached_at": cached_at, "stale": stale, "data": data}
            encoded = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
            records.append(Record(kind, key, data, now, stale, path))
            files.append((path, encoded))
            entries.setdefault(kind, {})[path] = IndexEntry(key, data, file_digest(encoded), cached_at, stale)
        first = documents[0]
        what = f"cache {first[0]} {list(first[1])}" + (f" and {len(documents) - 1} more" if len(documents) > 1 else "")
        with writing(self.layout.root, what):
            self.layout.ensure()
            if not self.indexed:
                write_atomic_many(files, self.layout.tmp)
            elif len(files) < OVERLAP_FROM:
                write_atomic_many(files, self.layout.tmp)
                self._index(entries)
            else:
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlcache-write") as writer:
                    written = writer.submit(write_atomic_many, files, self.layout.tmp)
                    try:
                        self._index(entries)
                    finally:
                        written.result()
        memo = _read_once.get()
        if memo is not None:
            for path, _ in files:
                memo.pop(path, None)
        return records

    def _index(self, entries: dict[str, dict[Path, IndexEntry]]) -> None:
        for kind, written in entries.items():
            self.index.upsert(kind, [(entry, path) for path, entry in written.items()])

    def mark_stale(self, kind: str, key: tuple[str, ...]) -> None:
        """Flag a cached document as outdated (after a write to the server) without losing it."""
        try:
            record = self.get(kind, key)
        except CorruptMetadata:
            self.delete(kind, key)
            return
        if record is not None and not record.stale:
            self.put(kind, key, record.data, stale=True)

    def delete(self, kind: str, key: tuple[str, ...]) -> None:
        """Remove one cached document, if present."""
        path = self.path(kind, key)
        if path.exists():
            self.layout.guard(path).unlink(missing_ok=True)
            self.index.delete(kind, key)

    def clear(self) -> int:
        """Remove every metadata document (the derived index notices and follows); returns how many."""
        removed = 0
        for kind in KINDS:
            base = self.layout.metadata / kind
            if not base.is_dir() or base.is_symlink():
                continue
            for path in sorted(base.rglob("*"), reverse=True):
                self.layout.guard(path)
                if path.is_dir() and not path.is_symlink():
                    with contextlib.suppress(OSError):
                        path.rmdir()
                else:
                    path.unlink(missing_ok=True)
                    removed += path.suffix == ".json"
        return removed

    def scan(
        self,
        kind: str,
        prefix: tuple[str, ...] = (),
        on_error: Callable[[CorruptMetadata], None] | None = None,
    ) -> Iterator[Record]:
        """Every record of a kind (under a key prefix); bad files go to `on_error` and are skipped."""
        for record, _raw in self._scan_raw(kind, prefix, on_error):
            yield record

    def _scan_raw(
        self, kind: str, prefix: tuple[str, ...], on_error: Callable[[CorruptMetadata], None] | None
    ) -> Iterator[tuple[Record, bytes]]:
        """`scan`, with the bytes each record was parsed from. A file's key is the one it holds,
        accepted only when that key maps back to the file itself."""
        self.layout.check_version()
        base = self.layout.metadata.joinpath(kind, *(file_name(p) for p in prefix))
        if not base.is_dir() or base.is_symlink():
            return
        for path in sorted(base.rglob("*.json")):
            if path.name.startswith("index."):
                continue
            try:
                read = read_regular(path)
                if read is None:
                    continue
                raw, mtime_ns = read
                record = self._parse(path, raw, kind, None, mtime_ns)
            except CorruptMetadata as exc:
                if on_error is None:
                    raise
                on_error(exc)
                continue
            yield record, raw

    def parse_document(self, path: Path, raw: bytes, kind: str) -> Record:
        """The record in the bytes of a `kind` document found at `path` (`CorruptMetadata` unless it
        is a valid document whose key maps to `path`)."""
        return self._parse(path, raw, kind, None, 0)

    def _parse(self, path: Path, raw: bytes, kind: str, key: tuple[str, ...] | None, mtime_ns: int) -> Record:
        """The record in a file's bytes; its key must be `key` (or, when None, any valid key whose
        file is `path`), and the fields that repeat the key must agree with it."""
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise CorruptMetadata(path, f"not valid JSON ({exc})") from exc
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise CorruptMetadata(path, "expected an object with a 'data' object")
        found = body.get("key")
        if body.get("kind") != kind or not isinstance(found, list) or not all(isinstance(p, str) for p in found):
            raise CorruptMetadata(path, f"holds {body.get('kind')} {found}, not a {kind} document")
        held = tuple(found)
        if key is not None and held != key:
            raise CorruptMetadata(path, f"holds {kind} {list(held)}, not {list(key)}")
        try:
            expected = self.path(kind, held)
        except UnsafePath as exc:
            raise CorruptMetadata(path, f"holds an unusable key: {exc}") from exc
        if expected != path:
            raise CorruptMetadata(path, f"holds {kind} {list(held)}, whose file is {expected}")
        data = body["data"]
        for field, part in zip(_IDENTITY.get(kind, ()), held, strict=False):
            if field in data and data[field] != part:
                raise CorruptMetadata(path, f"its {field!r} is {data[field]!r}, but it is stored as {part!r}")
        if kind == "alias" and not isinstance(data.get("version"), str):
            raise CorruptMetadata(path, "an alias document needs a 'version' string")
        return Record(kind, held, data, stored_at(mtime_ns), bool(body.get("stale")), path)
