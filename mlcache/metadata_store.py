"""Metadata store: one JSON file per entity under `metadata/<kind>/`, the cache's source of truth.

Writes go to a unique temp file, are fsynced, then renamed into place under the entry's lock, so
a reader sees the old file or the new one and never a half-written one. Reads take no lock and
write nothing, so read-only caches and bundles work.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import CacheFallbackWarning, CorruptMetadata
from .index import IndexEntry, MetadataIndex, file_digest
from .layout import CacheLayout, decode_part, encode_part, write_atomic
from .locks import entry_lock
from .timeutil import utcnow

KINDS = ("exp", "run", "model", "mv", "alias", "lm")


@dataclass(frozen=True)
class Record:
    """One cached entity document with the time it was cached."""

    kind: str
    key: tuple[str, ...]
    data: dict[str, Any]
    cached_at: datetime
    stale: bool
    path: Path


class MetadataStore:
    """Reads and writes entity documents of one cache dir."""

    def __init__(self, layout: CacheLayout, lock_timeout: float = 60.0) -> None:
        self.layout = layout
        self.lock_timeout = lock_timeout
        self.index = MetadataIndex(layout, self._scan_for_index)

    def _scan_for_index(self, kind: str) -> Iterator[IndexEntry]:
        def report(exc: CorruptMetadata) -> None:
            warnings.warn(f"{exc}; skipped", CacheFallbackWarning, stacklevel=2)

        for record, raw in self._scan_raw(kind, (), report):
            yield IndexEntry(record.key, record.data, file_digest(raw), record.cached_at.isoformat(), record.stale)

    def path(self, kind: str, key: tuple[str, ...]) -> Path:
        """File of one entity: `metadata/<kind>/<part>/.../<last>.json`, parts percent-encoded."""
        if kind not in KINDS:
            raise ValueError(f"unknown metadata kind {kind!r}")
        *dirs, last = (encode_part(p) for p in key)
        return self.layout.metadata.joinpath(kind, *dirs, f"{last}.json")

    def get(self, kind: str, key: tuple[str, ...], indexed: IndexEntry | None = None) -> Record | None:
        """The cached record, None when absent; `CorruptMetadata` naming the file when unreadable.
        The file is always read; when its bytes are those `indexed` was built from, the indexed
        document is returned instead of parsing them again."""
        path = self.path(kind, key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        if indexed is not None and indexed.cached_at is not None and indexed.digest == file_digest(raw):
            return Record(kind, key, indexed.data, datetime.fromisoformat(indexed.cached_at), indexed.stale, path)
        return self._parse(path, raw, kind, key)

    def put(self, kind: str, key: tuple[str, ...], data: dict[str, Any], stale: bool = False) -> Record:
        """Write one entity document atomically, under its lock."""
        self.layout.ensure()
        path = self.path(kind, key)
        record = Record(kind, key, data, utcnow(), stale, path)
        body = {"kind": kind, "key": list(key), "cached_at": record.cached_at.isoformat(), "stale": stale, "data": data}
        encoded = json.dumps(body, ensure_ascii=False, sort_keys=True, indent=1).encode()
        with entry_lock(self.layout, "metadata", kind, *key, timeout=self.lock_timeout):
            write_atomic(path, encoded, self.layout.tmp)
            self.index.upsert(kind, IndexEntry(key, data, file_digest(encoded), body["cached_at"], stale))
        return record

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
            with entry_lock(self.layout, "metadata", kind, *key, timeout=self.lock_timeout):
                path.unlink(missing_ok=True)
                self.index.delete(kind, key)

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
        """`scan`, with the bytes each record was parsed from."""
        base = self.layout.metadata.joinpath(kind, *(encode_part(p) for p in prefix))
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*.json")):
            if path.name.startswith("index."):
                continue
            rel = path.relative_to(self.layout.metadata / kind)
            key = tuple(decode_part(p) for p in (*rel.parts[:-1], rel.name[: -len(".json")]))
            try:
                raw = path.read_bytes()
                record = self._parse(path, raw, kind, key)
            except FileNotFoundError:
                continue
            except CorruptMetadata as exc:
                if on_error is None:
                    raise
                on_error(exc)
                continue
            yield record, raw

    @staticmethod
    def _parse(path: Path, raw: bytes, kind: str, key: tuple[str, ...]) -> Record:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise CorruptMetadata(path, f"not valid JSON ({exc})") from exc
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise CorruptMetadata(path, "expected an object with a 'data' object")
        if body.get("kind") != kind or tuple(body.get("key") or ()) != key:
            raise CorruptMetadata(path, f"holds {body.get('kind')} {body.get('key')}, not {kind} {list(key)}")
        try:
            cached_at = datetime.fromisoformat(body["cached_at"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptMetadata(path, f"bad or missing 'cached_at' ({exc})") from exc
        return Record(kind, key, body["data"], cached_at, bool(body.get("stale")), path)
