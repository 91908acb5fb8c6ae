"""Keeping a cache healthy: usage report, prune to a size budget (least recently used first),
clean and verify. Entries are removed one by one under their exclusive lock, so what another
process reads or writes is left alone, and reported."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .disk_usage import Survey, inodes_of, loose_blob_bytes
from .entry_io import verify_entry
from .errors import CorruptMetadata, LockTimeout, MlcacheError
from .layout import writing
from .manifest import EntryKey, Manifest
from .orphans import ORPHAN_MIN_AGE, remove_orphans
from .staging import clean_tmp

if TYPE_CHECKING:
    from .artifact_store import ArtifactStore
    from .layout import CacheLayout
    from .metadata_store import MetadataStore

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str | int) -> int:
    """`10G`, `500MiB`, `1.5gb`, `1024` -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 500M, 10G, 1.5GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class EntryUsage:
    """One artifact entry of the cache, as the usage report shows it. `size` and `files` are
    measured on disk (a manifest's own numbers are claims); `damaged` says why an entry whose
    manifest cannot be read is listed anyway (its space is reclaimable by `prune`)."""

    label: str
    key: EntryKey | None
    size: int
    files: int
    last_used: datetime
    pulled_at: datetime | None
    source: str
    damaged: str | None = None
    manifest_path: Path | None = None
    versions: tuple[str, ...] = ()
    """The cached model versions whose files this entry holds: `fraud/3@champion`."""
    unique: int = 0
    """Bytes of this entry's files that no other entry holds (what removing it frees)."""
    pinned: bool = False


@dataclass(frozen=True)
class AliasStatus:
    """A cached alias next to the server's: `state` is `current`, `moved` or `removed`."""

    model: str
    alias: str
    cached: str
    server: str | None

    @property
    def state(self) -> str:
        return "current" if self.server == self.cached else "removed" if self.server is None else "moved"


@dataclass(frozen=True)
class CacheUsage:
    """The whole cache on disk: its entries, the bytes they take with each shared blob counted
    once, blobs no entry holds any more (`gc` removes them), and whether entries share blobs here."""

    entries: list[EntryUsage]
    on_disk: int
    loose_blobs: int
    dedup: bool


@dataclass
class PruneReport:
    """What `prune` removed (and freed, each shared blob once), and what it left because other
    processes were reading it."""

    removed: list[EntryUsage] = field(default_factory=list)
    busy: list[EntryUsage] = field(default_factory=list)
    freed: int = 0


@dataclass
class GcReport:
    """What `gc` removed: blobs no entry holds, and staging that killed processes left."""

    blobs_removed: int = 0
    freed: int = 0
    blobs_kept: int = 0
    temp_removed: int = 0
    temp_busy: int = 0
    orphans_removed: int = 0
    """Trees without manifest and manifests without files that killed pulls or removals left."""


@dataclass
class RepairReport:
    """What `repair_cache` did with each damaged entry: pulled or imported again, or not."""

    repaired: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass
class CleanReport:
    """What `clean_all_cache` removed, and what it left because other processes were using it."""

    entries_removed: int = 0
    entries_busy: list[str] = field(default_factory=list)
    metadata_removed: int = 0
    temp_removed: int = 0
    temp_busy: int = 0


Versions = Mapping[EntryKey, tuple[str, ...]]
"""For each entry, the cached model versions it holds (`fraud/3@champion`)."""


class CacheAdmin:
    """Usage, prune, clean and verify of one cache dir."""

    def __init__(self, layout: CacheLayout, meta: MetadataStore, artifacts: ArtifactStore) -> None:
        self._layout = layout
        self._meta = meta
        self._artifacts = artifacts

    def usage(self, versions: Versions | None = None) -> list[EntryUsage]:
        """Every artifact entry with its size on disk, unique bytes, last use and source (and the
        cached model versions `versions` says it holds), largest first; entries whose manifest is
        damaged are listed with the reason."""
        return self.survey(versions)[0]

    def survey(self, versions: Versions | None = None) -> tuple[list[EntryUsage], Survey]:
        """The usage rows, and the inodes behind them (for totals that count a shared blob once)."""
        survey = Survey()
        rows = []
        for key, manifest in self._artifacts.entries():
            if isinstance(manifest, CorruptMetadata):
                rows.append(self._damaged_row(key, manifest, survey))
            elif self._artifacts.lookup_quiet(key) is not None:  # type: ignore[arg-type]
                rows.append(self._usage_row(key, manifest, survey))  # type: ignore[arg-type]
        held = versions or {}
        rows = [
            dataclasses.replace(
                row, unique=survey.unique(row.label), versions=held.get(row.key, ()) if row.key is not None else ()
            )
            for row in rows
        ]
        return sorted(rows, key=lambda row: (-row.size, row.label)), survey

    def cache_usage(self, versions: Versions | None = None) -> CacheUsage:
        """The entries (with the versions `versions` says each holds) and the totals of the cache."""
        rows, survey = self.survey(versions)
        blobs = [((info.st_dev, info.st_ino), info.st_size) for _d, _p, info in self._artifacts.blobs.all()]
        loose = loose_blob_bytes(blobs, survey)
        dedup = self._artifacts.blobs.can_link() if self._writable() else bool(blobs)
        return CacheUsage(rows, survey.total() + loose, loose, dedup)

    def _writable(self) -> bool:
        return os.access(self._layout.root, os.W_OK) if self._layout.root.exists() else False

    def _usage_row(self, key: EntryKey, manifest: Manifest, survey: Survey) -> EntryUsage:
        inodes, files = inodes_of(self._artifacts.entry_path(key))
        survey.add(key.label, inodes)
        last = self._artifacts.last_used(key)
        pinned = self._artifacts.pinned(key)
        size = sum(inodes.values())
        return EntryUsage(key.label, key, size, files, last, manifest.pulled_at, manifest.source, pinned=pinned)

    def _damaged_row(self, key: EntryKey | None, error: CorruptMetadata, survey: Survey) -> EntryUsage:
        inodes, files = inodes_of(self._artifacts.entry_path(key)) if key is not None else ({}, 0)
        label = key.label if key is not None else str(error.path.relative_to(self._layout.root))
        survey.add(label, inodes)
        size = sum(inodes.values())
        with contextlib.suppress(OSError):
            size += error.path.lstat().st_size
        epoch = datetime.fromtimestamp(0, tz=timezone.utc)
        return EntryUsage(label, key, size, files, epoch, None, "", str(error), error.path)

    def prune(
        self,
        max_size: int | str,
        dry_run: bool = False,
        keep_aliases: bool = False,
        versions: Versions | None = None,
    ) -> PruneReport:
        """Remove least recently used entries (damaged ones first) until the cache fits in
        `max_size` bytes on disk, a blob shared by entries counted once; pinned entries stay, and
        with `keep_aliases` those holding a version an alias points to (as `versions` says). Each
        entry is removed under its exclusive lock; one that another process holds is left alone
        and reported as busy. `dry_run` only says what would go."""
        budget = parse_size(max_size)
        if not dry_run and self._layout.root.exists():
            with writing(self._layout.root, "prune the cache"):
                self._artifacts.blobs.collect()
        rows, survey = self.survey(versions)
        total = survey.total()
        order = sorted(rows, key=lambda row: (row.damaged is None, row.last_used))
        report = PruneReport()
        with writing(self._layout.root, "prune the cache"):
            for row in order:
                if total <= budget:
                    break
                if row.pinned or (keep_aliases and any("@" in held for held in row.versions)):
                    continue
                if dry_run or self._remove_row(row):
                    freed = survey.drop(row.label)
                    report.removed.append(row)
                    report.freed += freed
                    total -= freed
                else:
                    report.busy.append(row)
        return report

    def gc(self, orphan_age: float = ORPHAN_MIN_AGE) -> GcReport:
        """Remove staging that killed processes left, trees without manifest (older than
        `orphan_age` seconds) and manifests without files, then every blob no entry holds (by the
        blob store's rename-then-recheck protocol, so a blob a running pull links stays)."""
        report = GcReport()
        if not self._layout.root.exists():
            return report
        self._layout.check_version()
        with writing(self._layout.root, "collect the cache's garbage"):
            orphans = remove_orphans(self._artifacts, orphan_age)
            report.orphans_removed = orphans.trees + orphans.manifests
            report.temp_removed, report.temp_busy = clean_tmp(self._layout)
            collected = self._artifacts.blobs.collect()
        report.blobs_removed, report.freed, report.blobs_kept = collected.removed, collected.freed, collected.kept
        return report

    def _remove_row(self, row: EntryUsage) -> bool:
        """Remove one entry under its exclusive lock; False when another process holds it."""
        if row.key is None:
            if row.manifest_path is not None:
                self._layout.guard(row.manifest_path).unlink(missing_ok=True)
            return True
        try:
            with self._artifacts.lock(row.key, timeout=0):
                self._artifacts.remove(row.key)
                if row.manifest_path is not None:
                    self._layout.guard(row.manifest_path).unlink(missing_ok=True)
        except LockTimeout:
            return False
        return True

    def clean_temp_artifacts(self, older_than: float = 0.0) -> int:
        """Remove staging leftovers in `tmp/` whose owner process is gone (temp files without an
        owner once older than `older_than` seconds, and never younger than ten minutes); returns how
        many were removed."""
        with writing(self._layout.root, "clean the cache's temporary files"):
            return clean_tmp(self._layout, older_than)[0]

    def clean_all_cache(self) -> CleanReport:
        """Empty the cache: every artifact entry (each under its exclusive lock: entries other
        processes are reading stay, and are reported), every metadata document, and the temporary
        files no live process owns."""
        root = self._layout.root
        report = CleanReport()
        if not root.exists():
            return report
        if not (root / "layout.json").exists() and any(root.iterdir()):
            raise MlcacheError(f"{root} does not look like an mlcache cache dir (no layout.json); not cleaning it")
        self._layout.check_version()
        with writing(root, "clean the cache"):
            for row in self.usage():
                if self._remove_row(row):
                    report.entries_removed += 1
                else:
                    report.entries_busy.append(row.label)
            report.metadata_removed = self._meta.clear()
            report.temp_removed, report.temp_busy = clean_tmp(self._layout)
        return report

    def damaged(self, usage: list[EntryUsage] | None = None) -> list[EntryUsage]:
        """The entries (of `usage`, the report already made, else a new one) that fail
        verification: a file missing, resized, changed or unlisted, or a manifest that cannot be read."""
        rows = []
        for row in self.usage() if usage is None else usage:
            if row.damaged is not None or row.key is None:
                rows.append(row)
                continue
            manifest = self._artifacts.read_manifest(row.key)
            if manifest is None or verify_entry(self._artifacts, row.key, manifest):
                rows.append(row)
        return rows

    def remove(self, row: EntryUsage) -> bool:
        """Remove one entry (a damaged one too) under its exclusive lock; False when it is busy."""
        with writing(self._layout.root, f"remove {row.label}"):
            return self._remove_row(row)

    def verify_cache(self) -> list[str]:
        """Re-hash every entry and re-read every metadata file; each problem as one line."""
        from .bundle import verify

        return verify(self._layout.root) if self._layout.root.exists() else []
